"""The boot warning about a Redis broker that would lose waiting jobs on a restart, against real
redis-server processes started with each persistence setting."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from middleware.redis_durability import RedisDurability
from tests.harness import WorkerProcess, free_port, wait_until

LOGGER = "middleware.redis_durability.RedisDurability"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Starts a redis-server of the test's own with the given settings; returns its URL."""
    processes: list[subprocess.Popen] = []

    def start(*settings: str) -> str:
        port = free_port()
        directory = tmp_path / str(port)
        directory.mkdir()
        processes.append(
            subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), *settings],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        client = redis.Redis(port=port)
        wait_until(lambda: _pings(client), timeout_s=30, what="the test's redis-server to answer")
        client.close()
        return f"redis://127.0.0.1:{port}/0"

    yield start
    for process in processes:
        process.kill()
        process.wait()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def boot_log(url: str, caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    broker = RedisBroker(url=url)
    try:
        with caplog.at_level(logging.INFO, logger=LOGGER):
            RedisDurability().after_process_boot(broker)
    finally:
        broker.close()
    return [(record.levelno, record.getMessage()) for record in caplog.records if record.name == LOGGER]


def test_a_redis_that_persists_nothing_is_named_at_boot_with_the_fix(redis_server, caplog) -> None:
    [(level, line)] = boot_log(redis_server("--appendonly", "no", "--save", ""), caplog)
    assert level == logging.WARNING
    assert "persists nothing (no append-only file, no snapshots)" in line
    assert "a Redis restart loses every job waiting in its queues" in line
    assert "set appendonly yes" in line


def test_snapshots_alone_lose_the_jobs_sent_since_the_last_one(redis_server, caplog) -> None:
    [(level, line)] = boot_log(redis_server("--appendonly", "no", "--save", "60 1"), caplog)
    assert level == logging.WARNING
    assert "only snapshots (save '60 1')" in line and "every job sent since the last snapshot" in line


def test_an_append_only_file_is_enough(redis_server, caplog) -> None:
    assert boot_log(redis_server("--appendonly", "yes", "--save", ""), caplog) == []


def test_a_redis_that_refuses_config_gets_a_reminder_not_a_failure(redis_server, caplog) -> None:
    # As managed services do: CONFIG renamed away.
    [(level, line)] = boot_log(redis_server("--rename-command", "CONFIG", ""), caplog)
    assert level == logging.INFO
    assert "Could not read the Redis broker's persistence settings" in line
    assert "make sure it keeps an append-only file" in line


def test_a_worker_on_such_a_redis_says_so_once_per_process_as_it_boots(
    redis_server, sqlite_url: str, tmp_path: Path
) -> None:
    env = {
        "BROKER_URL": redis_server("--appendonly", "no", "--save", ""),
        "DATABASE_URL": sqlite_url,
        "STATE_DIR": str(tmp_path / "state"),
    }
    worker = WorkerProcess(env, processes=2, threads=1, log_path=tmp_path / "worker.log")
    try:
        worker.wait_ready()
        wait_until(
            lambda: worker.log().count("Worker process is ready for action") == 2,
            timeout_s=60,
            what="both worker processes to boot",
        )
    finally:
        worker.stop()
    warnings = [line for line in worker.log().splitlines() if "The Redis broker persists nothing" in line]
    assert len(warnings) == 2, worker.log()
    assert "WARNING" in warnings[0] and "set appendonly yes" in warnings[0]
