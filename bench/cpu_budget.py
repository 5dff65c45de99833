"""How much CPU per job the stack may add and still drain at a given share of bare Dramatiq.

    .venv/bin/python -m bench.cpu_budget [--jobs 30000] [--rounds 3] [BURN_US ...]   # default 0 25 50 100 200

Drains ``--jobs`` no-op jobs on bare Dramatiq plus a middleware that spends BURN_US of pure
Python CPU per job (``bench/burn_actors.py``), for each BURN_US in turn, alternating round by
round, with the short-job worker settings. Prints each one's median drain rate, min-max, its ratio
to the run without a burn, and the worker CPU per job that ratio implies if the drain is CPU-bound
(``processes / rate``, over the run without a burn). If the implied extra cost tracks BURN_US, the
drain is CPU-bound and any middleware's per-job CPU costs the drain exactly that much; a target
such as 0.8 x bare then becomes a budget in microseconds per job for all the middleware together.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.ablation import _drain
from bench.systems import Dramatiq, WorkerSettings
from ops.worker_profiles import SHORT_JOBS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("burns", nargs="*", type=int, metavar="BURN_US", default=[0, 25, 50, 100, 200])
    parser.add_argument("--jobs", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.jobs < 1_000 or args.rounds < 1:
        parser.error("--jobs must be at least 1000 and --rounds at least 1")
    if any(burn < 0 for burn in args.burns):
        parser.error("a BURN_US is a number of microseconds, 0 or more")
    burns = sorted({0, *args.burns})  # the run without a burn is the baseline
    settings = WorkerSettings(processes=SHORT_JOBS.workers, threads=SHORT_JOBS.threads, prefetch=SHORT_JOBS.prefetch)
    with tempfile.TemporaryDirectory(prefix="bench-cpu-budget-") as scratch_name:
        scratch = Path(scratch_name)
        systems = {
            burn: Dramatiq(
                f"burn {burn} us",
                "bench.burn_actors",
                scratch,
                settings=settings,
                extra_env={"BENCH_BURN_US": str(burn)},
            )
            for burn in burns
        }
        rates: dict[int, list[float]] = {burn: [] for burn in burns}
        try:
            for round_number in range(args.rounds):
                for burn, system in systems.items():
                    rates[burn].append(_drain(system, args.jobs, scratch / f"burn-{burn}-{round_number}.log"))
                    print(
                        f"round {round_number + 1}: {system.name:<14} {rates[burn][-1]:7.0f}/s",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            for system in systems.values():
                system.cleanup()
    baseline = statistics.median(rates[0])
    print(
        f"{args.jobs} no-op jobs, {args.rounds} rounds, {settings.processes} x {settings.threads}, prefetch "
        f"{settings.prefetch}; median (min-max), vs no burn, and the extra worker CPU per job implied"
    )
    for burn, values in rates.items():
        median = statistics.median(values)
        implied_us = settings.processes * 1e6 * (1 / median - 1 / baseline)
        print(
            f"  burn {burn:>4} us  {median:7.0f}/s ({min(values):.0f}-{max(values):.0f})  {median / baseline:5.2f}"
            f"  implied {implied_us:+6.0f} us"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
