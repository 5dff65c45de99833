"""A real worker's heartbeat, liveness probe and `python -m ops health`, before and after a SIGKILL."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from middleware.storage.database import Database
from middleware.worker_health import list_worker_heartbeats
from tests.harness import WorkerProcess, free_port, run_ops, run_python, wait_until

STALE_AFTER_MS = 3_000  # generous: on a loaded 2-core machine a 200 ms beat can slip by a second


@pytest.fixture
def env(broker_env: dict[str, str], database_url: str) -> dict[str, str]:
    return {
        **broker_env,
        "DATABASE_URL": database_url,
        "WORKER_HEARTBEAT_INTERVAL_MS": "200",
        "WORKER_STALE_AFTER_MS": str(STALE_AFTER_MS),
        "WORKER_HEALTH_PORT": str(free_port()),
    }


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(
        env, queues=["health"], threads=2, log_path=tmp_path / "worker.log", modules=("tests.health_actors",)
    )
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


@pytest.mark.parametrize(
    ("broker_env", "database_url"), [("redis", "sqlite"), ("rabbitmq", "postgresql")], indirect=True
)
def test_a_workers_heartbeat_shows_its_stats_until_it_is_killed_and_health_names_it(
    env: dict[str, str], worker: WorkerProcess, tmp_path: Path
) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{env['WORKER_HEALTH_PORT']}/healthz", timeout=5) as response:
        assert (response.status, json.loads(response.read())["alive"]) == (200, True)
    database = Database(env["DATABASE_URL"])  # polled here; the commands are run once each state is reached

    def heartbeat(where: Callable[[dict[str, Any]], bool]) -> Callable[[], dict[str, Any] | None]:
        return lambda: next((row for row in list_worker_heartbeats(database) if where(row)), None)

    release = tmp_path / "release"
    send(env, f"succeed.send(); succeed.send(); fail_fatally.send(); half_done_until.send({str(release)!r})")
    half_done = heartbeat(
        lambda row: row["processed"] == 3 and [job["progress"] for job in row["current_jobs"]] == [0.5]
    )
    wait_until(half_done, timeout_s=30, what="the heartbeat with 3 jobs done and one half done")

    code, report = health(env)
    assert code == 0, "one failure in four jobs is too few to judge a failure rate by"
    [row] = report["workers"]
    assert (row["processed"], row["failed"], row["in_progress"], row["queues"], row["version"]) == (
        3,
        1,
        1,
        ["health"],
        "0.1.0",
    )
    assert row["current_job"] == {
        "message_id": row["current_jobs"][0]["message_id"],
        "actor_name": "half_done_until",
        "progress": 0.5,
    }
    assert (row["healthy"], row["pid"], row["last_job_finished_at"] is not None) == (True, worker.children()[0], True)

    release.touch()
    wait_until(
        heartbeat(lambda row: row["processed"] == 4 and not row["current_jobs"]),
        timeout_s=30,
        what="the fourth job counted",
    )
    table = run_ops(env, "queues").stdout.splitlines()
    assert table[0].split() == [
        "QUEUE_NAME",
        "WAITING",
        "DELAYED",
        "IN_PROGRESS",
        "DEAD",
        "OLDEST_WAITING_AGE_S",
        "UNRESOLVED",
    ]
    assert [line.split() for line in table if line.startswith("health ")] == [["health", "0", "0", "0", "1", "-", "1"]]

    worker.kill_worker_child()
    send(env, "succeed.send()")  # and nothing serves its queue any more
    stale = timedelta(milliseconds=STALE_AFTER_MS)
    wait_until(
        heartbeat(lambda row: datetime.now(UTC) - row["heartbeat_at"] > stale),
        timeout_s=30,
        what="the killed worker's heartbeat to go stale",
    )
    result = run_ops(env, "health")
    assert result.returncode == 1 and len(result.stdout.splitlines()) == 1, result
    assert result.stdout.startswith(f"worker {row['worker_id']}: no heartbeat for ")
    assert result.stdout.endswith(
        f"(stale after {STALE_AFTER_MS / 1000:g} s); queue health: 1 message(s) wait and no live worker serves it\n"
    )
    database.dispose()
