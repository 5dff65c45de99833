"""System gauges: what a snapshot of queues, dead letters and worker heartbeats turns into."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dramatiq
from dramatiq.brokers.stub import StubBroker
from prometheus_client import CollectorRegistry

from middleware.monitoring.system_gauges import SystemSnapshot, metric_families, refresh_system_gauges
from middleware.operations.queue_stats import QueueStats
from middleware.storage.database import Database

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def worker(
    worker_id: str,
    queues: list[str],
    *,
    heartbeat_s_ago: float,
    in_progress: int = 0,
    finished_s_ago: float | None = None,
) -> dict:
    return {
        "worker_id": worker_id,
        "host": "h1",
        "queues": queues,
        "in_progress": in_progress,
        "heartbeat_at": NOW - timedelta(seconds=heartbeat_s_ago),
        "started_at": NOW - timedelta(hours=1),
        "last_job_finished_at": None if finished_s_ago is None else NOW - timedelta(seconds=finished_s_ago),
    }


def samples(snapshot: SystemSnapshot) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in metric_families(snapshot)
        for sample in family.samples
    }


def test_a_snapshot_becomes_gauges_with_every_queue_state_and_kind() -> None:
    snapshot = SystemSnapshot(
        taken_at=NOW,
        queues=[QueueStats("transcription", 2, 1, 1, 3, 12.5), QueueStats("notifications", 0, 0, 0, 0, None)],
        unresolved={("transcription", "fatal"): 2, ("retired", "poison"): 1},
        workers=[
            worker("w1", ["transcription"], heartbeat_s_ago=1, finished_s_ago=40),
            worker("w2", ["transcription", "notifications"], heartbeat_s_ago=2, in_progress=1, finished_s_ago=900),
            worker("w3", ["notifications"], heartbeat_s_ago=60),  # stale: not live
        ],
        stale_after_ms=30_000,
    )
    found = samples(snapshot)

    def value(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    assert [
        value("jobs_queue_messages", queue_name="transcription", state=state)
        for state in ("waiting", "delayed", "in_progress", "dead")
    ] == [2, 1, 1, 3]
    assert value("jobs_queue_messages", queue_name="retired", state="waiting") == 0  # only in dead_letters
    assert value("jobs_queue_oldest_waiting_age_seconds", queue_name="transcription") == 12.5
    assert value("jobs_queue_oldest_waiting_age_seconds", queue_name="notifications") == 0
    assert value("jobs_queue_live_workers", queue_name="transcription") == 2
    assert value("jobs_queue_live_workers", queue_name="notifications") == 1
    assert value("jobs_dead_letters_unresolved", queue_name="transcription", kind="fatal") == 2
    assert value("jobs_dead_letters_unresolved", queue_name="transcription", kind="poison") == 0
    assert value("jobs_dead_letters_unresolved", queue_name="retired", kind="poison") == 1
    assert value("jobs_worker_heartbeat_age_seconds", worker_id="w3", host="h1") == 60
    assert value("jobs_worker_idle_seconds", worker_id="w1", queue_name="transcription") == 40
    assert value("jobs_worker_idle_seconds", worker_id="w2", queue_name="notifications") == 0  # running a job
    assert not any(name == "jobs_worker_idle_seconds" and ("worker_id", "w3") in labels for name, labels in found)


def test_refreshing_replaces_the_gauges_a_registry_serves(database: Database) -> None:
    broker = StubBroker()
    broker.emit_after("process_boot")

    @dramatiq.actor(broker=broker)
    def job() -> None:
        pass

    registry = CollectorRegistry()
    waiting = {"queue_name": "default", "state": "waiting"}
    job.send()
    refresh_system_gauges(broker, database, registry=registry)
    assert registry.get_sample_value("jobs_queue_messages", waiting) == 1
    job.send()
    snapshot = refresh_system_gauges(broker, database, registry=registry)
    assert registry.get_sample_value("jobs_queue_messages", waiting) == 2
    assert "default" in [stats.queue_name for stats in snapshot.queues]
    broker.close()


def test_worker_slots_are_counted_per_host_and_state_with_every_state_present() -> None:
    def slot(host: str, number: int, state: str) -> dict:
        return {"host": host, "supervisor_pid": 7, "slot": number, "state": state}

    snapshot = SystemSnapshot(
        taken_at=NOW,
        queues=[],
        unresolved={},
        workers=[],
        stale_after_ms=30_000,
        worker_slots=[
            slot("h1", 0, "running"),
            slot("h1", 1, "stopped: crash loop"),
            slot("h1", 2, "stopped: crash loop"),
            slot("h2", 0, "restarting"),
        ],
    )
    found = {labels: value for (name, labels), value in samples(snapshot).items() if name == "jobs_worker_slots"}
    assert found == {
        (("host", host), ("state", state)): count
        for host, counts in {"h1": (1, 0, 0, 2), "h2": (0, 1, 0, 0)}.items()
        for state, count in zip(("running", "restarting", "stopped", "crash_loop"), counts, strict=True)
    }
