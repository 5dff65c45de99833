from __future__ import annotations

import logging
import time
from functools import partial

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Shutdown, TimeLimit
from sqlalchemy import insert, select

from middleware.checkpoints import Checkpoints, current_checkpoint, job_checkpoints
from middleware.database import Database
from middleware.routing import DurationRouting, RoutedActor
from tests.unit.conftest import outputs


def stored_items(database: Database, job: str) -> list[int]:
    with database.engine.connect() as connection:
        return list(connection.scalars(select(outputs.c.item).where(outputs.c.job == job).order_by(outputs.c.item)))


def checkpoint_row(database: Database, key: str):
    with database.engine.connect() as connection:
        return connection.execute(select(job_checkpoints).where(job_checkpoints.c.key == key)).one()


def process_items(job: str, items: int, *, fail_at: int | None = None, attempts: list[int] | None = None) -> None:
    """The shape of every checkpointed actor: start after the saved position, save each item."""
    checkpoint = current_checkpoint()
    start = 0 if checkpoint.position is None else checkpoint.position + 1
    for item in range(start, items):
        if attempts is not None:
            attempts.append(item)
        if item == fail_at:
            raise RuntimeError(f"item {item} failed")
        with checkpoint.saving(item, progress=(item + 1) / items) as connection:
            connection.execute(insert(outputs).values(job=job, item=item))


def test_a_failed_job_resumes_after_its_last_saved_item(
    stub_broker: StubBroker, stub_worker: Worker, database: Database
) -> None:
    attempts: list[int] = []

    @dramatiq.actor(broker=stub_broker, checkpointed=True, max_retries=3)
    def job(name: str) -> None:
        # Fails at item 4 on the first run only.
        process_items(name, 8, fail_at=4 if 4 not in attempts else None, attempts=attempts)

    message = job.send("a")
    stub_broker.join(job.queue_name, fail_fast=True)
    stub_worker.join()

    assert stored_items(database, "a") == list(range(8))
    assert attempts == [0, 1, 2, 3, 4, 4, 5, 6, 7], "items 0-3 were saved, so the retry starts at 4"
    row = checkpoint_row(database, message.message_id)
    assert (row.position, row.resumes, row.resumed_from, row.saves) == (7, 1, 3, 8)
    assert row.completed_at is not None and row.progress == 1.0


def test_output_and_checkpoint_commit_together_or_not_at_all(
    stub_broker: StubBroker, stub_worker: Worker, database: Database
) -> None:
    @dramatiq.actor(broker=stub_broker, checkpointed=True, max_retries=0)
    def job() -> None:
        checkpoint = current_checkpoint()
        with checkpoint.saving(0) as connection:
            connection.execute(insert(outputs).values(job="atomic", item=0))
        with checkpoint.saving(1) as connection:
            connection.execute(insert(outputs).values(job="atomic", item=1))
            raise RuntimeError("crash after writing output, before the checkpoint")

    message = job.send()
    stub_broker.join(job.queue_name, fail_fast=False)
    stub_worker.join()

    assert stored_items(database, "atomic") == [0]
    row = checkpoint_row(database, message.message_id)
    assert row.position == 0 and row.completed_at is None


def test_completed_work_sent_again_is_skipped(stub_broker: StubBroker, stub_worker: Worker, database: Database) -> None:
    runs: list[str] = []

    @dramatiq.actor(broker=stub_broker, checkpointed=True, checkpoint_key=lambda name: f"job:{name}")
    def job(name: str) -> None:
        runs.append(name)
        process_items(name, 3)

    job.send("meeting-1")
    stub_broker.join(job.queue_name, fail_fast=True)
    stub_worker.join()
    job.send("meeting-1")
    stub_broker.join(job.queue_name, fail_fast=True)
    stub_worker.join()

    assert runs == ["meeting-1"]
    assert stored_items(database, "meeting-1") == [0, 1, 2]
    assert checkpoint_row(database, "job:meeting-1").completed_at is not None


