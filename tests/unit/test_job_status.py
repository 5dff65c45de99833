"""Job status rows, progress, and the poison-message cap, on the StubBroker."""

from __future__ import annotations

import dramatiq
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import insert, update

from middleware.checkpoints import current_checkpoint
from middleware.job_status import get_job, job_status, list_jobs
from middleware.storage.database import Database
from tests.unit.conftest import outputs


def drain(broker: StubBroker, worker: Worker, queue_name: str = "default") -> None:
    broker.join(queue_name, fail_fast=False)
    worker.join()


def test_a_sent_job_is_queued_then_completed(stub_broker: StubBroker, stub_worker: Worker, database: Database) -> None:
    @dramatiq.actor(broker=stub_broker)
    def job() -> None:
        pass

    stub_worker.pause()
    message = job.send()
    queued = get_job(database, message.message_id)
    assert (queued["status"], queued["attempts"], queued["actor_name"], queued["queue_name"]) == (
        "queued",
        0,
        "job",
        "default",
    )
    stub_worker.resume()
    drain(stub_broker, stub_worker)
    done = get_job(database, message.message_id)
    assert (done["status"], done["attempts"], done["progress"], done["error"]) == ("completed", 1, 1.0, None)
    assert done["started_at"] is not None and done["finished_at"] is not None


def test_status_stays_processing_between_retries_and_the_error_is_kept_only_when_final(
    stub_broker: StubBroker, stub_worker: Worker, database: Database
) -> None:
    seen: list[str] = []

    @dramatiq.actor(broker=stub_broker, max_retries=2, min_backoff=10, max_backoff=20)
    def job() -> None:
        current = dramatiq.middleware.CurrentMessage.get_current_message()
        seen.append(get_job(database, current.message_id)["status"])
        raise ConnectionResetError("the API hung up")

    message = job.send()
    drain(stub_broker, stub_worker)
    assert seen == ["processing", "processing", "processing"], "no flicker back to queued between retries"
    failed = get_job(database, message.message_id)
    assert failed["status"] == "failed" and failed["attempts"] == 3
    assert failed["error"].startswith("ConnectionResetError: the API hung up (network error")
    assert [row["message_id"] for row in list_jobs(database, status="failed")] == [message.message_id]


def test_checkpointed_actors_report_progress_with_each_checkpoint(
    stub_broker: StubBroker, stub_worker: Worker, database: Database
) -> None:
    progress: list[float] = []

    @dramatiq.actor(broker=stub_broker, checkpointed=True, notify_shutdown=True)
    def job() -> None:
        current = dramatiq.middleware.CurrentMessage.get_current_message()
        for item in range(4):
            with current_checkpoint().saving(item, progress=(item + 1) / 4) as connection:
                connection.execute(insert(outputs).values(job="progress", item=item))
            progress.append(get_job(database, current.message_id)["progress"])

    job.send()
    drain(stub_broker, stub_worker)
    assert progress == [0.25, 0.5, 0.75, 1.0]


def test_a_message_whose_worker_kept_dying_is_dead_lettered_as_poison(
    stub_broker: StubBroker, stub_worker: Worker, database: Database
) -> None:
    runs: list[int] = []

    @dramatiq.actor(broker=stub_broker)
    def job() -> None:
        runs.append(1)

    stub_worker.pause()
    message = job.send()
    # Three deliveries that started and never finished: what SIGKILLed workers leave behind.
    with database.transaction() as connection:
        connection.execute(
            update(job_status).where(job_status.c.message_id == message.message_id).values(unfinished_deliveries=3)
        )
    stub_worker.resume()
    drain(stub_broker, stub_worker)

    assert runs == []
    assert len(stub_broker.dead_letters) == 1
    row = get_job(database, message.message_id)
    assert row["status"] == "failed" and row["error"] == "poison: its worker died 3 times in a row"
