"""What each middleware costs in the drain: bare Dramatiq and the stack with some middleware left out, alternating.

    .venv/bin/python -m bench.ablation [--jobs 30000] [--rounds 3] [--database sqlite|postgresql] STACK [STACK ...]

Each STACK names the middleware to leave out, comma-separated; ``full`` is the whole stack:

    .venv/bin/python -m bench.ablation full JobStatus JobStatus,JobLogs JobStatus,Metrics

Every round drains ``--jobs`` no-op jobs on bare Dramatiq and then on each stack in turn (A B C,
A B C, ...), with the short-job worker settings of ``bench.run``, and prints each one's median
drain rate, min-max, and ratio to bare Dramatiq. A single middleware's cost in one thread is
``bench.middleware_cost``; this is what it costs among 16 threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

from bench.measure import measure_drain
from bench.run import BARE, _migrate, _postgres_database, _slug, _stack_middleware
from bench.systems import Dramatiq, WorkerSettings
from ops.worker_profiles import SHORT_JOBS

FULL = "full"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stacks", nargs="+", metavar="STACK", help="middleware left out, comma-separated; or 'full'")
    parser.add_argument("--jobs", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args(argv)
    if args.jobs < 1_000 or args.rounds < 1:
        parser.error("--jobs must be at least 1000 and --rounds at least 1")
    settings = WorkerSettings(processes=SHORT_JOBS.workers, threads=SHORT_JOBS.threads, prefetch=SHORT_JOBS.prefetch)
    postgres = _postgres_database() if args.database == "postgresql" else nullcontext(None)
    with tempfile.TemporaryDirectory(prefix="bench-ablation-") as scratch_name, postgres as postgres_url:
        scratch = Path(scratch_name)
        database_url = postgres_url or f"sqlite:///{scratch / 'bench.sqlite3'}"
        bare = Dramatiq(BARE, "bench.bare_actors", scratch, settings=settings)
        stacks = [
            Dramatiq(
                name,
                "bench.stack_actors",
                scratch,
                database_url=database_url,
                settings=settings,
                without=() if name == FULL else tuple(name.split(",")),
            )
            for name in dict.fromkeys(args.stacks)
        ]
        _migrate(stacks[0])
        known = set(_stack_middleware(stacks[0]))
        unknown = sorted({name for stack in stacks for name in stack.without} - known)
        if unknown:
            parser.error(f"not in the stack: {', '.join(unknown)} (the stack: {', '.join(sorted(known))})")
        rates: dict[str, list[float]] = {system.name: [] for system in [bare, *stacks]}
        try:
            for round_number in range(args.rounds):
                for system in [bare, *stacks]:
                    log = scratch / f"{_slug(system.name)}-{round_number}.log"
                    rates[system.name].append(_drain(system, args.jobs, log))
                    print(
                        f"round {round_number + 1}: {system.name:<32} {rates[system.name][-1]:7.0f}/s",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            for system in [bare, *stacks]:
                system.cleanup()
    baseline = statistics.median(rates[BARE])
    print(
        f"{args.jobs} no-op jobs, {args.rounds} rounds, {settings.processes} x {settings.threads}, "
        f"prefetch {settings.prefetch}, {args.database}; median (min-max), vs bare Dramatiq"
    )
    for name, values in rates.items():
        label = name if name in (BARE, FULL) else f"without {name}"
        median = statistics.median(values)
        print(f"  {label:<48} {median:7.0f}/s ({min(values):.0f}-{max(values):.0f})  {median / baseline:5.2f}")
    return 0


def _drain(system: Dramatiq, jobs: int, log: Path) -> float:
    system.renew()
    system.enqueue("noop", jobs, bulk=True)
    workers = system.start(log=log)
    try:
        # Timed from before boot: the 90 % mark leaves boot out, and a fast drain cannot end unseen.
        drain = measure_drain(system.outstanding, jobs, timeout_s=max(120, jobs / 50), check=workers.raise_if_exited)
        return drain.rate
    finally:
        workers.stop()
        system.cleanup()


if __name__ == "__main__":
    sys.exit(main())
