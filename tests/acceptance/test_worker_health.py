"""A real worker's heartbeat, liveness probe and `python -m ops health`, before and after a SIGKILL."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import WorkerProcess, run_ops, run_python, wait_until

STALE_AFTER_MS = 1_500


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def env(broker_env: dict[str, str], database_url: str) -> dict[str, str]:
    return {**broker_env, "DATABASE_URL": database_url, "WORKER_HEARTBEAT_INTERVAL_MS": "200",
            "WORKER_STALE_AFTER_MS": str(STALE_AFTER_MS), "WORKER_HEALTH_PORT": str(free_port())}  # fmt: skip


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(env, queues=["health"], threads=2, log_path=tmp_path / "worker.log",
                           modules=("tests.health_actors",))  # fmt: skip
    worker.wait_ready()
    yield worker
    worker.stop()


def health(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = run_ops(env, "health", "--json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def send(env: dict[str, str], calls: str) -> None:
    result = run_python(env, f"from tests.health_actors import *; {calls}")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("broker_env", "database_url"), [("redis", "sqlite")], indirect=True)
def test_a_workers_heartbeat_shows_its_stats_until_it_is_killed_and_health_names_it(
    env: dict[str, str], worker: WorkerProcess, tmp_path: Path
) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{env['WORKER_HEALTH_PORT']}/healthz", timeout=5) as response:
        assert (response.status, json.loads(response.read())["alive"]) == (200, True)

    release = tmp_path / "release"
    send(env, f"succeed.send(); succeed.send(); fail_fatally.send(); half_done_until.send({str(release)!r})")

    def busy_worker() -> tuple[int, dict[str, Any]] | None:
        code, report = health(env)
        [row] = report["workers"] or [{"processed": None}]
        return (code, row) if row["processed"] == 3 and (row["current_job"] or {}).get("progress") == 0.5 else None

    code, row = wait_until(busy_worker, timeout_s=30, what="the heartbeat with 3 jobs done and one half done")
    assert code == 0, "one failure in four jobs is too few to judge a failure rate by"
    assert (row["failed"], row["in_progress"], row["queues"], row["version"]) == (1, 1, ["health"], "0.1.0")
    assert row["current_job"]["actor_name"] == "half_done_until" and row["last_job_finished_at"] is not None
    assert (row["healthy"], row["pid"]) == (True, worker.children()[0])

    release.touch()
    wait_until(lambda: health(env)[1]["workers"][0]["processed"] == 4, timeout_s=30, what="the fourth job counted")
    table = run_ops(env, "queues")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split() == [
        "QUEUE_NAME", "WAITING", "DELAYED", "IN_PROGRESS", "DEAD", "OLDEST_WAITING_AGE_S", "UNRESOLVED",
    ]  # fmt: skip
    assert table.stdout.splitlines()[1].split() == ["health", "0", "0", "0", "1", "-", "1"]

    worker.kill_worker_child()
    send(env, "succeed.send()")  # now nothing serves its queue
    result = wait_until(
        lambda: (result := run_ops(env, "health")).returncode == 1 and result,
        timeout_s=30,
        what="ops health to report the killed worker",
    )
    assert isinstance(result, subprocess.CompletedProcess) and len(result.stdout.splitlines()) == 1
    assert result.stdout.startswith(f"worker {row['worker_id']}: no heartbeat for ")
    assert f"(stale after {STALE_AFTER_MS / 1000:g} s); queue health: 1 message(s) wait and no live worker" in (
        result.stdout
    )
