from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from functools import partial

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Shutdown, ShutdownNotifications, TimeLimit
from sqlalchemy import insert, select, update
from sqlalchemy.exc import OperationalError

import middleware.checkpoints as checkpoints_module
from middleware.checkpoints import (
    Checkpoint,
    CheckpointAlreadyCompleted,
    Checkpoints,
    current_checkpoint,
    job_checkpoints,
)
from middleware.errors import CheckpointBusy, CheckpointSuperseded
from middleware.job_logs import EVENTS_LOGGER
from middleware.job_status import COMPLETED, get_job
from middleware.operations.dead_letter_store import list_dead_letters
from middleware.routing import DurationRouting, RoutedActor
from middleware.storage.database import Database
from tests.harness import wait_until
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

    @dramatiq.actor(broker=stub_broker, checkpointed=True, notify_shutdown=True, max_retries=3)
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
    assert row.message is None, "a completed job keeps no copy of its message"


def test_output_and_checkpoint_commit_together_or_not_at_all(
    stub_broker: StubBroker, stub_worker: Worker, database: Database
) -> None:
    @dramatiq.actor(broker=stub_broker, checkpointed=True, notify_shutdown=True, max_retries=0)
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

    @dramatiq.actor(
        broker=stub_broker, checkpointed=True, notify_shutdown=True, checkpoint_key=lambda name: f"job:{name}"
    )
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


def a_message(name: str = "job") -> dramatiq.Message:
    return dramatiq.Message(queue_name="default", actor_name=name, args=(), kwargs={}, options={})


def save_item(checkpoint: Checkpoint, job: str, item: int) -> None:
    with checkpoint.saving(item) as connection:
        connection.execute(insert(outputs).values(job=job, item=item))


def test_a_redelivery_takes_the_lease_over_and_the_delivery_it_replaced_can_save_nothing(database: Database) -> None:
    message = a_message()
    first = Checkpoint(database=database, key="lease", message=message)
    first.load()
    save_item(first, "lease", 0)

    # The broker delivers the same message again (its worker was taken for dead), while the first
    # delivery still runs.
    again = Checkpoint(database=database, key="lease", message=message)
    again.load()
    assert (again.position, again.resumed) == (0, True)

    with pytest.raises(CheckpointSuperseded) as superseded:
        save_item(first, "lease", 1)
    assert superseded.value.by_message_id == message.message_id
    save_item(again, "lease", 1)
    save_item(again, "lease", 2)

    assert stored_items(database, "lease") == [0, 1, 2]
    assert checkpoint_row(database, "lease").position == 2


def test_another_message_for_the_same_work_waits_for_a_fresh_lease_and_takes_over_a_stale_one(
    database: Database,
) -> None:
    holder = Checkpoint(database=database, key="shared", message=a_message(), lease_ms=60_000)
    holder.load()
    save_item(holder, "shared", 0)
    other_message = a_message()

    delays = []
    for _ in range(3):
        with pytest.raises(CheckpointBusy) as busy:
            Checkpoint(database=database, key="shared", message=other_message, lease_ms=60_000).load()
        assert busy.value.held_by == holder.message_id
        delays.append(busy.value.delay)
    assert delays == [1_000, 2_000, 4_000], "each look waits twice as long"

    # The holder saved nothing for longer than the lease: it is taken for stuck, and taken over.
    with database.transaction() as connection:
        connection.execute(update(job_checkpoints).values(updated_at=datetime.now(UTC) - timedelta(minutes=2)))
    taker = Checkpoint(database=database, key="shared", message=other_message, lease_ms=60_000)
    assert taker.position == 0
    with pytest.raises(CheckpointSuperseded) as superseded:
        save_item(holder, "shared", 1)
    assert superseded.value.by_message_id == other_message.message_id
    save_item(taker, "shared", 1)
    taker.finish(completed=True)

    row = checkpoint_row(database, "shared")
    assert (row.position, row.lease_token, row.completed_at is not None) == (1, None, True)
    with pytest.raises(CheckpointAlreadyCompleted):
        Checkpoint(database=database, key="shared", message=a_message()).load()
    assert stored_items(database, "shared") == [0, 1]


def test_a_released_lease_is_taken_at_once_by_another_message(database: Database) -> None:
    failed = Checkpoint(database=database, key="released", message=a_message())
    failed.load()
    save_item(failed, "released", 0)
    failed.finish(completed=False)  # its delivery failed, and it will be retried later

    taker = Checkpoint(database=database, key="released", message=a_message())
    assert taker.position == 0
    with pytest.raises(CheckpointSuperseded):
        save_item(failed, "released", 1)


