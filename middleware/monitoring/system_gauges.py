"""System-wide gauges: queue depths, oldest waiting message, dead letters, worker heartbeats.

No worker process sees these (a worker knows its own jobs, not the queues or the other workers),
so they are read from the broker and the database whenever they are collected:

1. :class:`SystemCollector` reads them on every scrape (``python -m ops exporter`` serves it): the
   values are as fresh as the scrape, and a broker or database that does not answer fails the
   scrape, so Prometheus's ``up`` says so instead of serving old numbers.
2. :func:`refresh_system_gauges` reads them now and keeps them in a registry until the next call,
   for a process that refreshes on its own schedule (the scheduler).

Gauges (``queue_name`` as in the worker metrics):

    jobs_queue_messages{queue_name, state}          waiting, delayed, in_progress, dead (broker DLQ)
    jobs_queue_oldest_waiting_age_seconds{queue_name}  0 when nothing waits
    jobs_queue_live_workers{queue_name}             workers with a fresh heartbeat serving the queue
    jobs_dead_letters_unresolved{queue_name, kind}  rows of dead_letters not resolved (fatal, retryable, poison)
    jobs_worker_heartbeat_age_seconds{worker_id, host}
    jobs_worker_idle_seconds{worker_id, queue_name} 0 while the worker runs a job, else since its last one
    jobs_worker_slots{host, state}                  slots of python -m ops workers (running, restarting,
                                                    stopped, crash_loop), every state of every host with one
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dramatiq
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import func, select

from middleware.dead_letters import KINDS, dead_letters
from middleware.operations.queue_stats import QueueStats, queue_stats
from middleware.storage.database import Database
from middleware.storage.worker_slots import CRASH_LOOP, RESTARTING, RUNNING, STOPPED, list_worker_slots
from middleware.worker_health import DEFAULT_STALE_AFTER_MS, is_live, list_worker_heartbeats

QUEUE_STATES = ("waiting", "delayed", "in_progress", "dead")
#: The ``state`` label of jobs_worker_slots for each state of a worker_slots row.
SLOT_STATE_LABELS = {RUNNING: "running", RESTARTING: "restarting", STOPPED: "stopped", CRASH_LOOP: "crash_loop"}


@dataclass(frozen=True)
class SystemSnapshot:
    taken_at: datetime
    queues: list[QueueStats]
    unresolved: dict[tuple[str, str], int]  # (queue_name, kind) -> unresolved dead letters
    workers: list[dict]  # worker_heartbeats rows
    stale_after_ms: int
    worker_slots: list[dict] = field(default_factory=list)  # worker_slots rows

    def live_workers(self) -> list[dict]:
        return [
            worker for worker in self.workers if is_live(worker, stale_after_ms=self.stale_after_ms, now=self.taken_at)
        ]


def take_snapshot(
    broker: dramatiq.Broker, database: Database, *, stale_after_ms: int = DEFAULT_STALE_AFTER_MS
) -> SystemSnapshot:
    now = datetime.now(UTC)
    query = (
        select(dead_letters.c.queue_name, dead_letters.c.kind, func.count())
        .where(dead_letters.c.resolved.is_(False))
        .group_by(dead_letters.c.queue_name, dead_letters.c.kind)
    )
    with database.engine.connect() as connection:
        # Indexed, not unpacked: mypy 1 types an unpacked Row's values as object.
        unresolved = {(row[0], row[1]): row[2] for row in connection.execute(query)}
    workers = list_worker_heartbeats(database)
    return SystemSnapshot(
        taken_at=now,
        queues=queue_stats(broker, database, stale_after_ms=stale_after_ms, now=now, heartbeats=workers),
        unresolved=unresolved,
        workers=workers,
        stale_after_ms=stale_after_ms,
        worker_slots=list_worker_slots(database),
    )


def metric_families(snapshot: SystemSnapshot) -> list[Metric]:
    """The gauges of one snapshot. Every queue gets every state and kind (0 included), so a rate or
    a comparison always has a series to work on."""
    messages = GaugeMetricFamily("jobs_queue_messages", "Messages per queue and state.", labels=["queue_name", "state"])
    oldest = GaugeMetricFamily(
        "jobs_queue_oldest_waiting_age_seconds",
        "Age of the oldest waiting message; 0 when none waits.",
        labels=["queue_name"],
    )
    live = GaugeMetricFamily(
        "jobs_queue_live_workers", "Workers with a fresh heartbeat that serve the queue.", labels=["queue_name"]
    )
    unresolved = GaugeMetricFamily(
        "jobs_dead_letters_unresolved", "Unresolved rows of the dead_letters table.", labels=["queue_name", "kind"]
    )
    heartbeat_age = GaugeMetricFamily(
        "jobs_worker_heartbeat_age_seconds",
        "Time since each worker process's last heartbeat row.",
        labels=["worker_id", "host"],
    )
    idle = GaugeMetricFamily(
        "jobs_worker_idle_seconds",
        "0 while the worker runs a job, else the time since its last job ended (or it started).",
        labels=["worker_id", "queue_name"],
    )
    slots = GaugeMetricFamily(
        "jobs_worker_slots",
        "Worker slots of python -m ops workers per host and state; crash_loop: stopped, not restarted again.",
        labels=["host", "state"],
    )
    live_workers = snapshot.live_workers()
    queue_names = sorted({stats.queue_name for stats in snapshot.queues} | {queue for queue, _ in snapshot.unresolved})
    by_name = {stats.queue_name: stats for stats in snapshot.queues}
    for queue_name in queue_names:
        stats = by_name.get(queue_name)
        for state in QUEUE_STATES:
            messages.add_metric([queue_name, state], getattr(stats, state) if stats else 0)
        oldest.add_metric([queue_name], (stats.oldest_waiting_age_s or 0.0) if stats else 0.0)
        live.add_metric([queue_name], sum(queue_name in worker["queues"] for worker in live_workers))
        for kind in KINDS:
            unresolved.add_metric([queue_name, kind], snapshot.unresolved.get((queue_name, kind), 0))
    now = snapshot.taken_at
    for worker in snapshot.workers:
        heartbeat_age.add_metric([worker["worker_id"], worker["host"]], _seconds(now, worker["heartbeat_at"]))
    for worker in live_workers:
        last_activity = worker["last_job_finished_at"] or worker["started_at"]
        idle_s = 0.0 if worker["in_progress"] else _seconds(now, last_activity)
        for queue_name in worker["queues"]:
            idle.add_metric([worker["worker_id"], queue_name], idle_s)
    for host in sorted({row["host"] for row in snapshot.worker_slots}):
        states = [SLOT_STATE_LABELS[row["state"]] for row in snapshot.worker_slots if row["host"] == host]
        for state in SLOT_STATE_LABELS.values():
            slots.add_metric([host, state], states.count(state))
    return [messages, oldest, live, unresolved, heartbeat_age, idle, slots]


class SystemCollector:
    """Reads the system gauges from the broker and the database at every collection (every scrape).

    Always on one thread of its own: the HTTP server answers each scrape on a new thread, and a
    RabbitMQ broker opens a connection per thread that asks it something.
    """

    def __init__(self, broker: dramatiq.Broker, database: Database, *, stale_after_ms: int = DEFAULT_STALE_AFTER_MS):
        self.broker = broker
        self.database = database
        self.stale_after_ms = stale_after_ms
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="system-gauges")

    def collect(self) -> Iterator[Metric]:
        snapshot = self._reader.submit(take_snapshot, self.broker, self.database, stale_after_ms=self.stale_after_ms)
        return iter(metric_families(snapshot.result()))


class _LastSnapshot:
    """Serves the gauges of the last :func:`refresh_system_gauges` call."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


#: By registry, weakly: a registry dropped and another made at the same address must not share one.
_last_snapshots: weakref.WeakKeyDictionary[CollectorRegistry, _LastSnapshot] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def refresh_system_gauges(
    broker: dramatiq.Broker,
    database: Database,
    *,
    registry: CollectorRegistry = REGISTRY,
    stale_after_ms: int = DEFAULT_STALE_AFTER_MS,
) -> SystemSnapshot:
    """Read the system gauges now; ``registry`` serves them until the next call."""
    snapshot = take_snapshot(broker, database, stale_after_ms=stale_after_ms)
    families = metric_families(snapshot)
    with _lock:
        holder = _last_snapshots.get(registry)
        if holder is None:
            holder = _last_snapshots[registry] = _LastSnapshot()
            registry.register(holder)
        holder.families = families  # one assignment: a scrape sees the old set or the new one, whole
    return snapshot


def _seconds(now: datetime, then: datetime) -> float:
    return max(0.0, (now - then).total_seconds())
