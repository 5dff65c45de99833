"""Worker health: every worker process publishes a heartbeat row with its stats, and answers a liveness probe.

1. Dramatiq's hooks count, per process, the jobs processed and failed, the job each worker thread
   is running, and the outcomes inside the failure window. A job handed back after an
   interruption (a deploy's ``Shutdown``, a checkpointed job's time limit) is neither.
2. A daemon thread started at ``after_worker_boot`` upserts the process's row in
   ``worker_heartbeats`` every ``interval_ms``: host, pid, version, queues, counters, the running
   jobs with their progress (read from ``job_status``), and the delayed messages the process holds
   in memory. It also deletes the rows of workers silent for ``forget_after_ms`` (crashed ones; a
   worker that stops cleanly deletes its own row).
3. With a ``probe_port``, the process answers ``GET /healthz`` on ``probe_bind``: 200 while its
   worker and consumer threads are alive and its heartbeat loop keeps turning, 503 otherwise, so
   Kubernetes restarts a hung worker. Process ``k`` of ``dramatiq --processes N`` listens on
   ``probe_port + k``. The port is bound at process boot: a port already taken stops the worker
   with exit code 2 and a message saying so.

The worker only reports; ``ops/health.py`` judges health from these rows.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import Middleware
from sqlalchemy import Connection, delete, select
from sqlalchemy.exc import SQLAlchemyError

from middleware.boot_checks import stop_worker_boot
from middleware.job_status import job_status
from middleware.policies.failure_decision import current_failure
from middleware.serving.liveness_probe import LivenessServer, ProbePortTaken, process_index
from middleware.storage.database import Database, as_utc, upsert
from middleware.storage.tables import worker_heartbeats

logger = logging.getLogger("middleware.worker_health.WorkerHealth")

DEFAULT_INTERVAL_MS = 5_000
DEFAULT_STALE_AFTER_MS = 30_000
DEFAULT_FORGET_AFTER_MS = 600_000
DEFAULT_FAILURE_WINDOW_MS = 600_000


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _RunningJob:
    message_id: str
    actor_name: str
    queue_name: str
    started_at: datetime


@dataclass(frozen=True)
class _Snapshot:
    processed: int
    failed: int
    window_processed: int
    window_failed: int
    failed_since_success: int
    running: list[_RunningJob]
    last_job_finished_at: datetime | None
    last_success_at: datetime | None


class _Counters:
    """Per-process job counters, updated by every worker thread (so guarded by a lock)."""

    def __init__(self, *, failure_window_ms: int) -> None:
        self.failure_window_s = failure_window_ms / 1000
        self._lock = threading.Lock()
        self._running: dict[int, _RunningJob] = {}  # by worker thread: one job per thread at a time
        # Outcomes inside the window, counted by second: [monotonic second, processed, failed]. One
        # entry per job cost 84 bytes a job: 150 MiB a process at 3,000 jobs/s over a 10-minute window.
        self._outcomes: deque[list[int]] = deque()
        self._processed = self._failed = self._failed_since_success = 0
        self._last_job_finished_at: float | None = None  # time.time(): a datetime per job cost more
        self._last_success_at: float | None = None

    def started(self, job: _RunningJob) -> None:
        with self._lock:
            self._running[threading.get_ident()] = job

    def finished(self, *, failed: bool | None) -> None:
        """``failed`` is None for a job handed back after an interruption: it will run again."""
        now = time.time()
        second = int(time.monotonic())
        with self._lock:
            self._running.pop(threading.get_ident(), None)
            if failed is None:
                return
            self._processed += 1
            self._last_job_finished_at = now
            outcomes = self._outcomes
            if not outcomes or outcomes[-1][0] != second:
                outcomes.append([second, 0, 0])
            outcomes[-1][1] += 1
            if failed:
                outcomes[-1][2] += 1
                self._failed += 1
                self._failed_since_success += 1
            else:
                self._last_success_at = now
                self._failed_since_success = 0

    def snapshot(self) -> _Snapshot:
        with self._lock:
            horizon = time.monotonic() - self.failure_window_s
            while self._outcomes and self._outcomes[0][0] + 1 <= horizon:  # a second wholly before the window
                self._outcomes.popleft()
            return _Snapshot(
                processed=self._processed,
                failed=self._failed,
                window_processed=sum(processed for _, processed, _ in self._outcomes),
                window_failed=sum(failed for _, _, failed in self._outcomes),
                failed_since_success=self._failed_since_success,
                running=sorted(self._running.values(), key=lambda job: job.started_at),
                last_job_finished_at=_datetime(self._last_job_finished_at),
                last_success_at=_datetime(self._last_success_at),
            )


def _datetime(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


class WorkerHealth(Middleware):
    """Parameters:
    database: where ``worker_heartbeats`` (and ``job_status``, for progress) live.
    version: the code's version, published with each heartbeat.
    interval_ms: how often the heartbeat row is written.
    stale_after_ms: the liveness probe fails when the heartbeat loop has not turned for this long.
    forget_after_ms: rows of workers silent this long are deleted.
    failure_window_ms: the window of ``window_processed`` / ``window_failed``.
    probe_port: 0 for no liveness probe; else process ``k`` of its master listens on ``probe_port + k``.
    probe_bind: the address the probe listens on.
    """

    def __init__(
        self,
        *,
        database: Database,
        version: str,
        interval_ms: int = DEFAULT_INTERVAL_MS,
        stale_after_ms: int = DEFAULT_STALE_AFTER_MS,
        forget_after_ms: int = DEFAULT_FORGET_AFTER_MS,
        failure_window_ms: int = DEFAULT_FAILURE_WINDOW_MS,
        probe_port: int = 0,
        probe_bind: str = "127.0.0.1",
    ) -> None:
        self.database = database
        self.version = version
        self.interval_ms = interval_ms
        self.stale_after_ms = stale_after_ms
        self.forget_after_ms = forget_after_ms
        self.failure_window_ms = failure_window_ms
        self.probe_port = probe_port
        self.probe_bind = probe_bind
        self.worker_id: str | None = None
        self._counters = _Counters(failure_window_ms=failure_window_ms)
        self._worker: dramatiq.Worker | None = None
        self._started_at = _now()
        self._stopping = False
        self._loop: _BeatLoop | None = None
        self._probe: LivenessServer | None = None

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        if self.probe_port:
            port = self.probe_port + process_index()
            try:
                self._probe = LivenessServer(self.liveness, bind=self.probe_bind, port=port)
            except ProbePortTaken as error:
                stop_worker_boot(
                    f"{error}; free the port, or set WORKER_HEALTH_PORT to a free one (0 turns the probe off)."
                )
            self._probe.start()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._started_at = _now()
        self._worker = worker
        self._loop = _BeatLoop(self.publish, interval_ms=self.interval_ms)
        self._loop.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stopping = True  # still beating, and still alive to the probe, while it finishes its jobs

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._loop is not None:
            self._loop.stop(timeout_s=self.interval_ms / 1000 + 5)
        try:
            self.forget(self.worker_id)
        except SQLAlchemyError as error:
            logger.warning(
                "Could not delete this worker's heartbeat row (%s); it will be reported stale, "
                "then forgotten after %d ms.",
                error,
                self.forget_after_ms,
            )
        if self._probe is not None:
            self._probe.stop()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._counters.started(
            _RunningJob(
                message_id=message.message_id,
                actor_name=message.actor_name,
                queue_name=q_name(message.queue_name),
                started_at=_now(),
            )
        )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            self._counters.finished(failed=message.failed)
        elif current_failure.get() is None:
            # Handed back by Retries (a deploy, a time limit, a hand-back, a database outage): it
            # publishes no failure decision for those. It runs again; nothing failed.
            self._counters.finished(failed=None)
        else:
            self._counters.finished(failed=True)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        # Skipped: already complete (a success), or dead-lettered before running (poison: a failure).
        self._counters.finished(failed=message.failed)

    def publish(self) -> None:
        """Write this process's heartbeat row now, and forget workers silent for ``forget_after_ms``."""
        if self.worker_id is None or self._worker is None:
            raise RuntimeError("publish() runs after the worker has booted")
        stats, now = self._counters.snapshot(), _now()
        with self.database.transaction() as connection:
            progress = _progress(connection, [job.message_id for job in stats.running])
            row = {
                "worker_id": self.worker_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "version": self.version,
                "queues": served_queues(self._worker),
                "processed": stats.processed,
                "failed": stats.failed,
                "in_progress": len(stats.running),
                "failure_window_ms": self.failure_window_ms,
                "window_processed": stats.window_processed,
                "window_failed": stats.window_failed,
                "failed_since_success": stats.failed_since_success,
                "current_jobs": [
                    {
                        "message_id": job.message_id,
                        "actor_name": job.actor_name,
                        "queue_name": job.queue_name,
                        "started_at": job.started_at.isoformat(),
                        "progress": progress.get(job.message_id),
                    }
                    for job in stats.running
                ],
                "queue_counts": _queue_counts(self._worker, stats.running),
                "stopping": self._stopping,
                "started_at": self._started_at,
                "last_job_finished_at": stats.last_job_finished_at,
                "last_success_at": stats.last_success_at,
                "heartbeat_at": now,
            }
            upsert(
                connection,
                worker_heartbeats,
                row,
                key=["worker_id"],
                update={name: value for name, value in row.items() if name != "worker_id"},
            )
            forgotten = now - timedelta(milliseconds=self.forget_after_ms)
            connection.execute(delete(worker_heartbeats).where(worker_heartbeats.c.heartbeat_at < forgotten))

    def forget(self, worker_id: str | None) -> None:
        if worker_id is not None:
            with self.database.transaction() as connection:
                connection.execute(delete(worker_heartbeats).where(worker_heartbeats.c.worker_id == worker_id))

    def liveness(self) -> tuple[bool, str]:
        """(alive, reason) for the probe: threads alive and the heartbeat loop turning."""
        worker, loop = self._worker, self._loop
        if worker is None or loop is None:
            return False, "the worker has not finished booting"
        if self._stopping:
            return True, "the worker is stopping: it finishes its current jobs"
        dead = [f"consumer of {name}" for name, thread in list(worker.consumers.items()) if not thread.is_alive()]
        dead += ["worker thread"] * sum(not thread.is_alive() for thread in worker.workers)
        if dead:
            return False, f"{len(dead)} thread(s) died: {', '.join(dead)}"
        silent_ms = loop.silent_ms()
        if silent_ms > self.stale_after_ms:
            return False, f"the heartbeat loop has not turned for {silent_ms / 1000:.1f} s"
        return True, "worker and consumer threads alive, heartbeat loop turning"


