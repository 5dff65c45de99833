"""The systems the benchmark compares, each able to enqueue N jobs, start its workers and count what is left.

1. ``Dramatiq`` covers bare Dramatiq (``bench.bare_actors``) and the project's full stack
   (``bench.stack_actors``, on SQLite or PostgreSQL): real ``dramatiq`` commands, with the same
   processes, threads and prefetch.
2. ``Celery`` and ``Rq`` run the same no-op and sleeping jobs from ``bench/peers``, in their own
   virtual environment (``bench.peers.environment``), against the same Redis.

Every system works on its own key prefix in Redis database 14 and deletes its keys afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
REDIS_URL = "redis://127.0.0.1:6379/14"  # the benchmark's own database number (the tests use 13)

#: The work of each workload, per framework: (actor or task name, JSON arguments).
WORKLOADS = {"noop": ("noop", []), "io": ("sleep_ms", [10])}


@dataclass(frozen=True)
class WorkerSettings:
    processes: int = 2
    threads: int = 8
    #: Messages each Dramatiq consumer holds ahead of its threads (``dramatiq_queue_prefetch``); 0: Dramatiq's default.
    prefetch: int = 0


@dataclass
class Workers:
    """Running worker commands; ``worker_pids`` finds the processes that do the work."""

    processes: list[subprocess.Popen]
    logs: list[Path]
    worker_pids: Callable[[], list[int]]
    ready_marker: bytes | None = None
    ready_count: int = 0

    def wait_ready(self, *, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.raise_if_exited()
            if self.ready_marker is None or self._ready_lines() >= self.ready_count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not boot within {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def raise_if_exited(self) -> None:
        exited = [process for process in self.processes if process.poll() is not None]
        if exited:
            raise RuntimeError(f"a worker command exited with {exited[0].returncode}:\n{self.log_tail()}")

    def _ready_lines(self) -> int:
        return sum(log.read_bytes().count(self.ready_marker) for log in self.logs if log.exists())

    def log_tail(self) -> str:
        return "\n".join(log.read_text(errors="replace")[-3000:] for log in self.logs if log.exists())

    def peak_rss_mb(self) -> float | None:
        """The largest peak resident set (VmHWM) among the worker processes, in MiB."""
        peaks = [_vm_hwm_kb(pid) for pid in self.worker_pids()]
        peaks = [peak for peak in peaks if peak is not None]
        return max(peaks) / 1024 if peaks else None

    def stop(self, *, timeout_s: float = 30) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def _vm_hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _spawn(command: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as output:
        return subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def base_env(overrides: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    env["PYTHONPATH"] = str(ROOT)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass
class Dramatiq:
    """Bare Dramatiq or the project's stack: ``module`` is ``bench.bare_actors`` or ``bench.stack_actors``."""

    name: str
    module: str
    scratch: Path
    database_url: str | None = None
    settings: WorkerSettings = field(default_factory=WorkerSettings)
    namespace: str = ""
    #: Middleware of the stack left out (``BENCH_WITHOUT``, read by ``bench/stack_actors.py``): an ablation.
    without: tuple[str, ...] = ()
    #: More environment for the workers (``BENCH_BURN_US``, read by ``bench/burn_actors.py``).
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        """A fresh key prefix, so each measurement starts on an empty queue."""
        self.cleanup()
        self.namespace = f"bench-{uuid.uuid4().hex[:8]}"

    @property
    def env(self) -> dict[str, str]:
        overrides = {"BROKER_URL": REDIS_URL, "REDIS_NAMESPACE": self.namespace, "STATE_DIR": str(self.scratch)}
        if self.database_url:
            overrides["DATABASE_URL"] = self.database_url
        if self.settings.prefetch:
            overrides["dramatiq_queue_prefetch"] = str(self.settings.prefetch)
        overrides["BENCH_WITHOUT"] = ",".join(self.without)
        return base_env({**overrides, **self.extra_env})

    def enqueue(self, workload: str, jobs: int, *, bulk: bool = False) -> float:
        actor, arguments = WORKLOADS[workload]
        return self.send(actor, arguments, jobs, bulk=bulk)

    def send(self, actor: str, arguments: list, jobs: int, *, bulk: bool = False) -> float:
        command = [
            sys.executable,
            "-m",
            "bench.enqueue",
            "--module",
            self.module,
            "--actor",
            actor,
            "--jobs",
            str(jobs),
            "--args",
            json.dumps(arguments),
        ] + (["--bulk"] if bulk else [])
        result = subprocess.run(command, env=self.env, cwd=ROOT, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{self.name}: enqueue failed:\n{result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])["rate"]

    def start(self, *, log: Path, processes: int | None = None, threads: int | None = None) -> Workers:
        processes = processes or self.settings.processes
        command = [
            str(VENV_BIN / "dramatiq"),
            self.module,
            "--processes",
            str(processes),
            "--threads",
            str(threads or self.settings.threads),
            "--queues",
            "bench",
        ]
        master = _spawn(command, env=self.env, log=log)
        return Workers([master], [log], lambda: children(master.pid), b"Worker process is ready for action", processes)

    def outstanding(self) -> int:
        """Messages enqueued and not yet acknowledged (an ack deletes the message from this hash)."""
        return _redis().hlen(f"{self.namespace}:bench.msgs")

    def cleanup(self) -> None:
        if self.namespace:
            _delete_keys(f"{self.namespace}:*")


