"""A keyed send whose app process died between claiming the key and sending it does not hold the key for a day.

Real app processes SIGKILLed inside the send, real Redis, SQLite and PostgreSQL, and a real worker. Killed after
the claim and before Redis took the message: the message is nowhere, so once the claim is older
than any send takes, the app's next send takes the key over and the job runs. Killed after Redis
took it and before its ``queued`` row: the message waits in Redis, so the key stays held. And a
scheduler tick whose leader died the first way is fired once more by the next leader.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dramatiq
import pytest
from sqlalchemy import select, update

from actors.broker import build_broker
from actors.settings import Settings
from actors.system import System
from middleware.idempotency import DEFAULT_UNSENT_AFTER_MS, idempotency_keys
from middleware.job_status import COMPLETED, get_job
from middleware.storage.database import Database
from middleware.storage.schedule_state import DUPLICATE, ENQUEUED, entry_state, record_tick
from scheduler.entries import Entry
from scheduler.runner import TickRunner
from tests import harness
from tests.harness import WorkerProcess, run_python, wait_until

KEY = "meeting-7:transcribe"
QUEUE_HASH = "observed.msgs"

SEND = """
import os, signal
import dramatiq
from dramatiq.middleware import Middleware
from middleware.errors import DuplicateJob
from tests.observed_actors import succeeds

class DieInside(Middleware):
    # Last in the stack: its before_enqueue runs after the key is claimed, and its after_enqueue
    # (after-hooks run in reverse) before JobStatus writes the queued row.
    def {hook}(self, broker, message, delay):
        os.kill(os.getpid(), signal.SIGKILL)

if {die}:
    dramatiq.get_broker().middleware.append(DieInside())
try:
    print(succeeds.send_with_options(args=({marker!r},), idempotency_key={key!r}).message_id)
except DuplicateJob as duplicate:
    print("duplicate", duplicate.existing_message_id)
