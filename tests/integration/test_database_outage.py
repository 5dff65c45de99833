"""A database outage interrupts jobs without spending their attempts, and does not let a worker
burn through its queue: real worker, real Redis, PostgreSQL behind a proxy that is cut."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from middleware.storage.database import Database
from middleware.storage.database_outages import HAND_BACKS_OPTION, DatabaseOutages
from tests.harness import WorkerProcess, run_python, wait_until
from tests.tcp_proxy import TcpProxy

JOBS = 6


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_jobs_sent_during_an_outage_wait_for_the_database_and_spend_no_attempt(
    broker_env: dict[str, str], postgres_url: str, tmp_path: Path
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    env = {**broker_env, "DATABASE_URL": postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")}
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log", modules=("tests.chaos_actors",), threads=2)
    markers = [tmp_path / f"job-{n}" for n in range(JOBS)]
    try:
        worker.wait_ready()
        proxy.cut()
        # Checkpointed jobs: they need the database. Sent by an app that reaches PostgreSQL
        # directly: only the worker's database is down.
        sends = "".join(f"checkpointed_steps.send({str(marker)!r}, 1, 0.0)\n" for marker in markers)
        app_env = {**env, "DATABASE_URL": postgres_url}
        sent = run_python(app_env, "from tests.chaos_actors import checkpointed_steps\n" + sends)
        assert sent.returncode == 0, sent.stderr
        wait_until(
            lambda: sum(e["event"] == "job.interrupted" for e in worker.events()) >= 2,
            timeout_s=30,
            what="both worker threads to meet the outage",
        )
        proxy.restore()
        wait_until(
            lambda: all(marker.exists() and "done" in marker.read_text() for marker in markers),
            timeout_s=60,
            what="every job to run",
        )
    finally:
        worker.stop()
        proxy.close()

    events = worker.events()
    interrupted = [e for e in events if e["event"] == "job.interrupted"]
    assert {e["reason"] for e in interrupted} == {"DatabaseUnavailable"}
    # Each thread met the outage once and then waited for the database, instead of taking and
    # failing every waiting job in turn.
    assert len(interrupted) <= 2 * 2, [e["message_id"] for e in interrupted]
    assert not [e for e in events if e["event"] in ("job.retry", "job.failed")], "no attempt spent"


def test_an_error_from_a_database_that_answers_is_not_an_outage(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'up.sqlite3'}")
    outages = DatabaseOutages(database)
    message = _message()
    missing_table = OperationalError("SELECT * FROM nowhere", {}, Exception("no such table: nowhere"))
    assert not outages.interrupts(message, missing_table)
    assert HAND_BACKS_OPTION not in message.options


def test_an_unreachable_database_is_an_outage_until_the_cap(tmp_path: Path) -> None:
    database = Database("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1")
    outages = DatabaseOutages(database, wait_s=1, max_hand_backs=2)
    message = _message()
    refused = OperationalError("connect", {}, Exception("connection refused"))
    assert outages.interrupts(message, refused)
    assert outages.interrupts(message, refused)
    assert not outages.interrupts(message, refused), "after the cap the failure is charged as usual"
    assert message.options[HAND_BACKS_OPTION] == 2
    assert not outages.interrupts(_message(), ValueError("not a database error"))
    assert not outages.wait_until_reachable()


def _message():
    import dramatiq

    return dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
