"""Long jobs never loop: escalation to the large queue, and a bound on every kind of interruption.

- A routed job stopped by the regular queue's time limit continues on the large queue, under the
  large limit, from its checkpoint, spending no attempt (counted, logged, shown in its status).
- A job interrupted ``MAX_HAND_BACKS_WITHOUT_PROGRESS`` times in a row without saving a checkpoint
  is dead-lettered: kind ``time_limit`` when its (longest) time limit stopped it, ``no_progress``
  otherwise. Each save starts the count again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Shutdown
from prometheus_client import REGISTRY
from sqlalchemy import insert

from middleware.checkpoints import current_checkpoint
from middleware.job_logs import EVENTS_LOGGER
from middleware.job_status import COMPLETED, FAILED, get_job
from middleware.operations.dead_letter_store import list_dead_letters
from middleware.retries import MAX_HAND_BACKS_WITHOUT_PROGRESS, Retries
from middleware.routing import DurationRouting, RoutedActor, large_queue_name
from middleware.storage.database import Database
from tests.unit.conftest import outputs
from tests.unit.test_checkpoints import stored_items

#: The regular and large queues' time limits, shortened for the tests (the interval of the fast
#: TimeLimit is 100 ms).
REGULAR_LIMIT_MS, LARGE_LIMIT_MS = 300, 1_200


@pytest.fixture
def broker(stub_broker: StubBroker) -> StubBroker:
    [routing] = [middleware for middleware in stub_broker.middleware if isinstance(middleware, DurationRouting)]
    routing.regular_time_limit_ms, routing.large_time_limit_ms = REGULAR_LIMIT_MS, LARGE_LIMIT_MS
    [retries] = [middleware for middleware in stub_broker.middleware if isinstance(middleware, Retries)]
    assert retries.max_hand_backs_without_progress == MAX_HAND_BACKS_WITHOUT_PROGRESS == 3
    return stub_broker


@pytest.fixture
def worker(broker: StubBroker) -> Iterator[Worker]:
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    yield worker
    worker.stop()


def job_events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict]:
    return [record.job_event for record in caplog.records if getattr(record, "job_event", {}).get("event") == name]


def busy(seconds: float) -> None:
    """CPU work in short steps, so that a time limit's asynchronous exception can land."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        sum(range(1_000))


def drain(broker: StubBroker, worker: Worker, actor: dramatiq.Actor) -> None:
    for queue_name in getattr(actor, "queue_names", (actor.queue_name,)):
        broker.join(queue_name, fail_fast=False)
    worker.join()
    for queue_name in getattr(actor, "queue_names", (actor.queue_name,)):
        broker.join(queue_name, fail_fast=False)


def test_a_routed_job_stopped_by_the_regular_limit_continues_on_the_large_queue_from_its_checkpoint(
    broker: StubBroker, worker: Worker, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=EVENTS_LOGGER)
    runs: list[tuple[str, int | None]] = []

    # max_retries=0: had the move spent an attempt, the job would be dead-lettered.
    @dramatiq.actor(
        broker=broker, actor_class=RoutedActor, queue_name="meetings", checkpointed=True, notify_shutdown=True,
        max_retries=0, actor_name="escalated_meeting",
    )  # fmt: skip
    def meeting(name: str) -> None:
        checkpoint = current_checkpoint()
        runs.append((dramatiq.middleware.CurrentMessage.get_current_message().queue_name, checkpoint.position))
        start = 0 if checkpoint.position is None else checkpoint.position + 1
        for item in range(start, 4):
            busy(0.2)  # two items fit the regular 0.3 s limit at most; all four fit the large 1.2 s one
            with checkpoint.saving(item) as connection:
                connection.execute(insert(outputs).values(job=name, item=item))

    message = meeting.send("weekly")
    drain(broker, worker, meeting)

    assert stored_items(database, "weekly") == [0, 1, 2, 3]
    assert [queue for queue, _ in runs] == ["meetings", "meetings-large"], "moved once, never back"
    assert runs[1][1] is not None and runs[1][1] >= 0, "the large queue's run resumed from the checkpoint"
    job = get_job(database, message.message_id)
    assert job is not None and job["status"] == COMPLETED and job["queue_name"] == "meetings-large"
    [escalation] = job_events(caplog, "job.escalated")
    assert escalation["queue"] == "meetings" and escalation["to_queue"] == "meetings-large"
    assert escalation["time_limit_ms"] == LARGE_LIMIT_MS and escalation["position"] == runs[1][1]
    labels = {"queue_name": "meetings", "actor_name": "escalated_meeting"}
    assert REGISTRY.get_sample_value("jobs_escalations_total", labels) == 1
    assert list_dead_letters(database) == []


