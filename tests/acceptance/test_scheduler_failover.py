"""Two real ``python -m scheduler`` processes: one leads, the standby takes over when the leader is
SIGKILLed, and across the run every tick of a one-second schedule is enqueued exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dramatiq
import httpx
from sqlalchemy import create_engine, delete, select

from middleware.job_status import job_status
from middleware.storage.schedule_state import schedule_state
from tests import harness
from tests.harness import ROOT, free_port, process_env, redis_client, wait_until
from tests.schedules import TICKS_QUEUE

TICK = timedelta(seconds=1)


class SchedulerProcess:
    """A real ``python -m scheduler`` in its own process group, its output in a log file."""

    def __init__(self, env: Mapping[str, str], *, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scheduler"],
            env=process_env(env),
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def events(self, name: str | None = None) -> list[dict]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        events = [json.loads(line) for line in lines if line.startswith('{"event":')]
        return [event for event in events if name is None or event["event"] == name]

    def wait_for(self, name: str, *, timeout_s: float = 60) -> dict:
        def seen() -> dict | None:
            if self.process.poll() is not None:
                raise AssertionError(f"the scheduler exited with {self.process.returncode}:\n{self.log()}")
            return next(iter(self.events(name)), None)

        return wait_until(seen, timeout_s=timeout_s, what=f"{name} from the scheduler")

    def kill(self) -> float:
        os.killpg(self.process.pid, signal.SIGKILL)
        killed_at = time.time()
        self.process.wait(timeout=10)
        return killed_at

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _at(event: dict, field: str = "timestamp") -> datetime:
    return datetime.fromisoformat(event[field])


def test_the_standby_takes_over_from_a_killed_leader_and_every_tick_is_enqueued_once(
    database_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "BROKER_URL": harness.REDIS_TEST_URL,
        "REDIS_NAMESPACE": redis_namespace,
        "STATE_DIR": str(tmp_path),
        "SCHEDULE_MODULE": "tests.schedules",
        # Every tick missed during the takeover is caught up, so none may be missing at the end.
        "SCHEDULER_COALESCE": "false",
        "SCHEDULER_MISFIRE_GRACE_MS": "30000",
    }
    engine = create_engine(database_url)
    with engine.begin() as connection:  # the PostgreSQL database is shared by the session's tests
        connection.execute(delete(schedule_state).where(schedule_state.c.entry == "tick"))
    first = SchedulerProcess(env, log_path=tmp_path / "first.log")
    second = third = None
    try:
        first.wait_for("scheduler.leader")
        second = SchedulerProcess(env, log_path=tmp_path / "second.log")
        second.wait_for("scheduler.standby")
        wait_until(lambda: len(first.events("schedule.enqueued")) >= 2, timeout_s=30, what="two ticks")
        killed_at = datetime.fromtimestamp(first.kill(), UTC)
        took_over = _at(second.wait_for("scheduler.leader", timeout_s=15))
        wait_until(
            lambda: sum(_at(e, "scheduled_for") > took_over + TICK for e in second.events("schedule.enqueued")) >= 2,
            timeout_s=30,
            what="two ticks from the new leader",
        )
        assert second.stop() == 0
        assert second.events("scheduler.stopped")
        # No scheduler runs until the next one boots: it catches up the ticks missed meanwhile. A boot
        # can take less than a tick, so one tick is let pass first, or none would be missed.
        last = max(_at(e, "scheduled_for") for e in second.events("schedule.enqueued"))
        wait_until(lambda: datetime.now(UTC) > last + 2 * TICK, timeout_s=10, what="a tick with no scheduler")
        port = free_port()
        third = SchedulerProcess({**env, "SCHEDULER_METRICS_PORT": str(port)}, log_path=tmp_path / "third.log")
        restarted = _at(third.wait_for("scheduler.leader"))
        wait_until(
            lambda: any(_at(e, "scheduled_for") > restarted for e in third.events("schedule.enqueued")),
            timeout_s=30,
            what="a tick after the restart",
        )
        metrics = wait_until(lambda: _scrape(port, "jobs_queue_messages"), timeout_s=10, what="the system gauges")
        assert third.stop() == 0
    finally:
        for scheduler in (first, second, third):
            if scheduler is not None:
                scheduler.stop()

    takeover_s = (took_over - killed_at).total_seconds()
    print(f"\n{database_url.split(':')[0]}: the standby led {takeover_s:.2f} s after the leader was SIGKILLed")
    bodies = redis_client().hvals(f"{redis_namespace}:{TICKS_QUEUE}.msgs")
    messages = [dramatiq.Message.decode(body) for body in bodies]
    keys = sorted(message.options["idempotency_key"] for message in messages)
    assert len(keys) == len(set(keys)), "a tick was enqueued twice"
    ticks = sorted(datetime.fromisoformat(key.removeprefix("schedule:tick:")) for key in keys)
    assert ticks == [ticks[0] + n * TICK for n in range(len(ticks))], "a tick is missing"
    assert ticks[0] < killed_at < took_over < restarted < ticks[-1]
    with engine.connect() as connection:
        queued = connection.scalars(
            select(job_status.c.message_id).where(job_status.c.message_id.in_([m.message_id for m in messages]))
        ).all()
    engine.dispose()
    assert len(queued) == len(messages)
    enqueued = [{e["scheduled_for"] for e in process.events("schedule.enqueued")} for process in (first, second, third)]
    assert sum(map(len, enqueued)) == len(ticks)
    assert all(_at(e) >= took_over for e in second.events() if e["event"].startswith("schedule."))
    caught_up = [e for e in third.events("schedule.enqueued") if _at(e, "scheduled_for") < restarted]
    assert caught_up, "the restarted scheduler did not catch up the ticks missed while none ran"
    print(f"after a restart, {len(caught_up)} missed tick(s) were caught up")
    assert "jobs_scheduler_leader 1.0" in metrics
    assert f'jobs_queue_messages{{queue_name="{TICKS_QUEUE}",state="waiting"}}' in metrics


def _scrape(port: int, wanted: str) -> str | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.TransportError:
        return None  # not listening yet
    return text if wanted in text else None


def test_a_bad_cron_expression_stops_the_scheduler_at_start_naming_the_entry(tmp_path: Path) -> None:
    env = {
        "BROKER_URL": harness.REDIS_TEST_URL,
        "STATE_DIR": str(tmp_path),
        "SCHEDULE_MODULE": "tests.schedules:BAD_CRON",
    }
    result = subprocess.run(
        [sys.executable, "-m", "scheduler"],
        env=process_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: schedule entry 'nightly-report': cron '0 25 * * *' is not a valid crontab expression: "
        "Error validating expression '25': the last value (25) is higher than the maximum value (23)"
    ]
