"""python -m ops health: is every worker and queue healthy? Exit 0 or 1, with a one-line reason.

A worker is unhealthy when
1. its heartbeat is older than WORKER_STALE_AFTER_MS (it died, hung, or lost the database);
2. over its last HEALTH_FAILURE_WINDOW_MS, more than HEALTH_FAILURE_RATE of its jobs failed
   (judged once it has finished HEALTH_FAILURE_MIN_JOBS jobs in the window);
3. no job of its has succeeded for HEALTH_IDLE_AFTER_MS while messages wait on its queues, and more
   than HEALTH_IDLE_MIN_ERRORS jobs failed since its last success.
A queue is unhealthy when messages wait and no live worker serves it. A worker slot of
``python -m ops workers`` (the ``worker_slots`` table) is unhealthy once its supervisor stopped it
and will not restart it: a crash loop, or exit code 2.

:func:`evaluate` is the rules, a pure function of heartbeat rows, queue stats, worker slot rows and
:class:`HealthRules`; :func:`health_report` gathers those for the configured system.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from middleware.operations.queue_stats import QueueStats
from middleware.storage.worker_slots import CRASH_LOOP, RESTARTING, is_stopped
from middleware.worker_health import is_live, queues_served
from ops.output import print_json

if TYPE_CHECKING:
    from actors.settings import Settings
    from actors.system import System

EXIT_HEALTHY, EXIT_UNHEALTHY = 0, 1


@dataclass(frozen=True, kw_only=True)
class HealthRules:
    stale_after_ms: int = 30_000
    failure_rate: float = 0.05
    failure_min_jobs: int = 20
    idle_after_ms: int = 300_000
    idle_min_errors: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> HealthRules:
        return cls(
            stale_after_ms=settings.worker_stale_after_ms,
            failure_rate=settings.health_failure_rate,
            failure_min_jobs=settings.health_failure_min_jobs,
            idle_after_ms=settings.health_idle_after_ms,
            idle_min_errors=settings.health_idle_min_errors,
        )


def health_report(system: System) -> dict[str, Any]:
    """The health of every worker with a heartbeat row and every queue, judged by the system's settings.

    {"healthy", "reason" (one line), "checked_at" (ISO-8601), "dead_letters_unresolved",
     "workers": [{worker_id, host, pid, version, queues, processed, failed, in_progress, current_job,
                  last_job_finished_at, heartbeat_at, heartbeat_age_s, healthy, reason, ...}],
     "worker_slots": [{host, supervisor_pid, slot, queues, pid, started_at, restarts, last_exit_code,
                       last_exit_reason, state, updated_at, healthy, reason}],
     "queues": [{**QueueStats.to_dict(), dead_letters_unresolved, healthy, reason}]}
    """
    from middleware.operations.dead_letter_store import stats as dead_letter_stats
    from middleware.operations.queue_stats import BrokerUnavailable, queue_stats
    from middleware.storage.worker_slots import list_worker_slots
    from middleware.worker_health import list_worker_heartbeats

    settings, database, now = system.settings, system.database, datetime.now(UTC)
    workers = list_worker_heartbeats(database)
    try:
        queues = queue_stats(
            system.broker, database, stale_after_ms=settings.worker_stale_after_ms, now=now, heartbeats=workers
        )
        broker_problem = None
    except BrokerUnavailable as error:
        queues, broker_problem = [], str(error)
    unresolved = {row["queue"]: row["unresolved"] for row in dead_letter_stats(database)}
    return evaluate(
        workers,
        queues,
        unresolved,
        rules=HealthRules.from_settings(settings),
        now=now,
        broker_problem=broker_problem,
        worker_slots=list_worker_slots(database),
    )


def evaluate(
    workers: Sequence[Mapping[str, Any]],
    queues: Sequence[QueueStats],
    dead_letters_unresolved: Mapping[str, int],
    *,
    rules: HealthRules,
    now: datetime,
    broker_problem: str | None = None,
    worker_slots: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The health report (see :func:`health_report`) from heartbeat rows, queue stats and the rows of
    ``worker_slots``.

    ``broker_problem`` says why the queues could not be read; that alone makes the report unhealthy.
    """
    waiting = {stats.queue_name: stats.waiting for stats in queues}
    worker_reports = [_worker_report(row, waiting, rules=rules, now=now) for row in workers]
    slot_reports = [_slot_report(row) for row in worker_slots]
    # A stopping worker takes no new message: it serves no queue any more.
    serving = queues_served(workers, stale_after_ms=rules.stale_after_ms, now=now)
    queue_reports = [
        {
            **stats.to_dict(),
            "dead_letters_unresolved": dead_letters_unresolved.get(stats.queue_name, 0),
            **_judge_queue(stats, serving),
        }
        for stats in queues
    ]
    problems = [f"broker: {broker_problem}"] if broker_problem else []
    problems += [
        f"worker {report['worker_id']}: {report['reason']}" for report in worker_reports if not report["healthy"]
    ]
    problems += [
        f"worker slot {report['slot']} on {report['host']}: {report['reason']}"
        for report in slot_reports
        if not report["healthy"]
    ]
    problems += [
        f"queue {report['queue_name']}: {report['reason']}" for report in queue_reports if not report["healthy"]
    ]
    live = sum(1 for row in workers if is_live(row, stale_after_ms=rules.stale_after_ms, now=now))
    summary = f"{live} live worker(s), {len(queue_reports)} queue(s), {sum(waiting.values())} message(s) waiting"
    return {
        "healthy": not problems,
        "reason": "; ".join(problems) if problems else f"healthy: {summary}",
        "checked_at": now.isoformat(),
        "dead_letters_unresolved": sum(dead_letters_unresolved.values()),
        "workers": worker_reports,
        "worker_slots": slot_reports,
        "queues": queue_reports,
    }