def served_queues(worker: dramatiq.Worker) -> list[str]:
    """The queues a worker consumes, by their canonical names."""
    return sorted({q_name(name) for name in list(worker.consumers)})


def _queue_counts(worker: dramatiq.Worker, running: Iterable[_RunningJob]) -> dict[str, dict[str, int]]:
    counts = {queue: {"running": 0, "delayed": 0} for queue in served_queues(worker)}
    for job in running:
        counts.setdefault(job.queue_name, {"running": 0, "delayed": 0})["running"] += 1
    for name, consumer in list(worker.consumers.items()):
        if name != q_name(name):  # a delay queue's consumer holds its messages in memory until their eta
            counts.setdefault(q_name(name), {"running": 0, "delayed": 0})["delayed"] += consumer.delay_queue.qsize()
    return counts


def _progress(connection: Connection, message_ids: list[str]) -> dict[str, float | None]:
    if not message_ids:
        return {}
    query = select(job_status.c.message_id, job_status.c.progress).where(job_status.c.message_id.in_(message_ids))
    return {row.message_id: row.progress for row in connection.execute(query)}


def is_live(row: Mapping[str, Any], *, stale_after_ms: int, now: datetime) -> bool:
    """The row's worker beat within ``stale_after_ms`` of ``now``: it is alive (it may be stopping)."""
    return now - row["heartbeat_at"] <= timedelta(milliseconds=stale_after_ms)