_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(REDIS_URL)
    return _client


def _delete_keys(pattern: str) -> None:
    client = _redis()
    keys = list(client.scan_iter(match=pattern, count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


@dataclass
class Celery:
    """Celery 5 on the same Redis: ``processes`` worker commands of the threads pool, ``threads`` each."""

    name: str
    settings: WorkerSettings = field(default_factory=WorkerSettings)
    key_prefix: str = "bench-celery:"  # bench/peers/celery_app.py's KEY_PREFIX
    jobs: int = 0

    def renew(self) -> None:
        self.cleanup()

    def enqueue(self, workload: str, jobs: int, *, bulk: bool = False) -> float:
        self.jobs = jobs
        return _peer_enqueue("celery", workload, jobs)

    def start(self, *, log: Path) -> Workers:
        from bench.peers.environment import PEERS_VENV

        command = [
            str(PEERS_VENV / "bin" / "celery"),
            "-A",
            "bench.peers.celery_app",
            "-b",
            REDIS_URL,
            "worker",
            "-P",
            "threads",
            "-c",
            str(self.settings.threads),
            "-Q",
            "bench",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
        ]
        logs = [log.with_suffix(f".{number}.log") for number in range(self.settings.processes)]
        processes = [
            _spawn([*command, "-n", f"bench{number}@%h"], env=base_env({}), log=logs[number])
            for number in range(self.settings.processes)
        ]
        return Workers(processes, logs, lambda: [process.pid for process in processes], b"ready.", len(processes))

    def outstanding(self) -> int:
        client = _redis()
        return client.llen(f"{self.key_prefix}bench") + client.hlen(f"{self.key_prefix}unacked")

    def cleanup(self) -> None:
        _delete_keys(f"{self.key_prefix}*")


@dataclass
class Rq:
    """RQ on the same Redis: RQ has no threads, so ``processes x threads`` SimpleWorker processes
    (one job at a time each, in the worker's own process: no fork per job)."""

    name: str
    settings: WorkerSettings = field(default_factory=WorkerSettings)
    jobs: int = 0

    def renew(self) -> None:
        self.cleanup()

    def enqueue(self, workload: str, jobs: int, *, bulk: bool = False) -> float:
        self.jobs = jobs
        return _peer_enqueue("rq", workload, jobs)

    def start(self, *, log: Path) -> Workers:
        from bench.peers.environment import PEERS_VENV

        command = [
            str(PEERS_VENV / "bin" / "rq"),
            "worker",
            "-w",
            "rq.worker.SimpleWorker",
            "--url",
            REDIS_URL,
            "bench",
        ]
        count = self.settings.processes * self.settings.threads
        logs = [log.with_suffix(f".{number}.log") for number in range(count)]
        processes = [_spawn(command, env=base_env({}), log=logs[number]) for number in range(count)]
        return Workers(processes, logs, lambda: [process.pid for process in processes], b"Listening on", count)

    def outstanding(self) -> int:
        client = _redis()
        done = client.zcard("rq:finished:bench") + client.zcard("rq:failed:bench")
        return max(0, self.jobs - done)

    def cleanup(self) -> None:
        _delete_keys("rq:*")


def _peer_enqueue(framework: str, workload: str, jobs: int) -> float:
    from bench.peers.environment import peers_python

    task, arguments = WORKLOADS[workload]
    command = [
        str(peers_python()),
        "-m",
        "bench.peers.enqueue",
        framework,
        "--url",
        REDIS_URL,
        "--task",
        task,
        "--jobs",
        str(jobs),
        "--args",
        json.dumps(arguments),
    ]
    result = subprocess.run(command, env=base_env({}), cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{framework}: enqueue failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["rate"]