def test_a_time_limit_hands_the_job_back_to_continue_without_spending_a_retry(
    stub_broker: StubBroker, stub_worker: Worker, database: Database
) -> None:
    attempts: list[int] = []

    # max_retries=0: were an interruption counted as a failure, the job would be dead-lettered.
    @dramatiq.actor(broker=stub_broker, checkpointed=True, max_retries=0, time_limit=1_000)
    def job() -> None:
        checkpoint = current_checkpoint()
        start = 0 if checkpoint.position is None else checkpoint.position + 1
        for item in range(start, 6):
            attempts.append(item)
            # 0.4 s of work per item, in short steps so the time limit's interrupt can land.
            busy_until = time.monotonic() + 0.4
            while time.monotonic() < busy_until:
                sum(range(1000))
            with checkpoint.saving(item) as connection:
                connection.execute(insert(outputs).values(job="limited", item=item))

    message = job.send()
    stub_broker.join(job.queue_name, fail_fast=True)
    stub_worker.join()

    assert stored_items(database, "limited") == list(range(6))
    row = checkpoint_row(database, message.message_id)
    assert row.resumes >= 2, "six items of 0.4 s cannot fit in one 1 s run"
    assert row.completed_at is not None
    assert len(attempts) - 6 <= row.resumes, "at most the interrupted item is redone per resume"


def test_a_shutdown_hands_any_job_back_without_spending_a_retry(
    stub_broker: StubBroker, stub_worker: Worker, database: Database
) -> None:
    runs: list[int] = []

    @dramatiq.actor(broker=stub_broker, max_retries=0)
    def job() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise Shutdown("the worker is being deployed")

    job.send()
    stub_broker.join(job.queue_name, fail_fast=True)
    stub_worker.join()

    assert runs == [0, 1]
    assert stub_broker.dead_letters == []


def test_current_checkpoint_outside_a_checkpointed_actor_says_how_to_fix_it() -> None:
    with pytest.raises(RuntimeError, match="checkpointed=True"):
        current_checkpoint()


def test_on_rabbitmq_boot_names_each_actor_that_may_outlive_the_consumer_timeout(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    broker = StubBroker(middleware=[
        TimeLimit(time_limit=600_000),
        Checkpoints(database=database, hand_back_after_ms=1_440_000, consumer_timeout_ms=1_800_000),
        DurationRouting(large_threshold_ms=60_000, regular_time_limit_ms=5_000, large_time_limit_ms=7_200_000),
    ])  # fmt: skip
    declare = partial(dramatiq.actor, lambda: None, broker=broker)
    declare(actor_name="short_by_default")  # TimeLimit's 10 min
    declare(actor_name="hours_long", time_limit=3 * 3_600_000)
    declare(actor_name="hours_long_checkpointed", time_limit=3 * 3_600_000, checkpointed=True)
    declare(actor_name="routed", actor_class=RoutedActor)  # the large queue's 2 h
    declare(actor_name="routed_checkpointed", actor_class=RoutedActor, checkpointed=True)
    with caplog.at_level(logging.WARNING, logger="middleware.checkpoints.Checkpoints"):
        broker.emit_after("worker_boot", None)
    broker.close()

    warned = {record.args[0]: record.getMessage() for record in caplog.records}
    assert set(warned) == {"hours_long", "routed"}
    assert "may run for up to 180 min, longer than the broker's consumer timeout (30 min)" in warned["hours_long"]
    assert "checkpointed=True" in warned["routed"] and "for up to 120 min" in warned["routed"]


def test_on_redis_boot_warns_of_no_consumer_timeout(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    broker = StubBroker(middleware=[TimeLimit(), Checkpoints(database=database)])
    dramatiq.actor(lambda: None, broker=broker, actor_name="hours_long", time_limit=3 * 3_600_000)
    with caplog.at_level(logging.WARNING, logger="middleware.checkpoints.Checkpoints"):
        broker.emit_after("worker_boot", None)
    broker.close()
    assert caplog.records == []
