"""Two real ``dramatiq actors`` commands serving the same queues, with a 3 s liveness window on
Redis: a job wrongly taken for dead, or rightly handed back, is picked up by the other one."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import WorkerProcess

WINDOW_MS = 3_000


@pytest.fixture
def two_workers_env(broker_env: dict[str, str], database_url: str) -> dict[str, str]:
    return {
        **broker_env,
        "DATABASE_URL": database_url,
        "REDIS_HEARTBEAT_TIMEOUT_MS": str(WINDOW_MS),
        "REDIS_MAINTENANCE_CHANCE": "0",
    }


@pytest.fixture
def two_workers(two_workers_env: dict[str, str], tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    workers = [
        WorkerProcess(two_workers_env, log_path=tmp_path / f"worker-{n}.log", modules=("tests.chaos_actors",))
        for n in range(2)
    ]
    for worker in workers:
        worker.wait_ready()
    yield workers
    for worker in workers:
        if worker.process.poll() is None:
            os.killpg(worker.process.pid, signal.SIGCONT)  # a test may have frozen it
        worker.stop()
