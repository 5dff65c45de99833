"""python -m ops workers: run worker processes and restart any that dies, leaving the others alone.

The ``dramatiq`` master never restarts a dead child: when one worker process dies (SIGKILL,
out of memory) it stops all the others and exits. So this supervisor runs N separate
``dramatiq actors --processes 1`` commands (the dramatiq CLI itself, with its signal handling,
logging and heartbeat fork) and restarts only the one that exited. For production, systemd or
Kubernetes does the same job.

1. Start ``--workers`` commands (slots), each in its own process group.
2. When one exits unexpectedly (any exit while the supervisor is not stopping, code 0 included),
   start it again after a short pause that grows (up to 30 s) while it keeps dying within seconds
   of starting (exit code 3, a service unreachable at boot, included). Exit code 2 (bad settings,
   schema behind) is not retried, since restarting cannot fix it: every worker is stopped.
3. A slot whose worker exits unexpectedly ``WORKER_MAX_CRASHES`` times within
   ``WORKER_CRASH_WINDOW_MS`` is in a crash loop: it is stopped, with one line saying why, and
   the other slots keep running. Once every slot is stopped so, the supervisor exits with code 4
   (``EXIT_CRASH_LOOP``), which systemd is told not to restart.
4. A worker that asks for its own replacement (recycled by ``WORKER_MAX_RSS_MB`` or
   ``WORKER_MAX_JOBS``, or killed by its hard time limit: ``middleware.serving.process_replacement``)
   leaves a request in ``REPLACE_REQUESTS_DIR`` and stops its master: the slot is started again at
   once, and that is no crash.
5. Each slot's state is written to the ``worker_slots`` table on every change (for
   ``python -m ops workers status``, ``ops health`` and the exporter), from a thread of its own: a
   database that is down is logged once and never stops the supervision.
6. On SIGTERM or SIGINT, pass SIGTERM to every worker (checkpointed jobs hand their messages
   back at once) and wait for them, up to ``--grace`` seconds; then delete this supervisor's rows.
7. With ``METRICS_PORT``, the supervisor serves the metrics of all its workers on that one port:
   they write to a directory of the supervisor's (``METRICS_DIR``) and serve none themselves, so a
   restarted worker's counters carry on and a dead one's jobs in progress disappear.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from middleware.serving.process_replacement import take_replace_request
from middleware.storage.worker_slots import CRASH_LOOP, RESTARTING, RUNNING, STOPPED
from ops.worker_profiles import PROFILES, WorkerProfile

if TYPE_CHECKING:
    from middleware.storage.database import Database

logger = logging.getLogger("ops.supervisor")

EXIT_BAD_START = 2
#: Every slot is stopped in a crash loop: a supervisor restarted at once would only loop again.
EXIT_CRASH_LOOP = 4
QUICK_DEATH_S = 10.0
MAX_RESTART_DELAY_S = 30.0


def exit_reason(code: int, *, lived_s: float) -> str:
    """How a worker command ended, in words: ``code`` as subprocess reports it (negative: a signal)."""
    if code >= 0:
        return f"exited with code {code} after {lived_s:.1f} s"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name} after {lived_s:.1f} s"


@dataclass
class CrashWindow:
    """The unexpected exits of one slot within the last ``window_ms``: at ``max_crashes`` of them, the
    slot is in a crash loop. Times are milliseconds of a monotonic clock, passed in."""

    max_crashes: int
    window_ms: float
    crashes_ms: list[float] = field(default_factory=list)

    def record(self, now_ms: float) -> int:
        """Count a crash at ``now_ms``; returns the crashes within the window, this one included."""
        self.crashes_ms = [at for at in self.crashes_ms if now_ms - at < self.window_ms] + [now_ms]
        return len(self.crashes_ms)

    @property
    def looping(self) -> bool:
        return len(self.crashes_ms) >= self.max_crashes


@dataclass
class Slot:
    """One worker command, its state (``middleware.storage.worker_slots``) and its restart bookkeeping."""

    number: int
    command: list[str]
    crashes: CrashWindow
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = None
    state: str = RUNNING
    started_at: float = 0.0  # monotonic, for how long it lived
    started_at_utc: datetime | None = None
    restart_at: float = 0.0  # monotonic, while restarting
    quick_deaths: int = 0
    restarts: int = 0
    last_exit_code: int | None = None
    last_exit_reason: str | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env, start_new_session=True)
        self.started_at, self.started_at_utc = time.monotonic(), datetime.now(UTC)
        self.state = RUNNING
        logger.info("Worker %d started (pid %d).", self.number, self.process.pid)

    def restart_delay_s(self, *, longest_s: float = MAX_RESTART_DELAY_S) -> float:
        return min(longest_s, 0.5 * 2**self.quick_deaths)


class Supervisor:
    """Runs the slots and restarts them (see the module's steps); ``on_change`` gets a slot after each
    change of its state. ``max_restart_delay_s`` bounds the pause before a restart (tests shorten it)."""

    def __init__(
        self,
        commands: list[list[str]],
        *,
        grace_s: float,
        envs: list[dict[str, str]] | None = None,
        max_crashes: int = 5,
        crash_window_ms: int = 300_000,
        max_restart_delay_s: float = MAX_RESTART_DELAY_S,
        on_change: Callable[[Slot], None] = lambda slot: None,
        requests_dir: Path | None = None,
    ) -> None:
        self.slots = [
            Slot(number, command, CrashWindow(max_crashes, crash_window_ms), envs[number] if envs else None)
            for number, command in enumerate(commands)
        ]
        self.grace_s = grace_s
        self.crash_window_ms = crash_window_ms
        self.max_restart_delay_s = max_restart_delay_s
        self.on_change = on_change
        #: Where its workers ask for their slot to be replaced (``REPLACE_REQUESTS_DIR``).
        self.requests_dir = requests_dir
        self.stopping = threading.Event()

    def run(self) -> int:
        for slot in self.slots:
            self._start(slot)
        while not self.stopping.is_set():
            for slot in self.slots:
                if self.stopping.is_set():
                    break
                if slot.state == RUNNING and slot.process and (code := slot.process.poll()) is not None:
                    if not self._exited(slot, code):
                        self.stop()
                        self._wait_for_workers(given_up=True)
                        return 1
                elif slot.state == RESTARTING and time.monotonic() >= slot.restart_at:
                    slot.restarts += 1
                    self._start(slot)
            if all(slot.state == CRASH_LOOP for slot in self.slots):
                logger.error("Every worker is stopped in a crash loop; exiting with code %d.", EXIT_CRASH_LOOP)
                return EXIT_CRASH_LOOP
            self.stopping.wait(0.2)  # the supervision loop's cadence; a stop request wakes it at once
        return self._wait_for_workers(given_up=False)

    def stop(self, *_: object) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        logger.info("Stopping %d workers.", len(self.slots))
        for slot in self.slots:
            if slot.process and slot.process.poll() is None:
                os.kill(slot.process.pid, signal.SIGTERM)  # the master only: it passes it on once

    def _start(self, slot: Slot) -> None:
        slot.start()
        self.on_change(slot)

    def _exited(self, slot: Slot, code: int) -> bool:
        """Decide what becomes of a slot whose worker exited unexpectedly; False stops the supervisor."""
        assert slot.process is not None
        lived_s = time.monotonic() - slot.started_at
        slot.last_exit_code, slot.last_exit_reason = code, exit_reason(code, lived_s=lived_s)
        replaced = take_replace_request(self.requests_dir, slot.process.pid) if self.requests_dir else None
        if replaced is not None:
            # The worker asked for it (middleware.serving.process_replacement): no crash, started again at once.
            logger.info(
                "Worker %d (pid %d) stopped to be replaced (%s); starting it again.",
                slot.number,
                slot.process.pid,
                replaced,
            )
            slot.last_exit_reason = f"replaced after {lived_s:.1f} s: {replaced}"
            slot.state, slot.restart_at = RESTARTING, time.monotonic()
            self.on_change(slot)
            return True
        if code == EXIT_BAD_START:
            logger.error(
                "Worker %d could not start (exit code 2: bad settings or schema); not restarting it. "
                "Fix the cause and start the workers again.",
                slot.number,
            )
            slot.state = STOPPED
            self.on_change(slot)
            return False
        crashes = slot.crashes.record(time.monotonic() * 1000)
        if slot.crashes.looping:
            logger.error(
                "Worker %d is in a crash loop: it exited unexpectedly %d times within %g s, the last time "
                "(pid %d) %s; not restarting it (the other workers keep running). See its log above, fix the "
                "cause, then start the workers again (WORKER_MAX_CRASHES, WORKER_CRASH_WINDOW_MS set the limit).",
                slot.number,
                crashes,
                self.crash_window_ms / 1000,
                slot.process.pid,
                slot.last_exit_reason,
            )
            slot.state = CRASH_LOOP
            self.on_change(slot)
            return True
        slot.quick_deaths = slot.quick_deaths + 1 if lived_s < QUICK_DEATH_S else 0
        delay_s = slot.restart_delay_s(longest_s=self.max_restart_delay_s) if slot.quick_deaths else 0.0
        logger.warning(
            "Worker %d (pid %d) %s; restarting it in %.1f s.",
            slot.number,
            slot.process.pid,
            slot.last_exit_reason,
            delay_s,
        )
        slot.state, slot.restart_at = RESTARTING, time.monotonic() + delay_s
        self.on_change(slot)
        return True

    def _wait_for_workers(self, *, given_up: bool) -> int:
        """Wait for every worker to exit; when the supervisor ``given_up`` on them, each slot is stopped.
        (After a stop request the slots keep their state: their rows are deleted once all have exited.)"""
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
            if given_up and slot.state in (RUNNING, RESTARTING):
                if slot.state == RUNNING:  # (a restarting slot's last run was put in words when it ended)
                    lived_s = time.monotonic() - slot.started_at
                    slot.last_exit_code = slot.process.returncode
                    slot.last_exit_reason = exit_reason(slot.process.returncode, lived_s=lived_s)
                slot.state = STOPPED
                self.on_change(slot)
        logger.info("All workers stopped.")
        return 0


class SlotRecorder:
    """Keeps this supervisor's rows of ``worker_slots`` up to date from a thread of its own, so that a
    database that is down or hangs never holds up a restart. Only the newest row of each slot is
    kept; a failed write is retried every ``retry_s`` and logged once per outage."""

    def __init__(
        self,
        database: Database,
        *,
        queues: list[str],
        host: str | None = None,
        supervisor_pid: int | None = None,
        retry_s: float = 5.0,
    ) -> None:
        self.database = database
        self.queues = sorted(queues)
        self.host = host or socket.gethostname()
        self.supervisor_pid = supervisor_pid or os.getpid()
        self.retry_s = retry_s
        self._pending: dict[int, dict[str, Any]] = {}
        self._changed = threading.Condition()
        self._closed = self._forget = False
        self._replaced = False  # whether the rows of the gone supervisors this one replaces are deleted
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="worker-slots", daemon=True)
        self._thread.start()

    def record(self, slot: Slot) -> None:
        row = {
            "host": self.host,
            "supervisor_pid": self.supervisor_pid,
            "slot": slot.number,
            "queues": self.queues,
            "pid": slot.process.pid if slot.process else None,
            "started_at": slot.started_at_utc,
            "restarts": slot.restarts,
            "last_exit_code": slot.last_exit_code,
            "last_exit_reason": slot.last_exit_reason,
            "state": slot.state,
            "updated_at": datetime.now(UTC),
        }
        with self._changed:
            self._pending[slot.number] = row
            self._changed.notify()

    def close(self, *, forget: bool, timeout_s: float = 10.0) -> None:
        """Write what is pending, or with ``forget`` delete this supervisor's rows, within ``timeout_s``."""
        with self._changed:
            self._closed, self._forget = True, forget
            self._changed.notify()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("Could not record the workers' last state in worker_slots within %.0f s.", timeout_s)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                rows, forget = list(self._pending.values()), self._closed and self._forget
            if self._write(rows, forget=forget):
                with self._changed:
                    for row in rows:
                        if self._pending.get(row["slot"]) is row:  # not replaced by a newer one meanwhile
                            del self._pending[row["slot"]]
                    if self._closed and (forget or not self._pending):
                        return
            else:
                with self._changed:
                    self._changed.wait(self.retry_s)  # or until the next change

    def _write(self, rows: list[dict[str, Any]], *, forget: bool) -> bool:
        from sqlalchemy.exc import SQLAlchemyError

        from middleware.storage.worker_slots import forget_supervisor, record_slots

        try:
            if forget:
                forget_supervisor(self.database, host=self.host, supervisor_pid=self.supervisor_pid)
            else:
                record_slots(self.database, rows, replacing=[] if self._replaced else self._gone_supervisors())
                self._replaced = True
        except SQLAlchemyError as error:
            if not self._failing:  # once per outage, not at every retry
                reason = f"{type(error).__name__}: {getattr(error, 'orig', None) or error}"
                logger.warning(
                    "Could not record the worker slots in the database (%s); retrying every %.0f s. "
                    "The workers are supervised as usual.",
                    reason,
                    self.retry_s,
                )
            self._failing = True
            return False
        except Exception:
            logger.exception("Recording the worker slots failed unexpectedly; retrying in %.0f s.", self.retry_s)
            self._failing = True
            return False
        if self._failing:
            logger.info("Recording the worker slots in the database again.")
        self._failing = False
        return True

    def _gone_supervisors(self) -> list[tuple[str, int]]:
        """Earlier supervisors of this host for the same queues that no longer run: this one replaces them."""
        from middleware.serving.metrics_directory import process_start_ticks
        from middleware.storage.worker_slots import list_worker_slots

        return sorted(
            {
                (self.host, row["supervisor_pid"])
                for row in list_worker_slots(self.database, host=self.host)
                if row["supervisor_pid"] != self.supervisor_pid
                and sorted(row["queues"]) == self.queues
                and process_start_ticks(row["supervisor_pid"]) is None
            }
        )


def worker_command(*, queues: list[str], threads: int, modules: list[str]) -> list[str]:
    dramatiq = Path(sys.executable).parent / "dramatiq"
    command = [str(dramatiq), "actors", *modules, "--processes", "1", "--threads", str(threads)]
    return command + (["--queues", *queues] if queues else [])


def add_commands(commands: argparse._SubParsersAction) -> None:
    from ops import workers_status

    workers = commands.add_parser("workers", help="run worker processes, restarting any that dies; status")
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
    # Optional: `python -m ops workers [options]` alone runs the workers, as it always has.
    workers_status.add_commands(workers.add_subparsers(title="workers commands", metavar="[status]"))


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
    from actors.system import current_system

    system = current_system()
    prefetch_env = WorkerProfile(workers=args.workers, threads=args.threads, prefetch=prefetch).environment()
    requests_dir = system.settings.state_dir / "replace-requests" / str(os.getpid())
    supervised = {"REPLACE_REQUESTS_DIR": str(requests_dir)}
    envs = [
        {**os.environ, **metrics_env, **prefetch_env, **_health_port_of(slot), **supervised}
        for slot in range(args.workers)
    ]
    recorder = SlotRecorder(system.database, queues=args.queues)
    supervisor = Supervisor(
        [command] * args.workers,
        grace_s=args.grace,
        envs=envs,
        max_crashes=system.settings.worker_max_crashes,
        crash_window_ms=system.settings.worker_crash_window_ms,
        on_change=recorder.record,
        requests_dir=requests_dir,
    )
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    code = supervisor.run()
    # A clean stop leaves nothing to report; a supervisor that gave up leaves its slots' rows.
    recorder.close(forget=code == 0)
    return code


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
