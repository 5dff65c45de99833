"""What the resilience costs: bare Dramatiq, the full stack on SQLite and PostgreSQL, Celery and RQ, in one run.

    .venv/bin/python -m bench.run [--quick] [--rounds 5] [--output bench/results.md] [--no-peers]

1. Creates a SQLite file and a PostgreSQL database of its own, migrated with ``python -m ops db
   upgrade``, and (once) Celery and RQ in ``bench/.venv-peers``.
2. For each workload, runs every system in turn, round after round (A B C A B C ...), so a
   machine that gets busier during the run slows all of them alike: each measurement enqueues
   on an empty queue (timing ``send()`` one by one), starts the workers, and times the drain
   from outside (``bench/measure.py``); then reads the workers' peak RSS and stops them.
   Workloads: no-op jobs, 10 ms sleeping (I/O-bound) jobs, a long checkpointed job (the
   latency of each checkpoint write), and crash recovery (SIGKILL of the worker running a job,
   until the job starts again on the other worker).
3. Prints medians with min-max and the ratio to bare Dramatiq, the targets as pass or short,
   and writes the same as a markdown table.

Every Dramatiq system runs the project's default worker settings for short jobs
(``ops/supervisor.py``: processes, threads, prefetch); Celery gets the same processes and
threads, RQ (no threads) that many processes. Nothing here is part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.measure import measure_drain
from bench.systems import ROOT, Celery, Dramatiq, Rq, WorkerSettings, children
from ops.worker_profiles import SHORT_JOBS

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BARE, SQLITE, POSTGRESQL, CELERY, RQ = "bare Dramatiq", "stack, SQLite", "stack, PostgreSQL", "Celery", "RQ"


@dataclass(frozen=True)
class Sizes:
    rounds: int
    noop_jobs: int
    io_jobs: int
    enqueue_jobs: int  # sent one send() at a time, to time the enqueue rate; the rest in bulk
    segments: int
    recoveries: int
    #: Celery and RQ are slower: fewer jobs, so each of their measurements takes about as long.
    peer_share: dict[str, float] = field(default_factory=lambda: {CELERY: 0.3, RQ: 0.1})


FULL = Sizes(rounds=5, noop_jobs=20_000, io_jobs=4_000, enqueue_jobs=3_000, segments=500, recoveries=3)
QUICK = Sizes(rounds=2, noop_jobs=4_000, io_jobs=1_000, enqueue_jobs=1_000, segments=200, recoveries=1)


@dataclass
class Results:
    """Every measurement, by metric and system: lists of values, one per round."""

    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, metric: str, system: str, value: float | None) -> None:
        if value is not None:
            self.values.setdefault(metric, {}).setdefault(system, []).append(value)

    def median(self, metric: str, system: str) -> float | None:
        found = self.values.get(metric, {}).get(system)
        return statistics.median(found) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of smaller runs (about 3 minutes)")
    parser.add_argument("--rounds", type=int, help="rounds of each workload (default 5, quick 2)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results.md", help="the markdown table")
    parser.add_argument("--no-peers", action="store_true", help="leave out Celery and RQ")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        sizes = Sizes(**{**sizes.__dict__, "rounds": args.rounds})
    started = time.monotonic()
    load_before = os.getloadavg()
    results = Results()
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch_name, _postgres_database() as postgres_url:
        scratch = Path(scratch_name)
        settings = WorkerSettings(
            processes=SHORT_JOBS.workers, threads=SHORT_JOBS.threads, prefetch=SHORT_JOBS.prefetch
        )
        sqlite_url = f"sqlite:///{scratch / 'bench.sqlite3'}"
        systems = [
            Dramatiq(BARE, "bench.bare_actors", scratch, settings=settings),
            Dramatiq(SQLITE, "bench.stack_actors", scratch, database_url=sqlite_url, settings=settings),
            Dramatiq(POSTGRESQL, "bench.stack_actors", scratch, database_url=postgres_url, settings=settings),
        ]
        peer_versions: dict[str, str] = {}
        if not args.no_peers:
            from bench.peers.environment import ensure_peers_environment

            peer_versions = ensure_peers_environment()
            systems += [Celery(CELERY, settings=settings), Rq(RQ, settings=settings)]
        for system in systems[1:3]:
            _migrate(system)
        stack = _stack_middleware(systems[1])
        try:
            for workload, jobs in (("noop", sizes.noop_jobs), ("io", sizes.io_jobs)):
                for round_number in range(sizes.rounds):
                    for system in systems:
                        count = max(200, int(jobs * sizes.peer_share.get(system.name, 1.0)))
                        _drain_round(system, workload, count, sizes, results, scratch, round_number)
            for round_number in range(sizes.rounds):
                for system in systems[1:3]:
                    _checkpoint_round(system, sizes.segments, results, scratch, round_number)
            for attempt in range(sizes.recoveries):
                _recovery_round(systems[1], results, scratch, attempt)
        finally:
            for system in systems:
                system.cleanup()
    from bench.report import render

    report = render(
        results,
        settings=settings,
        sizes=sizes,
        machine=_machine(),
        load=(load_before, os.getloadavg()),
        peer_versions=peer_versions,
        stack=stack,
        seconds=time.monotonic() - started,
        command=" ".join(["python -m bench.run", *sys.argv[1:]]),
    )
    print(report)
    args.output.write_text(report)
    print(f"(written to {args.output})", file=sys.stderr)


def _drain_round(system, workload: str, jobs: int, sizes: Sizes, results: Results, scratch: Path, round_number: int):
    system.renew()
    is_dramatiq = isinstance(system, Dramatiq)
    one_by_one = min(jobs, sizes.enqueue_jobs) if is_dramatiq else jobs
    enqueue_rate = system.enqueue(workload, one_by_one)
    if is_dramatiq and jobs > one_by_one:
        results.add(f"{workload}.bulk_enqueue", system.name, system.enqueue(workload, jobs - one_by_one, bulk=True))
    results.add(f"{workload}.enqueue", system.name, enqueue_rate)
    workers = system.start(log=scratch / f"{_slug(system.name)}-{workload}-{round_number}.log")
    try:
        # Timed from before boot: the 90 % mark leaves boot out, and a fast drain cannot end unseen.
        drain = measure_drain(system.outstanding, jobs, timeout_s=max(120, jobs / 50), check=workers.raise_if_exited)
        results.add(f"{workload}.drain", system.name, drain.rate)
        results.add(f"{workload}.rss", system.name, workers.peak_rss_mb())
    finally:
        workers.stop()
        system.cleanup()
    print(
        f"bench: {workload:<5} round {round_number + 1}: {system.name:<18} enqueue {enqueue_rate:7.0f}/s  "
        f"drain {drain.rate:7.0f}/s ({jobs} jobs)",
        file=sys.stderr,
        flush=True,
    )


def _checkpoint_round(system: Dramatiq, segments: int, results: Results, scratch: Path, round_number: int) -> None:
    """One checkpointed job of ``segments`` saves on an idle worker: the latency of each save."""
    system.renew()
    report = scratch / f"checkpoints-{uuid.uuid4().hex[:8]}.json"
    workers = system.start(log=scratch / f"{_slug(system.name)}-checkpoints-{round_number}.log", processes=1, threads=1)
    try:
        workers.wait_ready()
        system.send("checkpointed_segments", [segments, str(report)], 1)
        _wait_for(report.exists, timeout_s=120, what="the checkpointed job's report")
    finally:
        workers.stop()
        system.cleanup()
    latencies = sorted(json.loads(report.read_text()))
    results.add("checkpoint.p50", system.name, _percentile(latencies, 50))
    results.add("checkpoint.p99", system.name, _percentile(latencies, 99))
    print(
        f"bench: checkpoints round {round_number + 1}: {system.name:<18} p50 {_percentile(latencies, 50):.2f} ms  "
        f"p99 {_percentile(latencies, 99):.2f} ms",
        file=sys.stderr,
        flush=True,
    )


def _recovery_round(system: Dramatiq, results: Results, scratch: Path, attempt: int) -> None:
    """Two workers (the project's settings: 5 s liveness window); SIGKILL the one running a job;
    the time until the job starts again on the other."""
    system.renew()
    marker = scratch / f"recovery-{uuid.uuid4().hex[:8]}"
    group = [system.start(log=scratch / f"recovery-{attempt}-{n}.log", processes=1, threads=1) for n in range(2)]
    try:
        for workers in group:
            workers.wait_ready()
        system.send("hold", [60_000, str(marker)], 1)
        first = _wait_for(lambda: _marker_lines(marker), timeout_s=60, what="the job to start")[0]
        pid = int(first.split()[0])
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        second = _wait_for(lambda: _marker_lines(marker)[1:], timeout_s=120, what="the job to start again")[0]
        recovered_s = float(second.split()[1]) - killed_at
    finally:
        for workers in group:
            workers.stop()
        system.cleanup()
    results.add("recovery_s", system.name, recovered_s)
    print(
        f"bench: recovery {attempt + 1}: the killed job started again after {recovered_s:.1f} s",
        file=sys.stderr,
        flush=True,
    )


def _marker_lines(marker: Path) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


def _wait_for(predicate, *, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)
    return value


def _percentile(ordered: list[float], percent: float) -> float:
    index = min(len(ordered) - 1, max(0, round(percent / 100 * len(ordered)) - 1))
    return ordered[index]


def _stack_middleware(system: Dramatiq) -> list[str]:
    """The middleware of the full stack as ``actors/broker.py`` builds it for these settings, in order."""
    code = "import bench.stack_actors as s; print(' '.join(type(m).__name__ for m in s.broker.middleware))"
    result = subprocess.run(
        [sys.executable, "-c", code], env=system.env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{system.name}: could not build the stack:\n{result.stderr[-3000:]}")
    return result.stdout.split()


def _migrate(system: Dramatiq) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ops", "db", "upgrade"],
        env=system.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{system.name}: python -m ops db upgrade failed:\n{result.stderr[-3000:]}")


@contextmanager
def _postgres_database() -> Iterator[str]:
    name = f"rj_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory_kb / 1024 / 1024:.0f} GiB, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d}"
    )


def _slug(name: str) -> str:
    return "".join(character if character.isalnum() else "-" for character in name.lower())


__all__ = ["children", "main"]

if __name__ == "__main__":
    main()