def queues_served(rows: Iterable[Mapping[str, Any]], *, stale_after_ms: int, now: datetime) -> set[str]:
    """The queues some live worker consumes; a stopping worker takes no new message, so serves none."""
    return {
        queue
        for row in rows
        if is_live(row, stale_after_ms=stale_after_ms, now=now) and not row["stopping"]
        for queue in row["queues"]
    }


def list_worker_heartbeats(database: Database) -> list[dict[str, Any]]:
    """Every heartbeat row, oldest worker first; datetimes are timezone-aware (UTC)."""
    query = select(worker_heartbeats).order_by(worker_heartbeats.c.started_at, worker_heartbeats.c.worker_id)
    with database.engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(query)]
    for row in rows:
        for name in ("started_at", "last_job_finished_at", "last_success_at", "heartbeat_at"):
            row[name] = as_utc(row[name])
    return rows


class _BeatLoop(threading.Thread):
    """Calls ``beat`` now and every ``interval_ms`` until stopped; a failed beat is logged and retried."""

    def __init__(self, beat: Callable[[], None], *, interval_ms: int) -> None:
        super().__init__(name="worker-heartbeat", daemon=True)
        self._beat = beat
        self._interval_s = interval_ms / 1000
        self._stopped = threading.Event()
        self._last_turn = time.monotonic()
        self._failing = False

    def run(self) -> None:
        while True:
            self._turn()
            if self._stopped.wait(self._interval_s):
                return

    def _turn(self) -> None:
        try:
            self._beat()
        except SQLAlchemyError as error:
            if not self._failing:  # once per outage, not every few seconds
                reason = f"{type(error).__name__}: {getattr(error, 'orig', None) or error}"
                logger.warning(
                    "Could not publish this worker's heartbeat (%s); retrying every %.1f s.", reason, self._interval_s
                )
            self._failing = True
        except Exception:
            logger.exception(
                "Publishing this worker's heartbeat failed unexpectedly; retrying in %.1f s.", self._interval_s
            )
            self._failing = True
        else:
            if self._failing:
                logger.info("Publishing this worker's heartbeat again.")
            self._failing = False
        self._last_turn = time.monotonic()

    def silent_ms(self) -> float:
        return (time.monotonic() - self._last_turn) * 1000

    def stop(self, *, timeout_s: float) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join(timeout=timeout_s)
