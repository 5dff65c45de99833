"""Chaos: transcriptions on supervised workers while workers are SIGKILLed, Redis restarts and PostgreSQL vanishes.

The short run is part of ``make test``; the long one is marked ``slow``:

    .venv/bin/python -m pytest -m slow tests/acceptance/test_chaos.py -s

At the end every job must be complete (or dead-lettered exactly once), with no message lost, no
segment stored twice, and no job run again from zero after its first checkpoint (a segment
transcribed again after it was stored would hit the unique index: no IntegrityError anywhere).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, func, select

from actors.tables import transcript_segments
from middleware.dead_letters import dead_letters
from ops.recordings import make_long_recording
from tests.harness import free_port, run_ops, run_python, start_ops_workers, wait_until
from tests.tcp_proxy import TcpProxy

SEGMENT_MS = 3_000


@dataclass
class Chaos:
    """The services under test, and what was done to them."""

    tmp_path: Path
    redis_port: int = 0
    redis_process: subprocess.Popen | None = None
    kills: list[float] = field(default_factory=list)
    redis_restarts: int = 0
    database_cuts: int = 0

    def start_redis(self) -> None:
        if not self.redis_port:
            self.redis_port = free_port()
        # appendfsync always: a SIGKILLed Redis loses no acknowledged write.
        self.redis_process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--dir",
                str(self.tmp_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.redis_port)
        wait_until(lambda: _pings(client), timeout_s=30, what="the chaos Redis to answer")

    def restart_redis(self) -> None:
        self.redis_process.send_signal(signal.SIGKILL)
        self.redis_process.wait()
        self.start_redis()
        self.redis_restarts += 1

    def kill_a_worker(self) -> bool:
        registry = redis.Redis(port=self.redis_port).hgetall("dramatiq:__worker_processes__").values()
        pids = [int(identity.decode().rsplit(":", 2)[1]) for identity in registry]
        live = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        if not live:
            return False
        os.kill(random.choice(live), signal.SIGKILL)
        self.kills.append(time.time())
        return True

    def stop(self) -> None:
        if self.redis_process is not None and self.redis_process.poll() is None:
            self.redis_process.terminate()
            self.redis_process.wait()


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Chaos]:
    chaos = Chaos(tmp_path)
    chaos.start_redis()
    yield chaos
    chaos.stop()


@pytest.fixture
def database(own_postgres_url: str) -> str:
    return own_postgres_url


def test_short_chaos_run(chaos: Chaos, database: str, tmp_path: Path) -> None:
    run_chaos(chaos, database, tmp_path, jobs=6, recording_s=15, disruptions=4, action_every_s=4.0, deadline_s=240)


@pytest.mark.slow
@pytest.mark.timeout(1900)
def test_long_chaos_run(chaos: Chaos, database: str, tmp_path: Path) -> None:
    # A disruption every ~10 s: enough to hit most jobs, not so many that two workers never finish.
    run_chaos(chaos, database, tmp_path, jobs=40, recording_s=60, disruptions=40, action_every_s=10.0, deadline_s=1800)


def run_chaos(
    chaos: Chaos,
    database_url: str,
    tmp_path: Path,
    *,
    jobs: int,
    recording_s: int,
    disruptions: int,
    action_every_s: float,
    deadline_s: float,
) -> None:
    """Send the jobs, disrupt ``disruptions`` times while they run, then let them finish."""
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxied_url = database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    env = {
        "BROKER_URL": f"redis://127.0.0.1:{chaos.redis_port}/0",
        "DATABASE_URL": proxied_url,
        "STATE_DIR": str(tmp_path),
        "TRANSCRIPTION_ENGINE": "pocketsphinx",
        "TRANSCRIPTION_SEGMENT_MS": str(SEGMENT_MS),
        # The chaos kills workers on purpose, more often than a crash loop's default limit.
        "WORKER_MAX_CRASHES": "1000",
    }
    recording = make_long_recording(tmp_path / "meeting.wav", seconds=recording_s)
    meetings = [f"chaos-{n}-{uuid.uuid4().hex[:6]}" for n in range(jobs)]
    expected = recording_s * 1000 // SEGMENT_MS
    engine = create_engine(database_url)
    log_path = tmp_path / "workers.log"
    log = log_path.open("wb")
    supervisor = start_ops_workers(env, "--workers", "2", "--grace", "30", log=log)
    try:
        sent = run_python(
            env,
            "from actors.transcription import transcribe\n"
            + "".join(f"transcribe.send({meeting!r}, {str(recording)!r})\n" for meeting in meetings),
        )
        assert sent.returncode == 0, sent.stderr

        # Every kind early (a short run can finish within a few actions), then kills twice as often.
        actions = itertools.islice(itertools.cycle(["database", "kill", "redis", "kill"]), disruptions)
        for action in actions:
            if _all_done(engine, meetings, expected):
                break
            assert supervisor.poll() is None, "the supervisor died"
            if action == "kill":
                chaos.kill_a_worker()
            elif action == "redis":
                chaos.restart_redis()
            else:
                proxy.cut()
                chaos.database_cuts += 1
                time.sleep(3)  # the outage itself: PostgreSQL stays unreachable for 3 s
                proxy.restore()
            time.sleep(action_every_s)  # the pace of the chaos, not a wait for a result
        # The chaos is over: every job must now finish by itself.
        wait_until(
            lambda: _all_done(engine, meetings, expected),
            timeout_s=deadline_s,
            interval_s=1,
            what=f"every job to complete after the chaos; see {log_path}",
        )
    finally:
        os.kill(supervisor.pid, signal.SIGTERM)
        supervisor.wait(timeout=90)
        log.close()
        proxy.close()

    # Anything dead-lettered while PostgreSQL was unreachable is in the broker's DLQ: record it.
    reconciled = run_ops({**env, "DATABASE_URL": database_url}, "dlq", "reconcile", "--json")
    assert reconciled.returncode == 0, reconciled.stderr
    report = _report(engine, meetings, expected, chaos, log_path.read_text(errors="replace"))
    engine.dispose()
    print("\n" + report.table())
    assert report.lost == [] and report.duplicated == 0
    # A database outage must not spend attempts (middleware/storage/database_outages.py): before it was
    # handled, six 3 s cuts dead-lettered 39 of 40 queued jobs.
    assert all(kind.startswith("poison") for kind in report.dead_letter_kinds), report.dead_letter_kinds
    assert report.restarted_from_zero == [], "a job ran again from zero after its first checkpoint"
    assert chaos.kills and chaos.redis_restarts and chaos.database_cuts, "every kind of chaos happened"


@dataclass
class Report:
    jobs: int
    completed: int
    dead_lettered: int
    lost: list[str]
    duplicated: int
    integrity_errors: int
    restarted_from_zero: list[str]
    resumes: int
    kills: int
    redis_restarts: int
    database_cuts: int
    recoveries_s: list[float]
    hand_backs_s: list[float]
    #: Every recording is valid: the only ways to die are poison (killed too often) or a bug.
    dead_letter_kinds: list[str]

    def table(self) -> str:
        recoveries = self.recoveries_s
        rows = [
            ("jobs", self.jobs),
            ("completed", self.completed),
            ("dead-lettered", self.dead_lettered),
            ("lost", len(self.lost)),
            ("duplicated segments", self.duplicated),
            ("jobs run again from zero after a checkpoint", len(self.restarted_from_zero)),
            # A duplicate delivery (at least once: e.g. a worker killed between moving a delayed
            # message to its queue and acking it) may transcribe a segment the other delivery
            # stores first; the unique index turns it away, so it is wasted work, never stored.
            ("segments transcribed twice (not stored)", self.integrity_errors),
            (
                "kills / Redis restarts / PostgreSQL cuts",
                f"{self.kills} / {self.redis_restarts} / {self.database_cuts}",
            ),
            ("resumes from a checkpoint", self.resumes),
            # Until the killed worker's job was back in its queue, ready for any worker.
            ("hand-back after a kill p50 / p95 / max (s)", _spread(self.hand_backs_s)),
            # Until the killed job resumed: the hand-back plus the wait for a free worker (the
            # handed-back job queues behind the jobs already waiting).
            ("resumed after a kill p50 / p95 / max (s)", _spread(recoveries)),
        ]
        return "\n".join(f"  {name:<42} {value}" for name, value in rows)


def _report(engine, meetings: list[str], expected: int, chaos: Chaos, log: str) -> Report:
    segments = transcript_segments.c
    with engine.connect() as connection:
        counts = _per_meeting(connection, func.count())
        distinct = _per_meeting(connection, func.count(segments.idx.distinct()))
        dead_rows = [row for row in connection.execute(select(dead_letters)) if row.actor_name == "transcribe"]
    dead = {row.message["args"][0] for row in dead_rows}
    completed = [meeting for meeting in meetings if distinct.get(meeting) == expected]
    events = [json.loads(line[line.index("{") :]) for line in log.splitlines() if '{"event":' in line]
    resumed_at = sorted(
        datetime.fromisoformat(event["timestamp"]).timestamp()
        for event in events
        if event["event"] == "checkpoint.resumed"
    )
    recoveries = _first_after_each(chaos.kills, resumed_at)
    handed_back_at = sorted(
        datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for stamp in re.findall(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\] .*Handed back a dead worker's messages", log)
    )
    return Report(
        jobs=len(meetings),
        completed=len(completed),
        dead_lettered=len(dead & set(meetings)),
        lost=[m for m in meetings if m not in completed and m not in dead],
        duplicated=sum(counts.get(m, 0) - distinct.get(m, 0) for m in meetings),
        integrity_errors=log.count("IntegrityError: (psycopg.errors.UniqueViolation)") // 2,
        restarted_from_zero=_restarted_from_zero(log),
        resumes=len(resumed_at),
        kills=len(chaos.kills),
        redis_restarts=chaos.redis_restarts,
        database_cuts=chaos.database_cuts,
        recoveries_s=recoveries,
        hand_backs_s=_first_after_each(chaos.kills, handed_back_at, before_next_cause=True),
        dead_letter_kinds=[f"{row.kind}: {row.error_type}" for row in dead_rows],
    )


def _restarted_from_zero(log: str) -> list[str]:
    """Meetings that started at segment 0 again after a run of theirs had resumed from a checkpoint."""
    starts = sorted(
        (datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f"), meeting, int(segment))
        for stamp, meeting, segment in re.findall(
            r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\] .*Transcribing meeting (\S+): .*starting at segment (\d+)\.", log
        )
    )
    resumed: set[str] = set()
    violations = []
    for _, meeting, segment in starts:
        if segment > 0:
            resumed.add(meeting)
        elif meeting in resumed:
            violations.append(meeting)
    return violations


def _per_meeting(connection, aggregate) -> dict[str, int]:
    query = select(transcript_segments.c.meeting_id, aggregate).group_by(transcript_segments.c.meeting_id)
    return {meeting: value for meeting, value in connection.execute(query)}


def _first_after_each(causes: list[float], effects: list[float], *, before_next_cause: bool = False) -> list[float]:
    """For each cause, the delay until the first effect that followed it (before the next cause,
    if asked: a killed worker that held no job has nothing to hand back)."""
    delays = []
    for cause, next_cause in zip(causes, [*causes[1:], float("inf")], strict=True):
        limit = next_cause if before_next_cause else float("inf")
        delays += [t - cause for t in effects if cause < t < limit][:1]
    return delays


def _spread(values: list[float]) -> str:
    return " / ".join(f"{_percentile(values, q):.1f}" for q in (50, 95, 100)) if values else "-"


def _percentile(values: list[float], q: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _all_done(engine, meetings: list[str], expected: int) -> bool:
    # Rows, not distinct indexes: the unique index on (meeting_id, idx) makes every row distinct.
    query = select(func.count()).select_from(transcript_segments).where(transcript_segments.c.meeting_id.in_(meetings))
    with engine.connect() as connection:
        return connection.scalar(query) == expected * len(meetings)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
