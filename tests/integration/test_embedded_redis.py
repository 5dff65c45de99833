"""The embedded default broker: one real Redis server per state directory, shared by processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from actors.embedded_redis import EmbeddedRedisError, ensure_embedded_redis, socket_path, stop_embedded_redis
from tests.harness import ROOT


@pytest.fixture
def state_dir(tmp_path: Path):
    yield tmp_path
    stop_embedded_redis(tmp_path)


def test_processes_booting_at_once_share_one_server(state_dir: Path) -> None:
    code = (
        "import os, sys, redis\n"
        "from pathlib import Path\n"
        "from actors.embedded_redis import ensure_embedded_redis\n"
        "url = ensure_embedded_redis(Path(sys.argv[1]))\n"
        "print(url, redis.Redis.from_url(url).info('server')['process_id'])\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(state_dir)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outputs = [process.communicate(timeout=60) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err for _, err in outputs]
    answers = {out.strip() for out, _ in outputs}
    assert len(answers) == 1, f"every process must attach to the same server, got {answers}"
    assert answers.pop().startswith(f"unix://{socket_path(state_dir)} ")


def test_the_server_keeps_data_across_a_restart(state_dir: Path) -> None:
    url = ensure_embedded_redis(state_dir)
    redis.Redis.from_url(url).rpush("queued-jobs", "job-1")
    assert stop_embedded_redis(state_dir) is True
    assert not socket_path(state_dir).exists()

    url = ensure_embedded_redis(state_dir)
    assert redis.Redis.from_url(url).lrange("queued-jobs", 0, -1) == [b"job-1"]


def test_stopping_when_nothing_runs_says_so(tmp_path: Path) -> None:
    assert stop_embedded_redis(tmp_path) is False


def test_a_state_dir_too_long_for_a_unix_socket_is_refused_with_advice(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedRedisError, match="set STATE_DIR to a shorter directory"):
        ensure_embedded_redis(tmp_path / ("x" * 120))
