"""A tiny run of the benchmark (bench/run.py): bare Dramatiq and the full stack drain, and the report says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import ablation, cpu_budget
from bench.report import render
from bench.run import BARE, SQLITE, Results, Sizes, _drain_round, _machine, _migrate, _stack_middleware
from bench.systems import Dramatiq, WorkerSettings


def test_a_tiny_run_drains_every_job_and_reports_each_system_against_bare_dramatiq(tmp_path: Path) -> None:
    settings = WorkerSettings(processes=1, threads=4, prefetch=16)
    sizes = Sizes(rounds=1, noop_jobs=300, io_jobs=0, enqueue_jobs=300, segments=0, recoveries=0)
    systems = [
        Dramatiq(BARE, "bench.bare_actors", tmp_path, settings=settings),
        Dramatiq(
            SQLITE,
            "bench.stack_actors",
            tmp_path,
            database_url=f"sqlite:///{tmp_path / 'b.sqlite3'}",
            settings=settings,
        ),
    ]
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
    report = render(
        results,
        settings=settings,
        sizes=sizes,
        machine=_machine(),
        load=((0, 0, 0), (0, 0, 0)),
        peer_versions={},
        stack=["JobStatus"],
        seconds=1,
        command="smoke",
    )
    [bare_row] = [line for line in report.splitlines() if line.startswith(f"| {BARE} |")]
    assert "| 1.00 |" in bare_row
    assert f"| {SQLITE}: no-op drain >= 0.8 x bare Dramatiq |" in report


def test_an_ablation_leaves_out_the_named_middleware_and_refuses_a_name_not_in_the_stack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = Dramatiq("full", "bench.stack_actors", tmp_path, database_url=f"sqlite:///{tmp_path / 'b.sqlite3'}")
    ablated = Dramatiq(
        "JobStatus,JobLogs",
        "bench.stack_actors",
        tmp_path,
        database_url=full.database_url,
        without=("JobStatus", "JobLogs"),
    )
    assert {"JobStatus", "JobLogs"} <= set(_stack_middleware(full))
    assert set(_stack_middleware(full)) - set(_stack_middleware(ablated)) == {"JobStatus", "JobLogs"}

    with pytest.raises(SystemExit) as exit_info:
        ablation.main(["--jobs", "1000", "--rounds", "1", "full", "JobStatus,JobLog"])
    assert exit_info.value.code == 2
    assert "not in the stack: JobLog (the stack: " in capsys.readouterr().err


def test_the_cpu_budget_drains_bare_dramatiq_with_each_burn_and_compares_it_with_none(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cpu_budget.main(["--jobs", "1000", "--rounds", "1", "100"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  burn")]
    assert [row[1] for row in rows] == ["0", "100"], "the run without a burn is always there, as the baseline"
    assert rows[0][5] == "1.00" and rows[0][-3:] == ["implied", "+0", "us"]

    with pytest.raises(SystemExit) as exit_info:
        cpu_budget.main(["--jobs", "1000", "-5"])
    assert exit_info.value.code == 2
