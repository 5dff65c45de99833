"""WorkerHealth on the StubBroker: counters, the heartbeat row, the liveness probe, a port already taken."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, Shutdown
from sqlalchemy import insert

from middleware import worker_health
from middleware.errors import FatalError
from middleware.job_status import JobStatus, report_progress
from middleware.retries import Retries
from middleware.storage.database import Database
from middleware.worker_health import WorkerHealth, list_worker_heartbeats, worker_heartbeats
from tests.harness import free_port, wait_until


def healthz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def build(database: Database, **options) -> tuple[StubBroker, WorkerHealth]:
    health = WorkerHealth(database=database, version="9.9.9", interval_ms=50, stale_after_ms=1_000, **options)
    broker = StubBroker(
        middleware=[
            health,
            CurrentMessage(),
            JobStatus(database=database),
            Retries(min_backoff=10, max_backoff=20, requeue_delay_ms=10),
        ]
    )
    broker.emit_after("process_boot")
    return broker, health


@pytest.fixture
def health_broker(database: Database) -> Iterator[tuple[StubBroker, WorkerHealth]]:
    broker, health = build(database)
    yield broker, health
    broker.close()


def test_the_heartbeat_row_counts_successes_and_failures_but_not_interruptions(
    health_broker: tuple[StubBroker, WorkerHealth], database: Database
) -> None:
    broker, health = health_broker
    interrupted: list[bool] = []

    @dramatiq.actor(broker=broker, queue_name="orders")
    def ok() -> None:
        pass

    @dramatiq.actor(broker=broker, queue_name="orders")
    def broken() -> None:
        raise FatalError("no such customer")

    @dramatiq.actor(broker=broker, queue_name="orders")
    def deployed_over() -> None:
        if not interrupted:
            interrupted.append(True)
            raise Shutdown("a deploy")  # handed back by Retries at no cost: runs again, succeeds

    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        for _ in range(3):
            ok.send()
        broken.send()
        deployed_over.send()
        broker.join("orders", fail_fast=False)
        worker.join()
        health.publish()
        [row] = list_worker_heartbeats(database)
    finally:
        worker.stop()
    assert (row["processed"], row["failed"], row["in_progress"]) == (5, 1, 0)
    assert (row["window_processed"], row["window_failed"], row["failure_window_ms"]) == (5, 1, 600_000)
    assert (row["queues"], row["version"], row["stopping"], row["current_jobs"]) == (["orders"], "9.9.9", False, [])
    assert row["queue_counts"] == {"orders": {"running": 0, "delayed": 0}}
    assert row["worker_id"] == health.worker_id and row["pid"] > 0 and row["host"]
    assert row["started_at"] <= row["last_job_finished_at"] <= row["heartbeat_at"]
    assert list_worker_heartbeats(database) == [], "a worker that stops removes its row"


def test_the_running_job_and_its_progress_are_published_by_the_heartbeat_thread(
    health_broker: tuple[StubBroker, WorkerHealth], database: Database
) -> None:
    broker, _health = health_broker
    release = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="transcription")
    def transcribe() -> None:
        report_progress(database, 0.4)
        release.wait(timeout=30)

    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        message = transcribe.send()
        [row] = wait_until(
            lambda: [row for row in list_worker_heartbeats(database) if row["current_jobs"]],
            timeout_s=10,
            what="the running job in the heartbeat row",
        )
        [job] = row["current_jobs"]
        assert (job["message_id"], job["actor_name"], job["queue_name"]) == (
            message.message_id,
            "transcribe",
            "transcription",
        )
        wait_until(
            lambda: list_worker_heartbeats(database)[0]["current_jobs"][0]["progress"] == 0.4,
            timeout_s=10,
            what="the job's progress in the heartbeat row",
        )
        assert list_worker_heartbeats(database)[0]["queue_counts"]["transcription"]["running"] == 1
        release.set()
        broker.join("transcription")
        worker.join()
        wait_until(lambda: list_worker_heartbeats(database)[0]["processed"] == 1, timeout_s=10, what="the count")
    finally:
        release.set()
        worker.stop()


def test_rows_of_workers_silent_longer_than_the_forget_limit_are_deleted(database: Database) -> None:
    broker, health = build(database, forget_after_ms=60_000)
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        health.publish()
        [own] = list_worker_heartbeats(database)
        with database.transaction() as connection:
            for worker_id, silent_s in (("crashed-long-ago", 61), ("crashed-recently", 59)):
                connection.execute(
                    insert(worker_heartbeats).values(
                        {
                            **own,
                            "worker_id": worker_id,
                            "heartbeat_at": own["heartbeat_at"] - timedelta(seconds=silent_s),
                        }
                    )
                )
        health.publish()
        assert {row["worker_id"] for row in list_worker_heartbeats(database)} == {health.worker_id, "crashed-recently"}
    finally:
        worker.stop()
        broker.close()


def test_the_liveness_probe_answers_200_while_the_threads_live_and_503_when_one_dies(database: Database) -> None:
    port = free_port()
    broker, _health = build(database, probe_port=port)
    assert healthz(port) == (503, {"alive": False, "reason": "the worker has not finished booting"})
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        assert healthz(port) == (
            200,
            {"alive": True, "reason": "worker and consumer threads alive, heartbeat loop turning"},
        )
        worker.workers[0].stop()  # a worker thread that ends, as one killed by an uncaught error would
        worker.workers[0].join(timeout=10)
        assert healthz(port) == (503, {"alive": False, "reason": "1 thread(s) died: worker thread"})
    finally:
        worker.stop()
        broker.close()
    with pytest.raises(urllib.error.URLError):
        healthz(port)  # the probe stops with the worker


def test_a_probe_port_already_taken_stops_the_worker_at_boot_with_the_reason(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        health = WorkerHealth(database=database, version="9.9.9", probe_port=port)
        broker = StubBroker(middleware=[health])
        with pytest.raises(SystemExit) as exit_:
            broker.emit_after("process_boot")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"error: worker cannot start: cannot listen on 127.0.0.1:{port} for the liveness probe: Address already in "
        "use; free the port, or set WORKER_HEALTH_PORT to a free one (0 turns the probe off).\n"
    )
    broker.close()


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_800_000_000.0 + self.now


def test_the_failure_window_counts_by_the_second_and_keeps_one_entry_a_second_however_many_jobs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    monkeypatch.setattr(worker_health, "time", clock)
    counters = worker_health._Counters(failure_window_ms=10_000)
    for _ in range(5_000):
        counters.finished(failed=False)
    counters.finished(failed=True)
    clock.now += 5.5
    counters.finished(failed=None)  # handed back: not an outcome
    for _ in range(3):
        counters.finished(failed=True)
    assert len(counters._outcomes) == 2, "one entry a second, not one a job (84 bytes each)"
    snapshot = counters.snapshot()
    assert (snapshot.window_processed, snapshot.window_failed, snapshot.processed) == (5_004, 4, 5_004)
    assert snapshot.failed_since_success == 4
    assert snapshot.last_job_finished_at.timestamp() == clock.time()
    assert snapshot.last_success_at.timestamp() == clock.time() - 5.5

    clock.now += 5  # at 1010.5 the window starts at 1000.5: the first second, 1000.0-1001.0, still counts
    assert counters.snapshot().window_processed == 5_004
    clock.now += 0.5  # from 1001.0 on: wholly before the window
    snapshot = counters.snapshot()
    assert (snapshot.window_processed, snapshot.window_failed, snapshot.processed) == (3, 3, 5_004)
    clock.now += 10
    assert counters.snapshot().window_processed == 0
