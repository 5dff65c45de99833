"""Alert checks: conditions an operator must hear about, run by the ``check_alerts`` maintenance actor.

1. ``jobs_waiting_without_worker``: messages wait on a queue and no live worker (a
   ``worker_heartbeats`` row fresher than ``stale_after_ms``, not stopping) consumes it;
2. ``failed_jobs_above_threshold``: more than ``failed_threshold`` jobs failed within
   ``failed_window``.

:func:`evaluate_alerts` is the rules, a pure function of queue stats, heartbeat rows and the failed
count; :func:`check_alerts` gathers those and emits one ``alert.firing`` event per alert.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
from sqlalchemy import func, select

from middleware.database import Database
from middleware.job_logs import emit_event
from middleware.job_status import FAILED, job_status
from middleware.queue_stats import QueueStats, queue_stats
from middleware.worker_health import list_worker_heartbeats

JOBS_WAITING_WITHOUT_WORKER = "jobs_waiting_without_worker"
FAILED_JOBS_ABOVE_THRESHOLD = "failed_jobs_above_threshold"
ALERT_NAMES = (JOBS_WAITING_WITHOUT_WORKER, FAILED_JOBS_ABOVE_THRESHOLD)


@dataclass(frozen=True)
class Alert:
    name: str
    #: The queue concerned, or None for the whole system.
    queue: str | None
    value: int
    threshold: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class AlertRules:
    failed_threshold: int = 10
    failed_window: timedelta = timedelta(hours=1)
    stale_after_ms: int = 30_000


def evaluate_alerts(
    queues: Sequence[QueueStats],
    workers: Sequence[Mapping[str, Any]],
    *,
    failed_recently: int,
    rules: AlertRules,
    now: datetime,
) -> list[Alert]:
    """The alerts firing now, from queue stats, worker heartbeat rows and the recent failed-job count."""
    fresh_after = now - timedelta(milliseconds=rules.stale_after_ms)
    served = {queue for row in workers if row["heartbeat_at"] >= fresh_after and not row["stopping"]
              for queue in row["queues"]}  # fmt: skip
    alerts = [
        Alert(JOBS_WAITING_WITHOUT_WORKER, stats.queue_name, stats.waiting, 0,
              f"{stats.waiting} job(s) wait on {stats.queue_name} and no live worker consumes it")
        for stats in queues
        if stats.waiting and stats.queue_name not in served
    ]  # fmt: skip
    if failed_recently > rules.failed_threshold:
        window = _describe(rules.failed_window)
        alerts.append(
            Alert(FAILED_JOBS_ABOVE_THRESHOLD, None, failed_recently, rules.failed_threshold,
                  f"{failed_recently} job(s) failed in the last {window}, above the threshold of "
                  f"{rules.failed_threshold}")
        )  # fmt: skip
    return alerts


def check_alerts(broker: dramatiq.Broker, database: Database, *, rules: AlertRules) -> list[Alert]:
    now = datetime.now(UTC)
    queues = queue_stats(broker, database, stale_after_ms=rules.stale_after_ms, now=now)
    alerts = evaluate_alerts(
        queues, list_worker_heartbeats(database), failed_recently=failed_since(database, now - rules.failed_window),
        rules=rules, now=now,
    )  # fmt: skip
    for alert in alerts:
        emit_event("alert.firing", level=logging.WARNING, **alert.to_dict())
    return alerts


def failed_since(database: Database, since: datetime) -> int:
    query = (
        select(func.count())
        .select_from(job_status)
        .where(job_status.c.status == FAILED, job_status.c.finished_at >= since)
    )
    with database.engine.connect() as connection:
        return connection.scalar(query)


def _describe(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
