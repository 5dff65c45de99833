"""A job stuck in C code past its time limit plus HARD_LIMIT_GRACE_MS has its worker killed and
replaced; its message runs again from its checkpoint, and the other workers keep serving.

Under ``python -m ops workers`` the slot's dramatiq master stops and its supervisor starts the slot
again; a plain ``dramatiq`` master replaces its processes itself (``test_worker_recycling``).

Real ``python -m ops workers`` (one dramatiq master per worker process), real brokers.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.acceptance.test_supervisor import children
from tests.harness import run_python, start_ops_workers, wait_until

TIME_LIMIT_S = 1.0  # tests.chaos_actors.stuck_in_c_once's
GRACE_MS = 1_000
#: The Redis stack's liveness window (REDIS_HEARTBEAT_TIMEOUT_MS), after which a dead worker's message comes back.
LIVENESS_WINDOW_S = 4.0


def starts(marker: Path) -> list[list[str]]:
    return (
        [line.split() for line in marker.read_text().splitlines() if line.startswith("start")]
        if marker.exists()
        else []
    )


@pytest.mark.parametrize(
    ("broker_env", "database_url"), [("redis", "sqlite"), ("rabbitmq", "postgresql")], indirect=True
)
def test_a_job_stuck_in_c_code_has_its_worker_killed_and_runs_again(
    broker_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    env = {**broker_env, "DATABASE_URL": database_url, "HARD_LIMIT_GRACE_MS": str(GRACE_MS)}
    log_path = tmp_path / "supervisor.log"
    with log_path.open("wb") as log:
        supervisor = start_ops_workers(
            env, "--workers", "2", "--queues", "chaos", "--modules", "tests.chaos_actors", log=log
        )
        try:
            masters = wait_until(
                lambda: len(children(supervisor.pid)) == 2 and children(supervisor.pid),
                timeout_s=30,
                what="two dramatiq masters",
            )
            wait_until(
                lambda: log_path.read_bytes().count(b"Worker process is ready for action") >= 2,
                timeout_s=60,
                what="both workers to boot",
            )
            workers_before = {master: _worker_of(master) for master in masters}

            marker = tmp_path / "marker"
            sent = run_python(
                env, f"from tests.chaos_actors import stuck_in_c_once; stuck_in_c_once.send({str(marker)!r})"
            )
            assert sent.returncode == 0, sent.stderr
            [[_, stuck_pid, position]] = wait_until(lambda: starts(marker), timeout_s=30, what="the job to start")
            assert position == "None"
            wait_until(
                lambda: not Path(f"/proc/{stuck_pid}").exists(),
                timeout_s=TIME_LIMIT_S + GRACE_MS / 1000 + 3,
                what="the stuck worker process to be killed",
                interval_s=0.05,
            )
            # Its message comes back (at once on RabbitMQ; within the liveness window on Redis) and resumes.
            wait_until(
                lambda: "done" in marker.read_text(), timeout_s=LIVENESS_WINDOW_S + 30, what="the job to run again"
            )
            [_, second] = starts(marker)
            assert second[1] != stuck_pid and second[2] == "0", "a new process resumed from the checkpoint"

            stuck_master = next(master for master, worker in workers_before.items() if worker == int(stuck_pid))
            sibling = next(master for master in masters if master != stuck_master)
            assert _worker_of(sibling) == workers_before[sibling], "the other worker kept serving"
            after = wait_until(
                lambda: (now := children(supervisor.pid)) and stuck_master not in now and len(now) == 2 and now,
                timeout_s=30,
                what="the stuck worker's slot to be started again",
            )
            assert sibling in after, "only its slot was replaced"
            assert supervisor.poll() is None
        finally:
            os.kill(supervisor.pid, signal.SIGTERM)
            supervisor.wait(timeout=60)
    output = log_path.read_text(errors="replace")
    assert f"Worker process {stuck_pid} still runs message" in output, output
    assert "past its time limit plus HARD_LIMIT_GRACE_MS (1000 ms)" in output
    assert (
        f"(pid {stuck_master}) stopped to be replaced (a job ran past its time limit plus HARD_LIMIT_GRACE_MS" in output
    )
    assert "restarting it" not in output, "no crash for the supervisor: the worker asked to be replaced"
    assert "exited unexpectedly" not in output, "the master stopped its processes, not took the kill for a crash"


def _worker_of(master: int) -> int | None:
    """The dramatiq master's worker process: the child that is not one of its forks (they are started last)."""
    kids = children(master)
    return kids[0] if kids else None
