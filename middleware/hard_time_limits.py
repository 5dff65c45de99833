"""Hard time limits: a job still running ``grace_ms`` after its time limit gets its worker killed.

Dramatiq's ``TimeLimit`` raises ``TimeLimitExceeded`` into the job's thread, which lands only when
the thread runs Python again. A job inside one long C call that holds the GIL (a speech decoder,
``3 ** 50_000_000``) cannot be interrupted, and nothing in its process can even run: it would hold
its worker, and its message, forever. So the watching is done from outside:

1. Each worker process keeps a *deadline board*: a small memory-mapped file with one slot per
   worker thread, holding the running message's id and its hard deadline (start + time limit +
   grace). Writing a slot is a memory write: no system call, nothing in the hot path.
2. A process of its own (a Dramatiq *fork* of the master, with its own GIL) reads the boards of
   its master's workers every 250 ms. When a deadline has passed, it asks for the master's
   processes to be replaced (``middleware.serving.process_replacement``: the others are stopped
   gracefully, instead of the master taking the death for a crash), then kills the stuck process
   with SIGKILL, and ends: a new watcher starts with the new workers.
3. The killed delivery's message comes back as any dead worker's does: at once on RabbitMQ (its
   connection drops), within the liveness window on Redis (``middleware.heartbeats``). It resumes
   from its checkpoint, and it counts as a delivery whose worker died, so the poison cap
   (``max_deliveries``) stops a message that gets stuck every time.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from middleware.metrics import count_hard_limit_kill
from middleware.routing import default_time_limit_ms, time_limit_ms
from middleware.serving.process_replacement import ask_master_to_replace_its_processes, dramatiq_master_pid
from middleware.serving.processes import process_alive

logger = logging.getLogger("middleware.hard_time_limits.HardTimeLimits")

#: One slot: the hard deadline (seconds since the epoch, 0 when the thread is idle), the message id,
#: and its queue and actor (NUL-separated; the labels of the kill's metric).
_SLOT = struct.Struct("<d64s192s")
#: How often the watcher reads the boards.
WATCH_INTERVAL_S = 0.25
#: How long the watcher waits for the master to acknowledge the reload (it signals its forks too).
RELOAD_ACK_TIMEOUT_S = 5.0


class DeadlineBoard:
    """The deadlines of one worker process's running jobs, in a file both processes map."""

    def __init__(self, path: Path, slots: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as file:
            file.truncate(_SLOT.size * slots)
        self._file = path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), _SLOT.size * slots)
        self.slots = slots

    def set(self, slot: int, deadline: float, job: RunningJob) -> None:
        labels = f"{job.queue_name}\0{job.actor_name}".encode()[:192]
        _SLOT.pack_into(self._map, slot * _SLOT.size, deadline, job.message_id.encode()[:64], labels)

    def clear(self, slot: int) -> None:
        _SLOT.pack_into(self._map, slot * _SLOT.size, 0.0, b"", b"")

    def close(self) -> None:
        self._map.close()
        self._file.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunningJob:
    """The job a board's slot holds."""

    message_id: str
    queue_name: str
    actor_name: str


def read_board(path: Path) -> list[tuple[float, RunningJob]]:
    """The deadline and job of each busy slot of a board."""
    data = path.read_bytes()
    busy = []
    for offset in range(0, len(data) - _SLOT.size + 1, _SLOT.size):
        deadline, message_id, labels = _SLOT.unpack_from(data, offset)
        if deadline:
            queue_name, _, actor_name = labels.rstrip(b"\0").decode(errors="replace").partition("\0")
            busy.append(
                (deadline, RunningJob(message_id.rstrip(b"\0").decode(errors="replace"), queue_name, actor_name))
            )
    return busy


def board_path(directory: Path, master_pid: int, pid: int) -> Path:
    return directory / f"{master_pid}.{pid}.deadlines"


