"""The status writer's own connection: rows as SQLAlchemy reads them, and a connection the server dropped replaced."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text

from middleware.database import Database
from middleware.group_commit import GroupCommit, Write
from middleware.job_status import get_job
from middleware.status_writer import ENQUEUE, FINISH, START, StatusWriter, finish_values, row_values


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
    writes.run(Write(FINISH, finish_values("dropped-1", status="completed", now=now, finished_at=now, error=None,
                                           progress=1.0)))  # fmt: skip
    row = get_job(database, "dropped-1")
    assert (row["status"], row["attempts"], row["unfinished_deliveries"], row["progress"]) == ("completed", 1, 0, 1.0)
    assert row["enqueued_at"] == row["started_at"] == row["finished_at"] == now
    writer.close()
    database.dispose()
