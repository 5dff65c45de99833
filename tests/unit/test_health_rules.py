"""The health rules as a truth table: each rule alone turns a healthy report unhealthy, and says why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from actors.settings import Settings, SettingsError
from middleware.operations.queue_stats import QueueStats
from ops.health import HealthRules, evaluate

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
RULES = HealthRules(
    stale_after_ms=30_000, failure_rate=0.05, failure_min_jobs=20, idle_after_ms=300_000, idle_min_errors=5
)


def worker(**changes: Any) -> dict[str, Any]:
    """A heartbeat row of a healthy, busy worker serving "orders"."""
    row = {
        "worker_id": "host-a:41:abcd",
        "host": "host-a",
        "pid": 41,
        "version": "0.1.0",
        "queues": ["orders"],
        "processed": 500,
        "failed": 3,
        "in_progress": 1,
        "failure_window_ms": 600_000,
        "window_processed": 100,
        "window_failed": 1,
        "failed_since_success": 0,
        "current_jobs": [
            {
                "message_id": "m-1",
                "actor_name": "charge",
                "queue_name": "orders",
                "started_at": (NOW - timedelta(seconds=3)).isoformat(),
                "progress": 0.25,
            }
        ],
        "queue_counts": {"orders": {"running": 1, "delayed": 0}},
        "stopping": False,
        "started_at": NOW - timedelta(hours=2),
        "last_job_finished_at": NOW - timedelta(seconds=4),
        "last_success_at": NOW - timedelta(seconds=4),
        "heartbeat_at": NOW - timedelta(seconds=2),
    }
    return {**row, **changes}


def queue(name: str = "orders", *, waiting: int = 12) -> QueueStats:
    return QueueStats(queue_name=name, waiting=waiting, delayed=2, in_progress=1, dead=0, oldest_waiting_age_s=8.0)


def report(workers: list[dict[str, Any]], queues: list[QueueStats] | None = None) -> dict[str, Any]:
    return evaluate(workers, queues if queues is not None else [queue()], {"orders": 2}, rules=RULES, now=NOW)


def test_a_busy_worker_with_few_failures_is_healthy_and_the_report_has_the_agreed_shape() -> None:
    result = report([worker()])
    assert result["healthy"] is True
    assert result["reason"] == "healthy: 1 live worker(s), 1 queue(s), 12 message(s) waiting"
    assert (result["checked_at"], result["dead_letters_unresolved"]) == (NOW.isoformat(), 2)
    [entry] = result["workers"]
    assert entry["current_job"] == {"message_id": "m-1", "actor_name": "charge", "progress": 0.25}
    assert (entry["heartbeat_age_s"], entry["heartbeat_at"], entry["healthy"]) == (
        2.0,
        "2026-11-23T11:59:58+00:00",
        True,
    )
    [orders] = result["queues"]
    assert orders == {
        "queue_name": "orders",
        "waiting": 12,
        "delayed": 2,
        "in_progress": 1,
        "dead": 0,
        "oldest_waiting_age_s": 8.0,
        "dead_letters_unresolved": 2,
        "healthy": True,
        "reason": "ok",
    }


@pytest.mark.parametrize(("heartbeat_age_s", "healthy"), [(29.9, True), (30.0, True), (30.1, False), (600, False)])
def test_a_worker_whose_heartbeat_is_older_than_the_stale_limit_is_unhealthy(
    heartbeat_age_s: float, healthy: bool
) -> None:
    result = report([worker(heartbeat_at=NOW - timedelta(seconds=heartbeat_age_s))])
    assert result["healthy"] is healthy
    if not healthy:
        assert result["workers"][0]["reason"] == f"no heartbeat for {heartbeat_age_s:.1f} s (stale after 30 s)"
        assert result["reason"].startswith(f"worker host-a:41:abcd: no heartbeat for {heartbeat_age_s:.1f} s")
        # ...and its queue, with messages waiting, has no live worker left.
        assert "queue orders: 12 message(s) wait and no live worker serves it" in result["reason"]


@pytest.mark.parametrize(
    ("window_processed", "window_failed", "healthy"),
    [
        (20, 1, True),  # 5 % exactly: not over the limit
        (20, 2, False),  # 10 %
        (100, 6, False),
        (19, 19, True),  # fewer jobs than HEALTH_FAILURE_MIN_JOBS: too few to judge a rate by
        (0, 0, True),
    ],
)
def test_a_worker_failing_more_than_the_rate_over_its_window_is_unhealthy(
    window_processed: int, window_failed: int, healthy: bool
) -> None:
    result = report([worker(window_processed=window_processed, window_failed=window_failed)])
    assert result["healthy"] is healthy
    if not healthy:
        rate = window_failed / window_processed
        assert result["workers"][0]["reason"] == (
            f"{window_failed} of {window_processed} jobs failed in the last 10 min ({rate:.1%}, over the 5.0% limit)"
        )


@pytest.mark.parametrize(
    ("minutes_since_success", "failed_since_success", "waiting", "healthy"),
    [
        (6, 6, 12, False),
        (6, 5, 12, True),  # not MORE than 5 errors
        (6, 6, 0, True),  # nothing waits: an idle worker is fine
        (4, 6, 12, True),  # not idle long enough
        (None, 6, 12, False),  # never succeeded since it started 2 h ago
    ],
)
def test_a_worker_with_no_success_for_the_idle_limit_while_work_waits_and_errors_pile_up_is_unhealthy(
    minutes_since_success: int | None, failed_since_success: int, waiting: int, healthy: bool
) -> None:
    last_success = None if minutes_since_success is None else NOW - timedelta(minutes=minutes_since_success)
    row = worker(
        last_success_at=last_success, failed_since_success=failed_since_success, window_processed=6, window_failed=6
    )
    result = report([row], [queue(waiting=waiting)])
    assert result["healthy"] is healthy
    if not healthy:
        idle_min = 120.0 if minutes_since_success is None else float(minutes_since_success)
        assert result["workers"][0]["reason"] == (
            f"no job has succeeded for {idle_min:.1f} min while {waiting} message(s) wait on its queues, "
            f"and {failed_since_success} failed since"
        )


def test_a_queue_with_waiting_messages_and_no_live_worker_serving_it_is_unhealthy() -> None:
    other = worker(worker_id="host-b:7:ef01", queues=["emails"])
    stopping = worker(worker_id="host-c:8:2345", stopping=True)  # takes no new message any more
    result = report(
        [other, stopping], [queue("orders", waiting=3), queue("emails", waiting=4), queue("idle", waiting=0)]
    )
    assert result["healthy"] is False
    assert result["reason"] == "queue orders: 3 message(s) wait and no live worker serves it"
    verdicts = {entry["queue_name"]: (entry["healthy"], entry["reason"]) for entry in result["queues"]}
    assert verdicts == {
        "orders": (False, "3 message(s) wait and no live worker serves it"),
        "emails": (True, "ok"),
        "idle": (True, "ok: nothing waits (no live worker)"),
    }
    assert [entry["reason"] for entry in result["workers"]] == [
        "ok: heartbeat 2.0 s ago",
        "stopping: finishing its current jobs",
    ]


def test_every_problem_is_named_on_one_line() -> None:
    result = report(
        [
            worker(heartbeat_at=NOW - timedelta(minutes=2)),
            worker(worker_id="host-b:9:9999", window_processed=40, window_failed=4),
        ],
        [queue("orders"), queue("emails", waiting=1)],
    )
    assert result["healthy"] is False
    assert "\n" not in result["reason"]
    assert result["reason"] == (
        "worker host-a:41:abcd: no heartbeat for 120.0 s (stale after 30 s); "
        "worker host-b:9:9999: 4 of 40 jobs failed in the last 10 min (10.0%, over the 5.0% limit); "
        "queue emails: 1 message(s) wait and no live worker serves it"
    )


def test_the_rules_come_from_the_settings_with_their_defaults() -> None:
    assert HealthRules.from_settings(Settings.from_env({})) == HealthRules(
        stale_after_ms=30_000, failure_rate=0.05, failure_min_jobs=20, idle_after_ms=300_000, idle_min_errors=5
    )
    settings = Settings.from_env(
        {
            "WORKER_STALE_AFTER_MS": "1500",
            "WORKER_HEARTBEAT_INTERVAL_MS": "200",
            "HEALTH_FAILURE_RATE": "0.2",
            "HEALTH_IDLE_MIN_ERRORS": "0",
        }
    )
    assert (settings.worker_stale_after_ms, settings.worker_heartbeat_interval_ms) == (1_500, 200)
    assert (settings.health_failure_rate, settings.health_idle_min_errors) == (0.2, 0)
    assert (settings.worker_health_port, settings.worker_health_bind) == (0, "127.0.0.1")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HEALTH_FAILURE_RATE": "5%"}, "HEALTH_FAILURE_RATE='5%' is not a number; set it like HEALTH_FAILURE_RATE=0"),
        ({"HEALTH_FAILURE_RATE": "5"}, "HEALTH_FAILURE_RATE=5.0 is out of range; it is a fraction between 0 and 1"),
        (
            {"WORKER_HEARTBEAT_INTERVAL_MS": "5000", "WORKER_STALE_AFTER_MS": "5000"},
            "WORKER_STALE_AFTER_MS (5000) must be longer than WORKER_HEARTBEAT_INTERVAL_MS (5000)",
        ),
        ({"WORKER_FORGET_AFTER_MS": "20000"}, "WORKER_FORGET_AFTER_MS (20000) is shorter than WORKER_STALE_AFTER_MS"),
        ({"WORKER_HEALTH_PORT": "70000"}, "WORKER_HEALTH_PORT=70000 is out of range; it must be between 0 and 65535"),
    ],
)
def test_bad_health_settings_are_refused_with_the_reason(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env(environ)
    assert str(error.value).startswith(message)


def test_a_broker_that_cannot_be_read_makes_the_report_unhealthy() -> None:
    result = evaluate([worker()], [], {}, rules=RULES, now=NOW, broker_problem="cannot read the broker's queues: X")
    assert (result["healthy"], result["reason"]) == (False, "broker: cannot read the broker's queues: X")
    assert result["workers"][0]["healthy"] is True and result["queues"] == []


def slot(**changes: Any) -> dict[str, Any]:
    """A row of worker_slots: slot 1 of a supervisor on host-a, running."""
    row = {
        "host": "host-a",
        "supervisor_pid": 900,
        "slot": 1,
        "queues": ["orders"],
        "pid": 901,
        "started_at": NOW - timedelta(minutes=5),
        "restarts": 0,
        "last_exit_code": None,
        "last_exit_reason": None,
        "state": "running",
        "updated_at": NOW - timedelta(minutes=5),
    }
    return {**row, **changes}


@pytest.mark.parametrize(
    ("changes", "healthy", "reason"),
    [
        ({}, True, "ok: running (supervisor pid 900)"),
        (
            {"state": "restarting", "restarts": 1, "last_exit_reason": "killed by SIGKILL after 40.2 s"},
            True,
            "restarting (supervisor pid 900); its last run killed by SIGKILL after 40.2 s",
        ),
        (
            {
                "state": "stopped: crash loop",
                "restarts": 4,
                "last_exit_code": 1,
                "last_exit_reason": "exited with code 1 after 0.3 s",
            },
            False,
            "stopped in a crash loop (supervisor pid 900, 4 restart(s)); its last run exited with code 1 after 0.3 s",
        ),
        (
            {"state": "stopped", "last_exit_code": 2, "last_exit_reason": "exited with code 2 after 1.5 s"},
            False,
            "stopped, not restarted (supervisor pid 900); its last run exited with code 2 after 1.5 s",
        ),
    ],
)
def test_a_worker_slot_its_supervisor_stopped_is_unhealthy_and_named_by_host_and_slot(
    changes: dict[str, Any], healthy: bool, reason: str
) -> None:
    result = evaluate([worker()], [queue()], {}, rules=RULES, now=NOW, worker_slots=[slot(**changes)])
    [entry] = result["worker_slots"]
    assert (entry["healthy"], entry["reason"]) == (healthy, reason)
    assert (entry["started_at"], entry["host"], entry["slot"]) == ("2026-11-23T11:55:00+00:00", "host-a", 1)
    assert result["healthy"] is healthy
    if not healthy:
        assert result["reason"] == f"worker slot 1 on host-a: {reason}"


def test_with_no_supervisor_the_report_has_no_worker_slots() -> None:
    assert report([worker()])["worker_slots"] == []