class HardTimeLimits(Middleware):
    """Keeps this worker process's deadline board, and has the master start ``fork`` (the watcher).

    Parameters:
      grace_ms: how long a job may run past its time limit before its process is killed.
      directory: where the boards are (one file per worker process, removed when it stops).
      fork: a module-level function that runs :func:`watch_deadlines` for its master.
    """

    def __init__(self, *, grace_ms: int, directory: Path, fork: Callable[[], int]) -> None:
        self.grace_ms = grace_ms
        self.directory = directory
        self.fork = fork
        self.board: DeadlineBoard | None = None
        self._default_limit_ms: float | None = None
        self._slots = threading.local()
        self._next_slot = 0
        self._slot_lock = threading.Lock()

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [self.fork]

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        master_pid = dramatiq_master_pid()
        if master_pid is None:  # an in-process worker (tests, scripts): no watcher runs for it
            return
        self._default_limit_ms = default_time_limit_ms(broker)
        self.board = DeadlineBoard(board_path(self.directory, master_pid, os.getpid()), worker.worker_threads)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        if self.board is None:
            return
        actor = broker.get_actor(message.actor_name)
        limit_ms = time_limit_ms(message, actor, self._default_limit_ms)
        slot = self._slot()
        if limit_ms is None or slot is None:
            return
        job = RunningJob(message.message_id, message.queue_name, message.actor_name)
        self.board.set(slot, time.time() + (limit_ms + self.grace_ms) / 1000, job)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._clear()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._clear()

    def _clear(self) -> None:
        slot = getattr(self._slots, "index", None)
        if self.board is not None and slot is not None:
            self.board.clear(slot)

    def _slot(self) -> int | None:
        index = getattr(self._slots, "index", None)
        if index is None and self.board is not None:
            with self._slot_lock:
                if self._next_slot < self.board.slots:
                    index = self._slots.index = self._next_slot
                    self._next_slot += 1
        return index


def overdue_jobs(directory: Path, master_pid: int, now: float) -> Iterator[tuple[int, float, RunningJob]]:
    """(pid, seconds past the hard deadline, job) of each stuck job of ``master_pid``'s
    workers. Boards left by processes that are gone are removed."""
    for path in sorted(directory.glob(f"{master_pid}.*.deadlines")):
        pid = int(path.name.split(".")[1])
        if not process_alive(pid):
            path.unlink(missing_ok=True)
            continue
        try:
            busy = read_board(path)
        except FileNotFoundError:  # the worker stopped meanwhile
            continue
        for deadline, job in busy:
            if deadline < now:
                yield pid, now - deadline, job


def watch_deadlines(
    directory: Path, *, master_pid: int, grace_ms: int, stop: Callable[[], bool], requests_dir: Path | None = None
) -> None:
    """The watcher's loop (in a fork of the master): replace the first worker found stuck, then end.
    The master never restarts a fork that dies, so an unexpected error is logged and the watch goes on."""
    while not stop():
        try:
            stuck = next(overdue_jobs(directory, master_pid, time.time()), None)
        except Exception:
            logger.exception("Could not read the deadline boards in %s; trying again.", directory)
            stuck = None
        if stuck is not None:
            pid, overdue_s, job = stuck
            replace_stuck_worker(
                pid, master_pid=master_pid, job=job, grace_ms=grace_ms, overdue_s=overdue_s, requests_dir=requests_dir
            )
            return
        time.sleep(WATCH_INTERVAL_S)  # the watcher's cadence: a deadline is a moment, not an event to await


def replace_stuck_worker(
    pid: int, *, master_pid: int, job: RunningJob, grace_ms: int, overdue_s: float, requests_dir: Path | None = None
) -> None:
    logger.error(
        "Worker process %d still runs message %s %.1f s past its time limit plus HARD_LIMIT_GRACE_MS (%d ms): it "
        "is inside code the time limit cannot interrupt. Killing it; the dramatiq master (pid %d) replaces its "
        "processes, and the message runs again from its checkpoint.",
        pid,
        job.message_id,
        overdue_s,
        grace_ms,
        master_pid,
    )
    # The master passes its stop (or reload) signal on to its forks, this one included: that is its acknowledgement.
    acknowledged = threading.Event()
    for signum in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, lambda *_: acknowledged.set())
    reason = f"a job ran past its time limit plus HARD_LIMIT_GRACE_MS (message {job.message_id})"
    ask_master_to_replace_its_processes(master_pid, reason=reason, requests_dir=requests_dir)
    if not acknowledged.wait(RELOAD_ACK_TIMEOUT_S):
        logger.warning(
            "The dramatiq master (pid %d) did not answer its reload within %.0f s.", master_pid, RELOAD_ACK_TIMEOUT_S
        )
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        logger.info("Worker process %d ended before it was killed.", pid)
        return
    count_hard_limit_kill(job.queue_name, job.actor_name)
