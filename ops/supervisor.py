"""python -m ops workers: run worker processes and restart any that dies, leaving the others alone.

The ``dramatiq`` master never restarts a dead child: when one worker process dies (SIGKILL,
out of memory) it stops all the others and exits. So this supervisor runs N separate
``dramatiq actors --processes 1`` commands (the dramatiq CLI itself, with its signal handling,
logging and heartbeat fork) and restarts only the one that exited. For production, systemd or
Kubernetes does the same job.

1. Start ``--workers`` commands, each in its own process group.
2. When one exits unexpectedly, start it again after a short pause that grows (up to 30 s) while
   it keeps dying within seconds of starting (exit code 3, a service unreachable at boot,
   included); exit code 2 (bad settings, schema behind) is not retried, since restarting cannot
   fix it.
3. On SIGTERM or SIGINT, pass SIGTERM to every worker (checkpointed jobs hand their messages
   back at once) and wait for them, up to ``--grace`` seconds.
4. With ``METRICS_PORT``, the supervisor serves the metrics of all its workers on that one port:
   they write to a directory of the supervisor's (``METRICS_DIR``) and serve none themselves, so a
   restarted worker's counters carry on and a dead one's jobs in progress disappear.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ops.worker_profiles import PROFILES, WorkerProfile

logger = logging.getLogger("ops.supervisor")

EXIT_BAD_START = 2
QUICK_DEATH_S = 10.0
MAX_RESTART_DELAY_S = 30.0


@dataclass
class Slot:
    """One worker command and its restart bookkeeping."""

    number: int
    command: list[str]
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env, start_new_session=True)
        self.started_at = time.monotonic()
        logger.info("Worker %d started (pid %d).", self.number, self.process.pid)

    def restart_delay_s(self) -> float:
        return min(MAX_RESTART_DELAY_S, 0.5 * 2**self.quick_deaths)


class Supervisor:
    def __init__(self, commands: list[list[str]], *, grace_s: float, envs: list[dict[str, str]] | None = None) -> None:
        self.slots = [Slot(number, command, envs[number] if envs else None) for number, command in enumerate(commands)]
        self.grace_s = grace_s
        self.stopping = threading.Event()

    def run(self) -> int:
        for slot in self.slots:
            slot.start()
        while not self.stopping.is_set():
            for slot in self.slots:
                code = slot.process.poll() if slot.process else None
                if code is not None and not self.stopping.is_set() and not self._restart(slot, code):
                    self.stop()
                    return 1
            self.stopping.wait(0.2)  # the supervision loop's cadence; a stop request wakes it at once
        return self._wait_for_workers()

    def stop(self, *_: object) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        logger.info("Stopping %d workers.", len(self.slots))
        for slot in self.slots:
            if slot.process and slot.process.poll() is None:
                os.kill(slot.process.pid, signal.SIGTERM)  # the master only: it passes it on once

    def _restart(self, slot: Slot, code: int) -> bool:
        if code == EXIT_BAD_START:
            logger.error(
                "Worker %d could not start (exit code 2: bad settings or schema); not restarting it. "
                "Fix the cause and start the workers again.",
                slot.number,
            )
            return False
        lived_s = time.monotonic() - slot.started_at
        slot.quick_deaths = slot.quick_deaths + 1 if lived_s < QUICK_DEATH_S else 0
        delay_s = slot.restart_delay_s() if slot.quick_deaths else 0.0
        logger.warning(
            "Worker %d (pid %d) exited with code %s after %.1f s; restarting it in %.1f s.",
            slot.number,
            slot.process.pid,
            code,
            lived_s,
            delay_s,
        )
        if self.stopping.wait(delay_s):
            return True
        slot.restarts.append(time.time())
        slot.start()
        return True

    def _wait_for_workers(self) -> int:
        deadline = time.monotonic() + self.grace_s
        for slot in self.slots:
            if slot.process is None:
                continue
            try:
                slot.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("Worker %d did not stop within %.0f s; killing it.", slot.number, self.grace_s)
                os.killpg(slot.process.pid, signal.SIGKILL)
                slot.process.wait()
        logger.info("All workers stopped.")
        return 0


def worker_command(*, queues: list[str], threads: int, modules: list[str]) -> list[str]:
    dramatiq = Path(sys.executable).parent / "dramatiq"
    command = [str(dramatiq), "actors", *modules, "--processes", "1", "--threads", str(threads)]
    return command + (["--queues", *queues] if queues else [])


def add_commands(commands: argparse._SubParsersAction) -> None:
    workers = commands.add_parser("workers", help="run worker processes, restarting any that dies")
    workers.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="long",
        help="defaults for the kind of job (ops/worker_profiles.py): long (transcription: 2 workers "
        "x 1 thread, prefetch 1) or short (webhooks: a worker per core x 8 threads, prefetch 256)",
    )
    workers.add_argument("--workers", type=int, help="worker processes (default: the profile's)")
    workers.add_argument("--threads", type=int, help="threads per worker (default: the profile's)")
    workers.add_argument(
        "--prefetch",
        type=int,
        help="messages each worker takes from its queues ahead of its threads (default: the profile's)",
    )
    workers.add_argument("--queues", nargs="*", default=[], help="queues to serve (default: all)")
    workers.add_argument("--modules", nargs="*", default=[], help="extra actor modules to import")
    workers.add_argument("--grace", type=float, default=60.0, help="seconds to wait for workers on stop")
    workers.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    profile = PROFILES[args.profile]
    args.workers = profile.workers if args.workers is None else args.workers
    args.threads = profile.threads if args.threads is None else args.threads
    prefetch = profile.prefetch if args.prefetch is None else args.prefetch
    if args.workers < 1 or args.threads < 1 or prefetch < 1:
        print("error: --workers, --threads and --prefetch must be at least 1", file=sys.stderr)
        return 2
    logging.getLogger("ops").setLevel(logging.INFO)
    command = worker_command(queues=args.queues, threads=args.threads, modules=args.modules)
    try:
        metrics_env = _serve_workers_metrics()
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_START
    prefetch_env = WorkerProfile(workers=args.workers, threads=args.threads, prefetch=prefetch).environment()
    envs = [{**os.environ, **metrics_env, **prefetch_env, **_health_port_of(slot)} for slot in range(args.workers)]
    supervisor = Supervisor([command] * args.workers, grace_s=args.grace, envs=envs)
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    return supervisor.run()


def _health_port_of(slot: int) -> dict[str, str]:
    """Each worker is a dramatiq command of its own: slot k answers liveness probes on the port + k."""
    from actors.system import current_system

    port = current_system().settings.worker_health_port
    return {"WORKER_HEALTH_PORT": str(port + slot)} if port else {}


def _serve_workers_metrics() -> dict[str, str]:
    """With METRICS_PORT, serve the workers' metrics from here; returns the settings the workers get."""
    from actors.observability import metrics_root
    from actors.system import current_system  # importing actors reads (and checks) the settings

    settings = current_system().settings
    if settings.metrics_port == 0:
        return {}
    from middleware.serving.metrics_directory import instance_directory
    from middleware.serving.metrics_server import start_metrics_server

    directory = instance_directory(metrics_root(settings), os.getpid())
    start_metrics_server(directory, bind=settings.metrics_bind, port=settings.metrics_port)
    logger.info("Serving the workers' metrics on http://%s:%d/metrics.", settings.metrics_bind, settings.metrics_port)
    return {"METRICS_DIR": str(directory), "METRICS_PORT": "0"}
