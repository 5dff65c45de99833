"""Alert checks: conditions an operator must hear about (the scheduler's ``check_alerts`` task runs them).

1. ``jobs_waiting_without_worker``: messages wait on a queue and no live worker (a
   ``worker_heartbeats`` row fresher than ``stale_after_ms``, not stopping) consumes it;
2. ``failed_jobs_above_threshold``: more than ``failed_threshold`` jobs failed within
   ``failed_window``.

:func:`evaluate_alerts` is the rules, a pure function of queue stats, heartbeat rows and the failed
count; :func:`check_alerts` gathers those and emits one ``alert.firing`` event per alert;
:func:`alert_metric_families` is the ``jobs_alert_firing`` gauge of one check.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import func, select

from middleware.job_logs import emit_event
from middleware.job_status import FAILED, job_status
from middleware.operations.queue_stats import QueueStats, queue_stats
from middleware.storage.database import Database
from middleware.worker_health import list_worker_heartbeats, queues_served

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
    served = queues_served(workers, stale_after_ms=rules.stale_after_ms, now=now)
    alerts = [
        Alert(
            JOBS_WAITING_WITHOUT_WORKER,
            stats.queue_name,
            stats.waiting,
            0,
            f"{stats.waiting} job(s) wait on {stats.queue_name} and no live worker consumes it",
        )
        for stats in queues
        if stats.waiting and stats.queue_name not in served
    ]
    if failed_recently > rules.failed_threshold:
        window = _describe(rules.failed_window)
        alerts.append(
            Alert(
                FAILED_JOBS_ABOVE_THRESHOLD,
                None,
                failed_recently,
                rules.failed_threshold,
                f"{failed_recently} job(s) failed in the last {window}, above the threshold of "
                f"{rules.failed_threshold}",
            )
        )
    return alerts


@dataclass(frozen=True)
class AlertCheck:
    alerts: list[Alert]
    #: Every queue looked at, firing or not: each gets a series, 0 when quiet.
    queue_names: list[str]


def check_alerts(broker: dramatiq.Broker, database: Database, *, rules: AlertRules) -> AlertCheck:
    now = datetime.now(UTC)
    workers = list_worker_heartbeats(database)
    queues = queue_stats(broker, database, stale_after_ms=rules.stale_after_ms, now=now, heartbeats=workers)
    alerts = evaluate_alerts(
        queues,
        workers,
        failed_recently=failed_since(database, now - rules.failed_window),
        rules=rules,
        now=now,
    )
    for alert in alerts:
        emit_event("alert.firing", level=logging.WARNING, **alert.to_dict())
    return AlertCheck(alerts, [stats.queue_name for stats in queues])


def alert_metric_families(check: AlertCheck) -> list[Metric]:
    """``jobs_alert_firing{alert, queue_name}``: 1 while an alert fires, else 0 (system-wide alerts have
    queue_name ""), so a Prometheus rule can alert on ``jobs_alert_firing == 1``."""
    firing = GaugeMetricFamily(
        "jobs_alert_firing", "1 while the alert fires, from the scheduler's last check.", labels=["alert", "queue_name"]
    )
    fired = {(alert.name, alert.queue or "") for alert in check.alerts}
    for queue_name in sorted(set(check.queue_names)):
        firing.add_metric(
            [JOBS_WAITING_WITHOUT_WORKER, queue_name], int((JOBS_WAITING_WITHOUT_WORKER, queue_name) in fired)
        )
    firing.add_metric([FAILED_JOBS_ABOVE_THRESHOLD, ""], int((FAILED_JOBS_ABOVE_THRESHOLD, "") in fired))
    return [firing]


def failed_since(database: Database, since: datetime) -> int:
    query = (
        select(func.count())
        .select_from(job_status)
        .where(job_status.c.status == FAILED, job_status.c.finished_at >= since)
    )
    with database.engine.connect() as connection:
        return connection.execute(query).scalar_one()


def _describe(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
