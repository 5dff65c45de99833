"""The status writer's own connection: rows as SQLAlchemy reads them, and a connection the server dropped replaced."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime

import dramatiq
import pytest
from dramatiq.middleware import TimeLimitExceeded
from sqlalchemy import text

from middleware.job_status import PROGRESS_UPSERT, get_job, progress_values
from middleware.storage.database import Database
from middleware.storage.group_commit import GroupCommit, Write
from middleware.storage.status_writer import (
    ENQUEUE,
    FINISH,
    RUN,
    START,
    StatusWriter,
    finish_values,
    row_values,
    run_values,
)
from tests.unit.test_group_commit_interrupts import interrupt_a_waiting_caller


def test_a_status_write_after_the_server_dropped_the_connection_goes_through_on_a_new_one(postgres_url: str) -> None:
    database = Database(postgres_url)
    writer = StatusWriter(database)
    writes = GroupCommit(commit=writer.commit)
    now = datetime.now(UTC)
    writes.run(Write(ENQUEUE, row_values("dropped-1", "job", "default", "queued", now)))
    backend_pid = writer._connect().info.backend_pid
    with database.engine.connect() as connection:
        assert connection.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend_pid})

    assert writes.run(Write(START, row_values("dropped-1", "job", "default", "processing", now))) == 1
    writes.run(
        Write(
            FINISH, finish_values("dropped-1", status="completed", now=now, finished_at=now, error=None, progress=1.0)
        )
    )
    row = get_job(database, "dropped-1")
    assert (row["status"], row["attempts"], row["unfinished_deliveries"], row["progress"]) == ("completed", 1, 0, 1.0)
    assert row["enqueued_at"] == row["started_at"] == row["finished_at"] == now
    writer.close()
    database.dispose()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_start_and_its_finish_written_as_one_row_read_as_the_two_would(database_url: str) -> None:
    database = Database(database_url)
    writer = StatusWriter(database)
    queued_at, started_at, finished_at = (datetime(2026, 11, 26, 9, minute, tzinfo=UTC) for minute in (0, 1, 2))
    writer.commit([Write(ENQUEUE, row_values("queued-first", "job", "default", "queued", queued_at))])

    def run(message_id: str, *, status: str, attempted: bool, error: str | None = None) -> Write:
        start = row_values(message_id, "job", "default", "processing", started_at)
        finish = finish_values(
            message_id,
            status=status,
            now=finished_at,
            error=error,
            attempted=attempted,
            finished_at=finished_at if status != "processing" else None,
            progress=1.0 if status == "completed" else None,
        )
        return Write(RUN, run_values(start, finish))

    writer.commit(
        [
            run("queued-first", status="completed", attempted=True),
            run("never-queued", status="failed", attempted=True, error="ValueError: no"),
            run("waited", status="processing", attempted=False),  # stopped before its actor ran
        ]
    )

    rows = {message_id: get_job(database, message_id) for message_id in ("queued-first", "never-queued", "waited")}
    columns = (
        "status",
        "attempts",
        "unfinished_deliveries",
        "progress",
        "error",
        "enqueued_at",
        "started_at",
        "finished_at",
        "updated_at",
    )
    read = {message_id: tuple(_aware(row[column]) for column in columns) for message_id, row in rows.items()}
    assert read == {
        "queued-first": ("completed", 1, 0, 1.0, None, queued_at, started_at, finished_at, finished_at),
        "never-queued": ("failed", 1, 0, None, "ValueError: no", None, started_at, finished_at, finished_at),
        "waited": ("processing", 0, 0, None, None, None, started_at, None, finished_at),
    }
    writer.close()
    database.dispose()


def _aware(value: object) -> object:
    """SQLite's DateTime reads back naive (it stores UTC without an offset), PostgreSQL's aware."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_progress_saved_before_the_jobs_row_exists_is_kept_by_the_start_and_the_enqueue_that_follow(
    database_url: str,
) -> None:
    # A checkpointed job saves its first checkpoint before its start (written behind) and its queued row
    # (written by the sender once the broker took the message) are committed.
    database = Database(database_url)
    writer = StatusWriter(database)
    message = dramatiq.Message(queue_name="default", actor_name="job", args=(), kwargs={}, options={})
    now = datetime.now(UTC)
    with database.transaction() as connection:
        connection.execute(PROGRESS_UPSERT, progress_values(message, 0.25, now))
    writer.commit([Write(START, row_values(message.message_id, "job", "default", "processing", now))])
    writer.commit([Write(ENQUEUE, row_values(message.message_id, "job", "default", "queued", now))])

    row = get_job(database, message.message_id)
    assert (row["status"], row["attempts"], row["unfinished_deliveries"], row["progress"]) == ("processing", 1, 1, 0.25)
    writer.close()
    database.dispose()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_batch_of_more_starts_than_one_statement_may_carry_is_written_in_several(database_url: str) -> None:
    """11,000 starts are 66,000 parameters: past PostgreSQL's 65,535 for one statement (SQLite's default build
    takes 32,766; this machine's takes more)."""
    database = Database(database_url)
    writer = StatusWriter(database)
    now = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    started = [Write(START, row_values(f"started-{n}", "job", "default", "processing", now)) for n in range(11_000)]
    writer.commit(started)

    assert [write.result for write in started] == [1] * 11_000, "each start learns its own unfinished deliveries"
    with database.engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM job_status WHERE status = 'processing'")) == 11_000
    writer.close()
    database.dispose()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_status_writer_caller_interrupted_by_dramatiq_mid_wait_leaves_every_write_going(database_url: str) -> None:
    """Issue 18 on the real databases: TimeLimitExceeded raised into a thread waiting for its status
    write, while a commit is under way and other writes wait behind it, stops no other write."""
    database = Database(database_url)
    writer = StatusWriter(database)
    first_started, hold_first = threading.Event(), threading.Event()

    def commit_holding_the_first(writes: Sequence[Write]) -> None:
        if not first_started.is_set():
            first_started.set()
            hold_first.wait(timeout=10)
        writer.commit(writes)

    writes = GroupCommit(commit=commit_holding_the_first)
    now = datetime.now(UTC)
    first = Write(ENQUEUE, row_values("held-1", "job", "default", "queued", now))
    writes.submit(first)
    first_started.wait(timeout=10)
    interrupted = Write(ENQUEUE, row_values("interrupted-2", "job", "default", "queued", now))
    thread, outcome = interrupt_a_waiting_caller(writes, interrupted)
    behind = Write(ENQUEUE, row_values("behind-3", "job", "default", "queued", now))
    writes.submit(behind)
    hold_first.set()
    thread.join(timeout=10)
    assert not thread.is_alive() and isinstance(outcome[0], TimeLimitExceeded)
    waiter = threading.Thread(target=writes.wait, args=([behind],), daemon=True)
    waiter.start()
    waiter.join(timeout=10)
    assert not waiter.is_alive(), "the write behind the interrupted caller was never committed"
    writes.run(Write(ENQUEUE, row_values("after-4", "job", "default", "queued", now)))
    assert [get_job(database, f"{name}")["status"] for name in ("held-1", "interrupted-2", "behind-3", "after-4")] == [
        "queued"
    ] * 4, "every write is in the database, the interrupted caller's too"
    writer.close()
    database.dispose()
