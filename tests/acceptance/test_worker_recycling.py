"""Worker recycling under a steady load: WORKER_MAX_JOBS and WORKER_MAX_RSS_MB replace worker
processes, and no job is lost, no row is stored twice, nothing is dead-lettered.

Real ``python -m ops workers`` on the real Redis broker; the jobs (``tests.chaos_actors``) commit
one row per step with their checkpoint, and each row names the process that wrote it.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from actors.tables import transcript_segments
from middleware.job_status import COMPLETED
from middleware.storage.tables import dead_letters, job_status
from tests.harness import WorkerProcess, run_python, start_ops_workers, wait_until

JOBS, STEPS = 12, 3


def run_load(env: dict[str, str], tmp_path: Path, send: str, *, supervised: bool = True) -> tuple[list, str]:
    """Start one worker (under ``python -m ops workers``, or a plain ``dramatiq`` command), send the jobs,
    wait for all of them; returns the rows and the log."""
    log_path = tmp_path / "workers.log"
    with log_path.open("wb") as log:
        if supervised:
            supervisor = start_ops_workers(
                env, "--workers", "1", "--queues", "chaos", "--modules", "tests.chaos_actors", log=log
            )
        else:
            plain = WorkerProcess(env, queues=["chaos"], modules=("tests.chaos_actors",), log_path=log_path)
            supervisor = plain.process
        engine = create_engine(env["DATABASE_URL"])
        try:
            wait_until(
                lambda: b"Worker process is ready for action" in log_path.read_bytes(), timeout_s=60, what="boot"
            )
            sent = run_python(env, f"from tests.chaos_actors import *\nfor job in range({JOBS}):\n    {send}")
            assert sent.returncode == 0, sent.stderr

            def completed() -> int:
                with engine.connect() as connection:
                    query = select(func.count()).select_from(job_status).where(job_status.c.status == COMPLETED)
                    return connection.scalar(query)

            wait_until(lambda: completed() == JOBS, timeout_s=120, what=f"{JOBS} jobs to complete", interval_s=0.2)
            with engine.connect() as connection:
                rows = list(connection.execute(select(transcript_segments)))
                assert list(connection.execute(select(dead_letters))) == []
            assert supervisor.poll() is None, "the command itself never stopped"
        finally:
            if supervised:
                os.kill(supervisor.pid, signal.SIGTERM)
                supervisor.wait(timeout=60)
            else:
                plain.stop(timeout_s=60)
            engine.dispose()
    return rows, log_path.read_text(errors="replace")


def assert_every_step_stored_once(rows: list) -> None:
    stored = sorted((row.meeting_id, row.idx) for row in rows)
    assert stored == sorted((f"job-{job}", step) for job in range(JOBS) for step in range(STEPS))


@pytest.mark.parametrize(("broker_env", "database_url"), [("redis", "sqlite")], indirect=True)
def test_a_worker_is_replaced_after_its_max_jobs_and_loses_nothing(
    broker_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    env = {**broker_env, "DATABASE_URL": database_url, "WORKER_MAX_JOBS": "4"}
    rows, log = run_load(env, tmp_path, f"checkpointed_rows.send(f'job-{{job}}', {STEPS}, 0.02)")
    assert_every_step_stored_once(rows)
    recycled = re.findall(r"Worker process (\d+) is recycled: it has run 4 jobs \(WORKER_MAX_JOBS=4\)", log)
    assert len(recycled) >= 2, log
    writers = {row.text for row in rows}
    assert len(writers) >= 3 and set(recycled) <= writers, "the jobs ran in successive processes"
    assert "restarting it" not in log, "a recycled process is no crash for the supervisor"
    # Each recycle is a replacement for the supervisor (the last may still be under way when the test stops it).
    assert len(recycled) - 1 <= log.count("stopped to be replaced (recycled: it has run 4 jobs") <= len(recycled)


@pytest.mark.parametrize(("broker_env", "database_url"), [("rabbitmq", "postgresql")], indirect=True)
def test_a_plain_dramatiq_command_replaces_its_own_process_after_its_max_jobs(
    broker_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    env = {**broker_env, "DATABASE_URL": database_url, "WORKER_MAX_JOBS": "4"}
    rows, log = run_load(env, tmp_path, f"checkpointed_rows.send(f'job-{{job}}', {STEPS}, 0.02)", supervised=False)
    assert_every_step_stored_once(rows)
    recycled = re.findall(r"Worker process (\d+) is recycled: it has run 4 jobs", log)
    assert len(recycled) >= 2, log
    assert log.count("Sending signal 'SIGHUP' to subprocesses") == len(recycled), "the master reloaded itself"
    assert "exited unexpectedly" not in log


@pytest.mark.parametrize(("broker_env", "database_url"), [("redis", "sqlite")], indirect=True)
def test_a_worker_over_its_max_rss_is_replaced_mid_job_and_the_job_resumes(
    broker_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    # The first job (run first: one thread, a prefetch of 1) keeps 200 MB per 2 s step for good: from
    # about 90 MB at boot, a process passes the cap as a step starts, the memory thread sees it within a
    # second, and the graceful stop (under a second) comes well inside the step: the job is stopped mid-way
    # and resumes in the next process. The other jobs keep 5 MB per short step.
    env = {**broker_env, "DATABASE_URL": database_url, "WORKER_MAX_RSS_MB": "400"}
    rows, log = run_load(
        env, tmp_path, f"growing_rows.send(f'job-{{job}}', {STEPS}, 2.0 if job == 0 else 0.1, 200 if job == 0 else 5)"
    )
    assert_every_step_stored_once(rows)
    recycled = re.findall(
        r"Worker process (\d+) is recycled: its resident memory is (\d+) MB \(WORKER_MAX_RSS_MB=400\)", log
    )
    assert len(recycled) >= 2, log
    assert all(int(size) > 400 for _, size in recycled)
    assert '"event":"checkpoint.resumed"' in log, "a job stopped mid-way by a recycle resumed from its checkpoint"


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_a_max_rss_below_the_size_at_boot_stops_the_worker_with_exit_code_2(
    broker_env: dict[str, str], sqlite_url: str, tmp_path: Path
) -> None:
    worker = WorkerProcess(
        {**broker_env, "DATABASE_URL": sqlite_url, "WORKER_MAX_RSS_MB": "10"}, log_path=tmp_path / "worker.log"
    )
    assert worker.process.wait(timeout=60) == 2
    assert "WORKER_MAX_RSS_MB=10 is below this worker process's size at boot" in worker.log()
    worker.stop()
