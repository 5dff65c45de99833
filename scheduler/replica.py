"""One scheduler replica: stand by until it holds the leader lock, then schedule until it loses it or stops.

1. Try the lock every ``SCHEDULER_LEADER_RETRY_MS``; while another replica holds it, stand by.
2. Holding it, start the :class:`TickRunner` (APScheduler) and check the lock at the same cadence.
3. If the lock is lost (the database session died), stop scheduling at once and stand by again:
   any tick the two leaders both fire in the overlap is enqueued once, by its idempotency key.
4. On SIGTERM or SIGINT, stop scheduling, let running ticks finish, release the lock, exit 0.
"""

from __future__ import annotations

import logging
import threading

from middleware.job_logs import emit_event
from scheduler.leader import LeaderLock
from scheduler.runner import TickRunner

logger = logging.getLogger("scheduler.replica")

MAX_START_PAUSE_MS = 30_000


def run_replica(lock: LeaderLock, runner: TickRunner, *, retry_ms: int, stop: threading.Event) -> None:
    identity = runner.identity
    emit_event("scheduler.started", scheduler=identity, lock=lock.describe(), entries=[e.name for e in runner.entries])
    standing_by, failed_starts = False, 0
    while not stop.is_set():
        if not lock.try_acquire():
            if not standing_by:
                emit_event("scheduler.standby", scheduler=identity)
                standing_by = True
            stop.wait(retry_ms / 1000)
            continue
        standing_by = False
        emit_event("scheduler.leader", scheduler=identity)
        try:
            runner.start()
        except Exception:
            failed_starts += 1
            pause_ms = min(MAX_START_PAUSE_MS, retry_ms * 2**failed_starts)
            logger.exception("Could not start scheduling; giving the lock up and trying again in %d ms.", pause_ms)
            runner.stop()
            lock.release()
            stop.wait(pause_ms / 1000)  # a database that is down: back off, another replica may try meanwhile
            continue
        failed_starts = 0
        try:
            while not stop.wait(retry_ms / 1000):
                if not lock.still_held():
                    emit_event(
                        "scheduler.leadership_lost",
                        level=logging.WARNING,
                        scheduler=identity,
                        reason="the leader lock's session ended",
                    )
                    break
        finally:
            runner.stop()
            lock.release()
    emit_event("scheduler.stopped", scheduler=identity)
