"""A tiny run of the benchmark (bench/run.py): bare Dramatiq and the full stack drain, and the report says so."""

from __future__ import annotations

from pathlib import Path

from bench.report import render
from bench.run import BARE, SQLITE, Results, Sizes, _drain_round, _machine, _migrate
from bench.systems import Dramatiq, WorkerSettings


def test_a_tiny_run_drains_every_job_and_reports_each_system_against_bare_dramatiq(tmp_path: Path) -> None:
    settings = WorkerSettings(processes=1, threads=4, prefetch=16)
    sizes = Sizes(rounds=1, noop_jobs=300, io_jobs=0, enqueue_jobs=300, segments=0, recoveries=0)
    systems = [
        Dramatiq(BARE, "bench.bare_actors", tmp_path, settings=settings),
        Dramatiq(SQLITE, "bench.stack_actors", tmp_path, database_url=f"sqlite:///{tmp_path / 'b.sqlite3'}",
                 settings=settings),
    ]  # fmt: skip
    _migrate(systems[1])
    results = Results()
    try:
        for system in systems:
            _drain_round(system, "noop", sizes.noop_jobs, sizes, results, tmp_path, 0)
    finally:
        for system in systems:
            system.cleanup()

    for name in (BARE, SQLITE):
        assert results.median("noop.drain", name) > 0
        assert results.median("noop.enqueue", name) > 0
        assert results.median("noop.rss", name) > 20, "the workers' peak RSS in MiB was read"
    report = render(results, settings=settings, sizes=sizes, machine=_machine(), load=((0, 0, 0), (0, 0, 0)),
                    peer_versions={}, stack=["JobStatus"], seconds=1, command="smoke")  # fmt: skip
    [bare_row] = [line for line in report.splitlines() if line.startswith(f"| {BARE} |")]
    assert "| 1.00 |" in bare_row
    assert f"| {SQLITE}: no-op drain >= 0.8 x bare Dramatiq |" in report
