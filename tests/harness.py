"""Helpers for tests that run the real thing: worker processes, app processes, polling."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TypeVar

import redis
from sqlalchemy import create_engine, text

from actors.settings import variable_names

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")

REDIS_TEST_URL = "redis://127.0.0.1:6379/13"  # this suite's own database number
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672"


def wait_until(predicate: Callable[[], T], *, timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def free_port() -> int:
    """A loopback port nothing listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_env(overrides: Mapping[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _SYSTEM_SETTINGS}
    # How long an idle Dramatiq worker thread waits for a message (default 1 s), and so how long
    # a stopping worker waits for its threads: it only delays each test's teardown.
    env["dramatiq_worker_timeout"] = "100"
    env.update(overrides)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    return env


#: Every variable the settings read: a test's process gets only those the test sets.
_SYSTEM_SETTINGS = set(variable_names())


def run_python(env: Mapping[str, str], code: str, *, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter, as an app process would."""
    return _run_interpreter(env, ["-c", code], timeout_s=timeout_s)


def run_ops(env: Mapping[str, str], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return _run_interpreter(env, ["-m", "ops", *args], timeout_s=timeout_s)


def start_ops_workers(env: Mapping[str, str], *args: str, log: IO[bytes]) -> subprocess.Popen:
    """``python -m ops workers ARGS`` in its own process group, its output (and its workers') to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "ops", "workers", *args],
        env=process_env(env),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _run_interpreter(env: Mapping[str, str], arguments: list[str], *, timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *arguments],
        env=process_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


class WorkerProcess:
    """A real ``dramatiq actors`` command in its own process group."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        queues: list[str] | None = None,
        processes: int = 1,
        threads: int = 1,
        log_path: Path,
        modules: tuple[str, ...] = (),
    ) -> None:
        command = [str(VENV_BIN / "dramatiq"), "actors", *modules]
        command += ["--processes", str(processes), "--threads", str(threads)]
        if queues:
            command += ["--queues", *queues]
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            command,
            env=process_env(env),
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def children(self) -> list[int]:
        """PIDs of the worker processes the dramatiq master forked."""
        try:
            raw = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except FileNotFoundError:
            return []
        return [int(pid) for pid in raw.split()]

    def wait_ready(self, *, timeout_s: float = 60) -> None:
        wait_until(
            lambda: (
                b"Worker process is ready for action" in self.log_path.read_bytes() or self.process.poll() is not None
            ),
            timeout_s=timeout_s,
            what="the worker to boot",
        )
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log()}")

    def kill_worker_child(self) -> int:
        """SIGKILL the worker process (as the OOM killer would); returns its pid."""
        children = wait_until(self.children, timeout_s=10, what="the worker's child process")
        os.kill(children[0], signal.SIGKILL)
        return children[0]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict]:
        """The JSON job events the worker wrote to its standard error."""
        return [json.loads(line[line.index("{") :]) for line in self.log().splitlines() if '{"event":' in line]

    def stop(self, *, timeout_s: float = 30) -> int | None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)  # the master only: it passes it on once
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
        return self.process.returncode


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_TEST_URL)


def delete_redis_namespace(namespace: str) -> None:
    """Remove every key this test wrote (never FLUSHALL or FLUSHDB: others share the server)."""
    client = redis_client()
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)


def create_postgres_database(name: str, *, template: str | None = None) -> str:
    """An empty database, or a copy of ``template`` (a file copy: far faster than migrating)."""
    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        copy = f' TEMPLATE "{template}"' if template else ""
        connection.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    engine.dispose()
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_postgres_database(name: str) -> None:
    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def create_rabbitmq_vhost(name: str) -> str:
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], check=True, capture_output=True
    )
    return f"{RABBITMQ_URL}/{name}"


def delete_rabbitmq_vhost(name: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], check=False, capture_output=True)
