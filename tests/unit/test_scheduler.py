"""Schedule entries and the leader's ticks, on the StubBroker: validation, tick identity, catch-up, double fires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from actors.settings import Settings
from actors.system import System
from middleware.job_status import get_job, job_status
from middleware.storage.database import Database
from middleware.storage.schedule_state import DUPLICATE, ENQUEUED, MISSED, RAN, entry_state, record_tick
from scheduler.entries import Entry, ScheduleError, load_schedule, validate
from scheduler.leader import FileLeaderLock, current_leader, lock_file_path
from scheduler.runner import TickRunner

NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # a Monday


@pytest.fixture
def report_actor(stub_broker: StubBroker) -> dramatiq.Actor:
    @dramatiq.actor(broker=stub_broker, queue_name="reports")
    def send_report(kind: str, *, copies: int = 1) -> None:
        pass

    return send_report


def runner_for(entries: list[Entry], broker: StubBroker, database: Database, **settings: str) -> TickRunner:
    env = {"DATABASE_URL": database.url, "SCHEDULER_MISFIRE_GRACE_MS": "60000", **settings}
    system = System(settings=Settings.from_env(env), database=database, broker=broker)
    return TickRunner(entries, system=system, identity="test:1")


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (
            Entry("nightly", cron="61 3 * * *", actor="send_report", args=("daily",)),
            "schedule entry 'nightly': cron '61 3 * * *' is not a valid crontab expression: Error validating "
            "expression '61': the last value (61) is higher than the maximum value (59)",
        ),
        (
            Entry("nightly", cron="0 3 * *", actor="send_report", args=("daily",)),
            "schedule entry 'nightly': cron '0 3 * *' is not a valid crontab expression: "
            "Wrong number of fields; got 4, expected 5",
        ),
        (Entry("nightly", cron="0 3 1 * 1", actor="send_report", args=("daily",)), "APScheduler only when both do"),
        (
            Entry("nightly", cron="0 3 * * *", tz="Mars/Olympus", actor="send_report", args=("daily",)),
            "schedule entry 'nightly': tz 'Mars/Olympus' is not a known time zone",
        ),
        (
            Entry("often", every="5 minutes", actor="send_report", args=("daily",)),
            "schedule entry 'often': every '5 minutes' is not an interval; write it like 30s, 5m, 1h or 1d",
        ),
        (
            Entry("often", every="5m", tz="Europe/Paris", actor="send_report", args=("daily",)),
            "tz applies to cron entries only",
        ),
        (
            Entry("both", every="5m", cron="* * * * *", actor="send_report", args=("daily",)),
            "schedule entry 'both': give exactly one of cron= or every=",
        ),
        (
            Entry("ghost", every="5m", actor="send_reprot"),
            "schedule entry 'ghost': actor 'send_reprot' is not declared; import its module in the schedule module",
        ),
        (
            Entry("no-kind", every="5m", actor="send_report"),
            "schedule entry 'no-kind': args/kwargs do not fit actor 'send_report': missing a required argument: 'kind'",
        ),
        (Entry("Bad Name", every="5m", actor="send_report", args=("daily",)), "a name is 1 to 100 lowercase"),
        (
            Entry("watch", every="5m", task="check_alert"),
            "schedule entry 'watch': task 'check_alert' is not one of the scheduler's tasks: check_alerts, "
            "refresh_gauges",
        ),
        (Entry("watch", every="5m", task="check_alerts", args=(1,)), "schedule entry 'watch': a task takes no args"),
        (
            Entry("watch", every="5m", task="check_alerts", actor="send_report"),
            "schedule entry 'watch': give exactly one of actor= or task=",
        ),
    ],
)
def test_a_bad_entry_is_refused_with_a_message_naming_it(
    stub_broker: StubBroker, report_actor: dramatiq.Actor, entry: Entry, problem: str
) -> None:
    with pytest.raises(ScheduleError) as refused:
        validate([entry], stub_broker)
    assert problem in str(refused.value)
    assert "\n" not in str(refused.value)


def test_entry_names_are_unique(stub_broker: StubBroker, report_actor: dramatiq.Actor) -> None:
    entry = Entry("daily", cron="0 3 * * *", actor="send_report", args=("daily",))
    with pytest.raises(ScheduleError, match="schedule entry 'daily' is declared twice"):
        validate([entry, entry], stub_broker)


def test_a_schedule_module_that_cannot_be_loaded_says_why() -> None:
    with pytest.raises(ScheduleError, match=r"SCHEDULE_MODULE=tests\.no_such_schedule: cannot import"):
        load_schedule("tests.no_such_schedule")
    with pytest.raises(ScheduleError, match=r"tests\.harness\.ROOT must be a list of Entry"):
        load_schedule("tests.harness:ROOT")


def test_the_shipped_schedule_is_valid() -> None:
    import actors  # noqa: F401  (declares the maintenance actors)
    from actors.system import current_system

    entries = load_schedule("scheduler.schedule")
    validate(entries, current_system().broker)
    built_in = {
        "reconcile_dead_letters",
        "purge_dead_letters",
        "purge_job_status",
        "sweep_stalled_jobs",
        "task refresh_gauges",
        "task check_alerts",
    }
    assert {entry.runs for entry in entries} >= built_in


def test_crontab_weekdays_count_from_sunday_as_in_crontab() -> None:
    # APScheduler 3 alone would read 0 as Monday (its issue 286).
    sunday = Entry("weekly", cron="0 3 * * 0", tz="Europe/Paris", actor="send_report").trigger()
    fire = sunday.get_next_fire_time(None, NOON)
    assert (fire.strftime("%A %H:%M"), fire.utcoffset()) == ("Sunday 03:00", timedelta(hours=1))
    weekdays = Entry("weekdays", cron="0 9 * * 1-5", actor="send_report").trigger()
    assert weekdays.get_next_fire_time(None, datetime(2026, 11, 28, tzinfo=UTC)).strftime("%A") == "Monday"
    every_other = Entry("alternate", cron="0 9 * * */2", actor="send_report").trigger()
    days, moment = [], NOON
    for _ in range(4):
        moment = every_other.get_next_fire_time(moment, moment + timedelta(seconds=1))
        days.append(moment.strftime("%a"))
    assert days == ["Tue", "Thu", "Sat", "Sun"]


def test_interval_ticks_fall_on_multiples_of_the_interval_whoever_computes_them() -> None:
    trigger = Entry("often", every="15m", actor="send_report").trigger()
    assert trigger.get_next_fire_time(None, NOON + timedelta(minutes=7, seconds=3)) == NOON + timedelta(minutes=15)
    assert Entry("often", every="15m", actor="x").tick_key(NOON) == "schedule:often:2026-11-23T12:00:00+00:00"


def test_two_fires_of_one_tick_enqueue_one_message(
    stub_broker: StubBroker, database: Database, report_actor: dramatiq.Actor
) -> None:
    entry = Entry("daily", cron="0 12 * * *", actor="send_report", args=("daily",), kwargs={"copies": 2})
    old_leader, new_leader = runner_for([entry], stub_broker, database), runner_for([entry], stub_broker, database)
    assert old_leader.tick(entry, scheduled_for=NOON, missed=False) == ENQUEUED
    assert new_leader.tick(entry, scheduled_for=NOON, missed=False) == DUPLICATE
    [message] = [dramatiq.Message.decode(body) for body in stub_broker.queues["reports"].queue]
    assert (message.args, message.kwargs) == (("daily",), {"copies": 2})
    assert message.options["idempotency_key"] == "schedule:daily:2026-11-23T12:00:00+00:00"
    state = entry_state(database, "daily")
    assert (state["last_outcome"], state["last_message_id"]) == (DUPLICATE, message.message_id)
    assert get_job(database, message.message_id)["status"] == "queued"


def test_a_tick_later_than_the_grace_time_is_recorded_as_missed(
    stub_broker: StubBroker, database: Database, report_actor: dramatiq.Actor
) -> None:
    entry = Entry("daily", cron="0 12 * * *", actor="send_report", args=("daily",))
    assert runner_for([entry], stub_broker, database).tick(entry, scheduled_for=NOON, missed=True) == MISSED
    assert stub_broker.queues["reports"].qsize() == 0
    assert entry_state(database, "daily")["last_outcome"] == MISSED


def test_a_new_leader_resumes_after_the_last_recorded_tick_within_the_grace_time(
    stub_broker: StubBroker, database: Database, report_actor: dramatiq.Actor
) -> None:
    recent = Entry("recent", every="10s", actor="send_report", args=("a",))
    stale = Entry("stale", every="10s", actor="send_report", args=("b",))
    new = Entry("new", every="10s", actor="send_report", args=("c",))
    task = Entry("gauges", every="10s", task="refresh_gauges")
    now = NOON + timedelta(minutes=10, seconds=35)
    for entry, last in ((recent, NOON + timedelta(minutes=10)), (stale, NOON - timedelta(hours=5)), (task, NOON)):
        record_tick(
            database, entry.name, scheduled_for=last, outcome=ENQUEUED, message_id=None, error=None, fired_by="old:1"
        )
    points = runner_for([recent, stale, new, task], stub_broker, database).resume_points(now=now)
    assert points == {
        "recent": NOON + timedelta(minutes=10, seconds=10),  # the ticks missed since 12:10:00 are caught up
        "stale": NOON + timedelta(minutes=9, seconds=40),  # not earlier than the 60 s grace time
        "new": NOON + timedelta(minutes=10, seconds=40),  # a new entry starts from now
        "gauges": NOON + timedelta(minutes=10, seconds=40),  # a task is not caught up
    }


def test_the_state_keeps_the_latest_tick_when_two_leaders_record_out_of_order(database: Database) -> None:
    for minute in (2, 1):
        record_tick(
            database,
            "tick",
            scheduled_for=NOON + timedelta(minutes=minute),
            outcome=ENQUEUED,
            message_id=f"m{minute}",
            error=None,
            fired_by="a:1",
        )
    assert entry_state(database, "tick")["last_message_id"] == "m2"


def test_the_file_lock_has_one_holder_and_is_free_once_it_is_released(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    path = lock_file_path(database, state_dir=tmp_path)
    first, second = FileLeaderLock(path, identity="host:1"), FileLeaderLock(path, identity="host:2")
    assert current_leader(database, state_dir=tmp_path) is None
    assert first.try_acquire() and not second.try_acquire()
    assert first.still_held() and current_leader(database, state_dir=tmp_path) == "host:1"
    first.release()
    assert current_leader(database, state_dir=tmp_path) is None
    assert second.try_acquire() and current_leader(database, state_dir=tmp_path) == "host:2"
    path.unlink()  # a lock whose file was replaced no longer counts
    assert not second.still_held()
    second.release()


def samples(runner: TickRunner) -> dict[tuple[str, tuple[str, ...]], float]:
    """Every sample the replica serves, by name and label values."""
    return {
        (sample.name, tuple(sample.labels.values())): sample.value
        for family in runner.metrics.collect()
        for sample in family.samples
    }


def test_the_leader_checks_alerts_and_serves_gauges_itself_with_no_worker_running(
    stub_broker: StubBroker, database: Database, report_actor: dramatiq.Actor
) -> None:
    yearly = {"cron": "0 0 1 1 *"}  # the test drives the ticks; APScheduler's own would come next January
    alerts, gauges = Entry("alerts", task="check_alerts", **yearly), Entry("gauges", task="refresh_gauges", **yearly)
    runner = runner_for([alerts, gauges], stub_broker, database, ALERT_FAILED_JOBS_THRESHOLD="1")
    report_actor.send("daily")  # waits on "reports", and no worker serves it
    with database.transaction() as connection:
        for number in range(2):
            connection.execute(
                job_status.insert().values(
                    message_id=f"failed-{number}",
                    actor_name="send_report",
                    queue_name="reports",
                    status="failed",
                    attempts=1,
                    unfinished_deliveries=0,
                    finished_at=datetime.now(UTC),
                    updated_at=datetime.now(UTC),
                )
            )
    assert samples(runner)[("jobs_scheduler_leader", ())] == 0
    runner.start()
    try:
        assert runner.tick(alerts, scheduled_for=NOON, missed=False) == RAN
        assert runner.tick(gauges, scheduled_for=NOON, missed=False) == RAN
        served = samples(runner)
    finally:
        runner.stop()
    assert served[("jobs_scheduler_leader", ())] == 1
    assert served[("jobs_alert_firing", ("jobs_waiting_without_worker", "reports"))] == 1
    assert served[("jobs_alert_firing", ("failed_jobs_above_threshold", ""))] == 1
    assert served[("jobs_queue_messages", ("reports", "waiting"))] == 1
    assert served[("jobs_scheduler_ticks_total", ("alerts", "ran"))] == 1
    assert entry_state(database, "alerts")["last_error"] == (
        "2 alert(s) firing; 1 job(s) wait on reports and no live worker consumes it; 2 job(s) failed in the last 1 h, "
        "above the threshold of 1"
    )
    after = samples(runner)
    assert after[("jobs_scheduler_leader", ())] == 0
    assert not any(name.startswith(("jobs_alert", "jobs_queue")) for name, _ in after), "a standby serves no gauges"