def test_a_database_down_at_the_end_of_a_delivery_is_one_warning_not_a_traceback(
    database: Database, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = a_message()
    middleware = Checkpoints(database=database)
    checkpoint = Checkpoint(database=database, key="down", message=message)
    checkpoint.load()
    middleware_current = checkpoints_module._current
    unreachable = OperationalError("UPDATE job_checkpoints", {}, Exception("connection refused"))

    def transaction() -> None:
        raise unreachable

    monkeypatch.setattr(database, "transaction", transaction)
    broker = StubBroker()
    for exception, says in (
        (RuntimeError("failed"), "Could not release checkpoint 'down'"),
        (None, "Could not mark checkpoint 'down' completed"),
    ):
        middleware_current.set(checkpoint)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="middleware.checkpoints.Checkpoints"):
            middleware.after_process_message(broker, message, exception=exception)
        assert [record.getMessage().split(" after")[0] for record in caplog.records] == [says]
        assert all(record.exc_info is None for record in caplog.records)


def test_a_second_message_for_running_work_waits_then_is_skipped_when_the_first_completes(
    stub_broker: StubBroker, stub_worker: Worker, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[str] = []
    may_finish = threading.Event()

    @dramatiq.actor(
        broker=stub_broker, checkpointed=True, notify_shutdown=True, checkpoint_key=lambda name, tag: f"job:{name}"
    )
    def job(name: str, tag: str) -> None:
        runs.append(tag)
        checkpoint = current_checkpoint()
        start = 0 if checkpoint.position is None else checkpoint.position + 1
        for item in range(start, 3):
            with checkpoint.saving(item) as connection:
                connection.execute(insert(outputs).values(job=name, item=item))
            may_finish.wait(timeout=30)

    first = job.send("meeting", "first")
    wait_until(lambda: stored_items(database, "meeting"), timeout_s=10, what="the first item")
    with caplog.at_level(logging.INFO, logger=EVENTS_LOGGER):
        second = job.send("meeting", "second")
        # The second message is delivered, finds the checkpoint held, and is handed back to wait.
        wait_until(
            lambda: len(busy_events(caplog, second.message_id)) >= 2,
            timeout_s=10,
            what="the second message to look twice",
        )
        # A look at a held checkpoint is not an attempt (polled: the look that just logged may still be writing).
        wait_until(
            lambda: get_job(database, second.message_id)["attempts"] == 0,
            timeout_s=10,
            what="the looks to give their attempts back",
        )
        may_finish.set()
        stub_broker.join(job.queue_name, fail_fast=True)
        stub_worker.join()

    assert runs == ["first"], "the second message never ran the work"
    assert stored_items(database, "meeting") == [0, 1, 2]
    assert [get_job(database, sent.message_id)["status"] for sent in (first, second)] == [COMPLETED, COMPLETED]
    assert get_job(database, second.message_id)["attempts"] == 1, "only the delivery that found the work done"
    assert list_dead_letters(database) == []
    assert checkpoint_row(database, "job:meeting").resumes == 0


def busy_events(caplog: pytest.LogCaptureFixture, message_id: str) -> list[dict]:
    events = (getattr(record, "job_event", None) for record in caplog.records)
    return [
        event for event in events if event and event["event"] == "checkpoint.busy" and event["message_id"] == message_id
    ]


def test_a_time_limit_hands_the_job_back_to_continue_without_spending_a_retry(
    stub_broker: StubBroker, stub_worker: Worker, database: Database
) -> None:
    attempts: list[int] = []

    # max_retries=0: were an interruption counted as a failure, the job would be dead-lettered.
    @dramatiq.actor(broker=stub_broker, checkpointed=True, notify_shutdown=True, max_retries=0, time_limit=1_000)
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
    broker = StubBroker(
        middleware=[
            TimeLimit(time_limit=600_000),
            ShutdownNotifications(),
            Checkpoints(database=database, hand_back_after_ms=1_440_000, consumer_timeout_ms=1_800_000),
            DurationRouting(large_threshold_ms=60_000, regular_time_limit_ms=5_000, large_time_limit_ms=7_200_000),
        ]
    )
    declare = partial(dramatiq.actor, lambda: None, broker=broker)
    declare(actor_name="short_by_default")  # TimeLimit's 10 min
    declare(actor_name="hours_long", time_limit=3 * 3_600_000)
    declare(actor_name="hours_long_checkpointed", time_limit=3 * 3_600_000, checkpointed=True, notify_shutdown=True)
    declare(actor_name="routed", actor_class=RoutedActor)  # the large queue's 2 h
    declare(actor_name="routed_checkpointed", actor_class=RoutedActor, checkpointed=True, notify_shutdown=True)
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
