"""The scheduler's own tasks: what the leader runs itself instead of enqueueing, and the metrics it serves.

Gauges and alert checks watch the system, so they must keep working when no worker runs (that is
when they matter most), and a gauge lives in the process that serves it: the leader runs these
in-process. Every replica serves :class:`SchedulerMetrics` on ``SCHEDULER_METRICS_PORT`` (0: none;
the alerts are logged either way).

- ``refresh_gauges``: queue depths, oldest waiting message, unresolved dead letters, worker
  heartbeats (``middleware/monitoring/system_gauges.py``);
- ``check_alerts``: jobs waiting with no live worker, failed jobs above ALERT_FAILED_JOBS_THRESHOLD
  (``middleware/monitoring/alerts.py``): an ``alert.firing`` event each, and the ``jobs_alert_firing`` gauge.

Served metrics: ``jobs_scheduler_leader`` (1 on the leader), ``jobs_scheduler_ticks_total{entry, outcome}``,
and while this replica leads, the gauges of its last ``refresh_gauges`` and ``check_alerts``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from actors.system import System
from middleware.monitoring import alerts
from middleware.monitoring.system_gauges import refresh_system_gauges


class Term:
    """What one leadership term serves: the system gauges and the alerts of its last checks."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.alerts = _Families()
        self.registry.register(self.alerts)


@dataclass(frozen=True)
class TaskContext:
    system: System
    term: Term


def refresh_gauges(context: TaskContext) -> str:
    system = context.system
    snapshot = refresh_system_gauges(
        system.broker,
        system.database,
        registry=context.term.registry,
        stale_after_ms=system.settings.worker_stale_after_ms,
    )
    return f"{len(snapshot.queues)} queue(s), {len(snapshot.live_workers())} live worker(s)"


def check_alerts(context: TaskContext) -> str:
    system = context.system
    settings = system.settings
    rules = alerts.AlertRules(
        failed_threshold=settings.alert_failed_jobs_threshold,
        failed_window=timedelta(milliseconds=settings.alert_failed_jobs_window_ms),
        stale_after_ms=settings.worker_stale_after_ms,
    )
    check = alerts.check_alerts(system.broker, system.database, rules=rules)
    context.term.alerts.families = alerts.alert_metric_families(check)
    return f"{len(check.alerts)} alert(s) firing" + "".join(f"; {alert.message}" for alert in check.alerts)


TASKS: dict[str, Callable[[TaskContext], str]] = {"refresh_gauges": refresh_gauges, "check_alerts": check_alerts}


class _Families:
    """Serves the metric families a task set last."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> list[Metric]:
        return list(self.families)  # a scrape sees the previous set or the new one, whole


class SchedulerMetrics:
    """The collector each replica serves: whether it leads, its ticks, and its term's task gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ticks: Counter[tuple[str, str]] = Counter()
        self._term: Term | None = None

    def begin_term(self) -> Term:
        """What the tasks of a new leadership term fill in; served until :meth:`end_term`."""
        with self._lock:
            self._term = Term()
            return self._term

    def end_term(self) -> None:
        with self._lock:
            self._term = None  # a replica that no longer leads serves no stale system gauges

    def count_tick(self, entry: str, outcome: str) -> None:
        with self._lock:
            self._ticks[entry, outcome] += 1

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            term, ticks = self._term, dict(self._ticks)
        leader = GaugeMetricFamily("jobs_scheduler_leader", "1 while this scheduler replica leads, else 0.")
        leader.add_metric([], int(term is not None))
        counted = CounterMetricFamily(
            "jobs_scheduler_ticks", "Ticks handled by this replica, by entry and outcome.", labels=["entry", "outcome"]
        )
        for (entry, outcome), count in sorted(ticks.items()):
            counted.add_metric([entry, outcome], count)
        yield leader
        yield counted
        if term is not None:
            yield from term.registry.collect()