def judge_slot(row: Mapping[str, Any]) -> tuple[bool, str]:
    """(healthy, reason) for one row of ``worker_slots``: a slot its supervisor stopped is unhealthy."""
    last = f"its last run {row['last_exit_reason']}" if row["last_exit_reason"] else "it never ran"
    supervisor = f"supervisor pid {row['supervisor_pid']}"
    if row["state"] == CRASH_LOOP:
        return False, f"stopped in a crash loop ({supervisor}, {row['restarts']} restart(s)); {last}"
    if is_stopped(row):
        return False, f"stopped, not restarted ({supervisor}); {last}"
    if row["state"] == RESTARTING:
        return True, f"restarting ({supervisor}); {last}"
    return True, f"ok: running ({supervisor})"


def judge_worker(
    row: Mapping[str, Any], waiting: Mapping[str, int], *, rules: HealthRules, now: datetime
) -> tuple[bool, str]:
    """(healthy, reason) for one heartbeat row; ``waiting`` is the messages waiting per queue."""
    age_s = (now - row["heartbeat_at"]).total_seconds()
    if not is_live(row, stale_after_ms=rules.stale_after_ms, now=now):
        return False, f"no heartbeat for {age_s:.1f} s (stale after {rules.stale_after_ms / 1000:g} s)"
    processed, failed = row["window_processed"], row["window_failed"]
    window_min = row["failure_window_ms"] / 60_000
    if processed >= rules.failure_min_jobs and failed / processed > rules.failure_rate:
        return False, (
            f"{failed} of {processed} jobs failed in the last {window_min:g} min "
            f"({failed / processed:.1%}, over the {rules.failure_rate:.1%} limit)"
        )
    since = row["last_success_at"] or row["started_at"]
    idle_s = (now - since).total_seconds()
    backlog = sum(waiting.get(queue, 0) for queue in row["queues"])
    errors = row["failed_since_success"]
    if idle_s * 1000 >= rules.idle_after_ms and backlog and errors > rules.idle_min_errors:
        return False, (
            f"no job has succeeded for {idle_s / 60:.1f} min while {backlog} message(s) wait on its "
            f"queues, and {errors} failed since"
        )
    if row["stopping"]:
        return True, "stopping: finishing its current jobs"
    return True, f"ok: heartbeat {age_s:.1f} s ago"


def _worker_report(
    row: Mapping[str, Any], waiting: Mapping[str, int], *, rules: HealthRules, now: datetime
) -> dict[str, Any]:
    healthy, reason = judge_worker(row, waiting, rules=rules, now=now)
    current_jobs = list(row["current_jobs"])
    current_job = current_jobs[0] if current_jobs else None  # the longest-running one
    return {
        **{name: _jsonable(value) for name, value in row.items()},
        "current_job": None
        if current_job is None
        else {
            "message_id": current_job["message_id"],
            "actor_name": current_job["actor_name"],
            "progress": current_job["progress"],
        },
        "heartbeat_age_s": round((now - row["heartbeat_at"]).total_seconds(), 3),
        "healthy": healthy,
        "reason": reason,
    }


def _slot_report(row: Mapping[str, Any]) -> dict[str, Any]:
    healthy, reason = judge_slot(row)
    return {**{name: _jsonable(value) for name, value in row.items()}, "healthy": healthy, "reason": reason}


def _judge_queue(stats: QueueStats, serving: set[str]) -> dict[str, Any]:
    if stats.waiting and stats.queue_name not in serving:
        return {"healthy": False, "reason": f"{stats.waiting} message(s) wait and no live worker serves it"}
    return {"healthy": True, "reason": "ok" if stats.queue_name in serving else "ok: nothing waits (no live worker)"}


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def add_commands(commands: argparse._SubParsersAction) -> None:
    health = commands.add_parser("health", help="exit 0 when every worker and queue is healthy, else 1 and why")
    health.add_argument("--json", action="store_true", help="print the full report as JSON")
    health.set_defaults(handler=_health)


def _health(args: argparse.Namespace) -> int:
    from actors.system import current_system
    from ops.queues import quiet_pika

    quiet_pika()
    report = health_report(current_system())
    print_json(report) if args.json else print(report["reason"])
    return EXIT_HEALTHY if report["healthy"] else EXIT_UNHEALTHY