"""


def send(env: dict[str, str], marker: Path, *, die_in: str | None = None) -> str:
    code = SEND.format(hook=die_in or "before_enqueue", die=die_in is not None, marker=str(marker), key=KEY)
    result = run_python(env, code)
    if die_in is not None:
        assert result.returncode == -9, result.stderr
        return ""
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def claim_of(database: Database, key: str = KEY):
    with database.engine.connect() as connection:
        return connection.execute(select(idempotency_keys).where(idempotency_keys.c.key == key)).one()


def ticks_counted(runner: TickRunner, entry: str, outcome: str) -> float:
    """``jobs_scheduler_ticks_total{entry, outcome}`` as the replica serves it."""
    samples = [sample for family in runner.metrics.collect() for sample in family.samples]
    wanted = {"entry": entry, "outcome": outcome}
    return sum(s.value for s in samples if s.name == "jobs_scheduler_ticks_total" and s.labels == wanted)


def age_claim(database: Database, *, by_ms: int) -> None:
    """The claim as it is ``by_ms`` later: older than any send takes."""
    with database.transaction() as connection:
        connection.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.key == KEY)
            .values(created_at=datetime.now(UTC) - timedelta(milliseconds=by_ms))
        )


@pytest.mark.parametrize("die_in", ["before_enqueue", "after_enqueue"])
def test_a_sender_killed_inside_a_keyed_send_loses_no_job_and_duplicates_none(
    die_in: str, database_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    env = {
        "BROKER_URL": harness.REDIS_TEST_URL,
        "REDIS_NAMESPACE": redis_namespace,
        "DATABASE_URL": database_url,
        "STATE_DIR": str(tmp_path),
    }
    database = Database(database_url)
    redis = harness.redis_client()
    marker = tmp_path / "runs.txt"
    try:
        send(env, marker, die_in=die_in)
        first = claim_of(database)
        assert get_job(database, first.message_id) is None, "the sender died before the queued row"
        reached_redis = die_in == "after_enqueue"
        assert redis.hexists(f"{redis_namespace}:{QUEUE_HASH}", first.redis_message_id) == reached_redis

        # At once, the claim may be a send still under way: refused, as any duplicate.
        assert send(env, marker) == f"duplicate {first.message_id}"
        age_claim(database, by_ms=2 * DEFAULT_UNSENT_AFTER_MS)
        retry = send(env, marker)

        worker = WorkerProcess(
            env, queues=["observed"], modules=("tests.observed_actors",), log_path=tmp_path / "worker.log"
        )
        try:
            worker.wait_ready()
            if reached_redis:  # the first message is the job: it runs, and the key stays with it
                assert retry == f"duplicate {first.message_id}"
                job = first.message_id
            else:  # the first message is nowhere: the retry takes the key over and runs
                assert retry != f"duplicate {first.message_id}" and not retry.startswith("duplicate")
                assert claim_of(database).message_id == retry
                job = retry
            wait_until(
                lambda: (get_job(database, job) or {}).get("status") == COMPLETED,
                timeout_s=30,
                what=f"job {job} to complete",
            )
        finally:
            worker.stop()
        assert marker.read_text().splitlines() == ["attempt 1"], "the job ran once"
        assert redis.hlen(f"{redis_namespace}:{QUEUE_HASH}") == 0
    finally:
        database.dispose()


def test_a_tick_whose_leader_died_between_claiming_its_key_and_sending_is_enqueued_by_the_next_leader(
    sqlite_url: str, redis_namespace: str
) -> None:
    settings = Settings.from_env(
        {
            "BROKER_URL": harness.REDIS_TEST_URL,
            "REDIS_NAMESPACE": redis_namespace,
            "DATABASE_URL": sqlite_url,
            "IDEMPOTENCY_UNSENT_AFTER_MS": "1000",
            "SCHEDULER_MISFIRE_GRACE_MS": str(2 * 3_600_000),
        }
    )
    database = Database(sqlite_url)
    broker = build_broker(settings, database)
    actor = dramatiq.actor(lambda kind: None, broker=broker, actor_name="send_report", queue_name="reports")
    entry = Entry("hourly", every="1h", actor="send_report", args=("hourly",))
    tick = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)  # the hour the dead leader was sending
    # What the dead leader did: the tick before was recorded; for this one, every before_enqueue hook
    # (its claim of the tick's key) and no send.
    record_tick(
        database,
        "hourly",
        scheduled_for=tick - timedelta(hours=1),
        outcome=ENQUEUED,
        message_id=None,
        error=None,
        fired_by="dead:1",
    )
    unsent = actor.message_with_options(args=("hourly",), idempotency_key=entry.tick_key(tick))
    broker.emit_before("enqueue", unsent.copy(options={"redis_message_id": str(uuid.uuid4())}), None)
    runner = TickRunner([entry], system=System(settings=settings, database=database, broker=broker), identity="new:1")
    reports = f"{redis_namespace}:reports.msgs"
    try:
        runner.start()  # catches the tick up at once: a duplicate, since the claim is too young to judge
        sent = wait_until(
            lambda: harness.redis_client().hvals(reports), timeout_s=15, what="the tick's second fire to enqueue it"
        )
        [message] = [dramatiq.Message.decode(body) for body in sent]
        assert message.options["idempotency_key"] == entry.tick_key(tick) and message.message_id != unsent.message_id
        assert claim_of(database, entry.tick_key(tick)).message_id == message.message_id
        wait_until(
            lambda: entry_state(database, "hourly")["last_outcome"] == ENQUEUED,
            timeout_s=5,
            what="the second fire to be recorded",
        )
        assert ticks_counted(runner, "hourly", DUPLICATE) == 1, "the catch-up itself was a duplicate"

        # Once the tick's message has a job status, a duplicate fire is only that: no second fire.
        assert runner.tick(entry, scheduled_for=tick, missed=False) == DUPLICATE
        assert runner.pending_rechecks() == []
        assert harness.redis_client().hlen(reports) == 1
    finally:
        runner.stop()
        broker.close()
        database.dispose()
