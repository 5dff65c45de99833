"""Maintenance actors on real workers (Redis, PostgreSQL): a job whose message Redis lost is handed back
from its checkpoint, one with no checkpoint is marked lost; retention purges, in short transactions on SQLite."""

from __future__ import annotations

import os
import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, event, insert, select

from middleware.checkpoints import job_checkpoints
from middleware.idempotency import idempotency_keys, purge_expired_keys
from middleware.job_status import job_status, purge_finished_jobs
from middleware.storage.database import PURGE_BATCH, Database
from tests import harness
from tests.harness import WorkerProcess, redis_client, run_python, wait_until
from tests.schedules import STALLED_QUEUE


def send(env: dict[str, str], code: str) -> list[str]:
    """Run ``code`` (which prints message ids, one a line) in an app process importing tests.schedules."""
    result = run_python(env, "import actors.maintenance as maintenance\nimport tests.schedules as schedules\n" + code)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def job_row(engine, message_id: str) -> dict:
    with engine.connect() as connection:
        return dict(connection.execute(select(job_status).where(job_status.c.message_id == message_id)).one()._mapping)


def forget_in_redis(namespace: str, queue: str) -> int:
    """What a Redis restart without its data does to a queue: every message of it is gone."""
    client = redis_client()
    keys = [
        *client.scan_iter(match=f"{namespace}:{queue}*"),
        *client.scan_iter(match=f"{namespace}:__acks__.*.{queue}"),
    ]
    return client.delete(*keys) if keys else 0


def test_a_stalled_job_whose_message_was_lost_is_handed_back_from_its_checkpoint(
    own_postgres_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": own_postgres_url,
        "BROKER_URL": harness.REDIS_TEST_URL,
        "REDIS_NAMESPACE": redis_namespace,
        "STATE_DIR": str(tmp_path),
        "STALLED_JOB_AFTER_MS": "1000",
    }
    engine = create_engine(own_postgres_url)
    release = tmp_path / "release"
    first = WorkerProcess(
        env, queues=[STALLED_QUEUE], threads=2, log_path=tmp_path / "first.log", modules=("tests.schedules",)
    )
    second = None
    try:
        first.wait_ready()
        resumable, unresumable = send(
            env,
            (
                f"print(schedules.resumable_steps.send({str(release)!r}, 3).message_id)\n"
                f"print(schedules.wait_for_release.send({str(release)!r}).message_id)\n"
            ),
        )

        def started() -> bool:
            return (
                bool(job_row(engine, resumable)["progress"]) and job_row(engine, unresumable)["status"] == "processing"
            )

        wait_until(started, timeout_s=30, what="both jobs to start, the resumable one past its first checkpoint")
        os.killpg(first.pid, signal.SIGKILL)  # the worker, its heartbeat keeper and all
        first.process.wait(timeout=10)
        assert forget_in_redis(redis_namespace, STALLED_QUEUE) > 0

        second = WorkerProcess(
            env,
            queues=[STALLED_QUEUE, "maintenance"],
            threads=2,
            log_path=tmp_path / "second.log",
            modules=("tests.schedules",),
        )
        second.wait_ready()

        def stalled() -> bool:
            return job_row(engine, resumable)["updated_at"] < datetime.now(UTC) - timedelta(seconds=1)

        wait_until(stalled, timeout_s=10, what="the job to be processing for longer than STALLED_JOB_AFTER_MS")
        send(env, "print(maintenance.sweep_stalled_jobs.send().message_id)")
        wait_until(lambda: job_row(engine, unresumable)["status"] == "failed", timeout_s=30, what="the lost job")
        release.touch()
        wait_until(lambda: job_row(engine, resumable)["status"] == "completed", timeout_s=30, what="the resumed job")
    finally:
        first.stop()
        if second is not None:
            second.stop()

    events = second.events()
    [handed_back] = [e for e in events if e["event"] == "job.handed_back"]
    assert (handed_back["message_id"], handed_back["actor"]) == (resumable, "resumable_steps")
    [lost] = [e for e in events if e["event"] == "job.lost"]
    assert lost["message_id"] == unresumable
    assert "saved no checkpoint" in job_row(engine, unresumable)["error"]
    [resumed] = [e for e in events if e["event"] == "checkpoint.resumed"]
    assert (resumed["message_id"], resumed["position"]) == (resumable, 0)
    with engine.connect() as connection:
        checkpoint = connection.execute(select(job_checkpoints).where(job_checkpoints.c.message_id == resumable)).one()
    assert (checkpoint.position, checkpoint.saves, checkpoint.resumes) == (2, 3, 1)
    engine.dispose()