def test_a_job_whose_step_does_not_fit_even_the_large_limit_is_dead_lettered_as_time_limit(
    broker: StubBroker, worker: Worker, database: Database
) -> None:
    runs: list[str] = []

    @dramatiq.actor(
        broker=broker, actor_class=RoutedActor, queue_name="huge", checkpointed=True, notify_shutdown=True,
        actor_name="huge_step",
    )  # fmt: skip
    def huge_step() -> None:
        checkpoint = current_checkpoint()
        runs.append(dramatiq.middleware.CurrentMessage.get_current_message().queue_name)
        with checkpoint.saving(0):
            pass
        busy(5.0)  # the step after position 0 never fits 1.2 s, nor 0.3 s

    message = huge_step.send()
    drain(broker, worker, huge_step)

    # One run on the regular queue (it saves position 0, then is escalated), then three on the large
    # queue that only save position 0 again: saving the same position is no progress.
    assert runs == ["huge", *["huge-large"] * MAX_HAND_BACKS_WITHOUT_PROGRESS]
    [dead] = list_dead_letters(database)
    assert dead["kind"] == "time_limit" and dead["queue_name"] == large_queue_name("huge")
    assert dead["error_type"] == "TimeLimitExceeded"
    assert "time limit of 1.2 s 3 times in a row" in dead["error_message"]
    assert "after position 0" in dead["error_message"]
    job = get_job(database, message.message_id)
    assert job is not None and job["status"] == FAILED and "time limit of 1.2 s" in job["error"]


def test_a_job_interrupted_again_and_again_before_any_checkpoint_is_dead_lettered_as_no_progress(
    broker: StubBroker, worker: Worker, database: Database
) -> None:
    runs: list[int] = []

    @dramatiq.actor(broker=broker, actor_name="never_saves", max_retries=0)
    def never_saves() -> None:
        runs.append(len(runs))
        raise Shutdown("the worker is being deployed")  # as ShutdownNotifications raises it

    never_saves.send()
    drain(broker, worker, never_saves)

    assert len(runs) == MAX_HAND_BACKS_WITHOUT_PROGRESS
    [dead] = list_dead_letters(database)
    assert (dead["kind"], dead["error_type"]) == ("no_progress", "NoProgress")
    assert dead["error_message"] == (
        "interrupted 3 times in a row (Shutdown last) without saving a checkpoint, before its first checkpoint"
    )


def test_every_save_starts_the_count_again_so_a_job_that_progresses_is_never_dead_lettered(
    broker: StubBroker, worker: Worker, database: Database
) -> None:
    @dramatiq.actor(broker=broker, checkpointed=True, notify_shutdown=True, actor_name="saves_then_stops")
    def saves_then_stops() -> None:
        # One item per delivery, then interrupted: 2 x MAX_HAND_BACKS_WITHOUT_PROGRESS interruptions in all.
        checkpoint = current_checkpoint()
        item = 0 if checkpoint.position is None else checkpoint.position + 1
        with checkpoint.saving(item) as connection:
            connection.execute(insert(outputs).values(job="progressing", item=item))
        if item < 2 * MAX_HAND_BACKS_WITHOUT_PROGRESS:
            raise Shutdown("the worker is being deployed")

    message = saves_then_stops.send()
    drain(broker, worker, saves_then_stops)

    assert stored_items(database, "progressing") == list(range(2 * MAX_HAND_BACKS_WITHOUT_PROGRESS + 1))
    assert list_dead_letters(database) == []
    job = get_job(database, message.message_id)
    assert job is not None and job["status"] == COMPLETED


def test_an_unrouted_checkpointed_job_that_cannot_save_within_its_limit_is_dead_lettered(
    broker: StubBroker, worker: Worker, database: Database
) -> None:
    runs: list[int] = []

    @dramatiq.actor(broker=broker, checkpointed=True, notify_shutdown=True, time_limit=200, actor_name="too_slow")
    def too_slow() -> None:
        runs.append(len(runs))
        current_checkpoint().position  # noqa: B018  # loads it: the job starts, saves nothing
        busy(5.0)

    too_slow.send()
    drain(broker, worker, too_slow)

    assert len(runs) == MAX_HAND_BACKS_WITHOUT_PROGRESS
    [dead] = list_dead_letters(database)
    assert dead["kind"] == "time_limit"
    assert "time limit of 0.2 s 3 times in a row without saving a checkpoint, before its first" in dead["error_message"]