def test_retention_deletes_finished_jobs_and_expired_keys_only(database_url: str) -> None:
    database = Database(database_url)
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=8), now - timedelta(days=1)
    rows = [
        ("old-done", "completed", old),
        ("old-failed", "failed", old),
        ("old-running", "processing", old),
        ("new-done", "completed", recent),
    ]
    prefix = uuid.uuid4().hex[:8]
    with database.transaction() as connection:
        for name, status, updated_at in rows:
            connection.execute(
                insert(job_status).values(
                    message_id=f"{prefix}-{name}",
                    actor_name="a",
                    queue_name="q",
                    status=status,
                    attempts=1,
                    unfinished_deliveries=0,
                    updated_at=updated_at,
                )
            )
        for name, expires_at in (("expired", now - timedelta(seconds=1)), ("live", now + timedelta(hours=1))):
            connection.execute(
                insert(idempotency_keys).values(
                    key=f"{prefix}-{name}",
                    message_id="m",
                    actor_name="a",
                    created_at=now,
                    expires_at=expires_at,
                )
            )
    purge_finished_jobs(database, older_than=timedelta(days=7))
    purge_expired_keys(database)
    message_id, key = job_status.c.message_id, idempotency_keys.c.key
    with database.engine.connect() as connection:
        left = set(connection.scalars(select(message_id).where(message_id.like(f"{prefix}%"))))
        keys = set(connection.scalars(select(key).where(key.like(f"{prefix}%"))))
    database.dispose()
    assert left == {f"{prefix}-old-running", f"{prefix}-new-done"}
    assert keys == {f"{prefix}-live"}


def test_a_large_purge_holds_sqlite_in_short_transactions_and_postgresql_in_one(database_url: str) -> None:
    database = Database(database_url)
    old, recent = datetime.now(UTC) - timedelta(days=8), datetime.now(UTC) - timedelta(days=1)
    prefix = uuid.uuid4().hex[:8]
    finished = [(f"{prefix}-{n}", "completed" if n % 2 else "failed", old) for n in range(2 * PURGE_BATCH + 2_000)]
    kept = [(f"{prefix}-running", "processing", old), (f"{prefix}-recent", "completed", recent)]
    with database.transaction() as connection:
        connection.execute(
            insert(job_status),
            [
                {
                    "message_id": message_id,
                    "actor_name": "a",
                    "queue_name": "q",
                    "status": status,
                    "attempts": 1,
                    "unfinished_deliveries": 0,
                    "updated_at": updated_at,
                }
                for message_id, status, updated_at in finished + kept
            ],
        )
    transactions = []
    event.listen(database.engine, "begin", transactions.append)

    assert purge_finished_jobs(database, older_than=timedelta(days=7)) == len(finished)

    # SQLite: each batch holds the write lock, and every worker's status write, only briefly.
    assert len(transactions) == (3 if database_url.startswith("sqlite") else 1)
    message_id = job_status.c.message_id
    with database.engine.connect() as connection:
        left = set(connection.scalars(select(message_id).where(message_id.like(f"{prefix}%"))))
    database.dispose()
    assert left == {f"{prefix}-running", f"{prefix}-recent"}
