"""Queue statistics against the real Redis and RabbitMQ, with real messages: waiting, delayed, in progress, dead."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import create_engine, insert

from middleware.dead_letters import FATAL, insert_dead_letter
from middleware.job_status import JobStatus, get_job
from middleware.operations.queue_stats import QueueStats, queue_stats
from middleware.storage.database import Database, metadata
from middleware.worker_health import worker_heartbeats
from tests.harness import REDIS_TEST_URL, run_ops, wait_until

QUEUE = "orders"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLite with the tables these tests read (made in-process: quicker than `ops db upgrade`)."""
    url = f"sqlite:///{tmp_path / 'stats.sqlite3'}"
    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def broker(broker_env: dict[str, str], database: Database) -> Iterator[dramatiq.Broker]:
    middleware = [JobStatus(database=database)]
    url = broker_env["BROKER_URL"]
    if url.startswith("amqp"):
        broker = RabbitmqBroker(url=url, middleware=middleware)
    else:
        broker = RedisBroker(url=url, namespace=broker_env["REDIS_NAMESPACE"], middleware=middleware)
    yield broker
    broker.close()


def heartbeat(database: Database, worker_id: str, *, age_s: float, running: int, delayed: int) -> None:
    """A worker's heartbeat row, as WorkerHealth writes it, serving QUEUE."""
    now = datetime.now(UTC)
    with database.transaction() as connection:
        connection.execute(
            insert(worker_heartbeats).values(
                worker_id=worker_id,
                host="host-a",
                pid=4242,
                version="test",
                queues=[QUEUE],
                processed=0,
                failed=0,
                in_progress=running,
                failure_window_ms=600_000,
                window_processed=0,
                window_failed=0,
                failed_since_success=0,
                current_jobs=[],
                queue_counts={QUEUE: {"running": running, "delayed": delayed}},
                stopping=False,
                started_at=now - timedelta(minutes=5),
                heartbeat_at=now - timedelta(seconds=age_s),
            )
        )


def delivered(consumer: Any) -> dramatiq.Message:
    return wait_until(lambda: next(consumer), timeout_s=10, what="a delivery", interval_s=0)


def stats_of(broker: dramatiq.Broker, database: Database, queue_name: str = QUEUE, **options: Any) -> QueueStats:
    [stats] = [stats for stats in queue_stats(broker, database, **options) if stats.queue_name == queue_name]
    return stats


def test_waiting_delayed_in_progress_and_dead_messages_per_queue(
    broker: dramatiq.Broker, database: Database, broker_env: dict[str, str], sqlite_url: str
) -> None:
    rabbitmq = isinstance(broker, RabbitmqBroker)

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def charge(order_id: int) -> None:
        raise AssertionError("no worker runs in this test")

    broker.declare_queue("quiet")  # on RabbitMQ it does not even exist yet
    assert stats_of(broker, database, "quiet") == QueueStats("quiet", 0, 0, 0, 0, None)
    if not rabbitmq:  # Redis: a queue this process never declared is found by its keys
        producer = RedisBroker(url=REDIS_TEST_URL, namespace=broker.namespace, middleware=[])
        producer.enqueue(dramatiq.Message(queue_name="emails", actor_name="send", args=(), kwargs={}, options={}))
        producer.close()
        assert "emails" not in broker.get_declared_queues() and stats_of(broker, database, "emails").waiting == 1

    sent = [charge.send(order_id) for order_id in range(4)]
    for order_id in range(2):
        charge.send_with_options(args=(100 + order_id,), delay=3_600_000)
    consumer = broker.consume(QUEUE, prefetch=1, timeout=100)
    try:
        dead = delivered(consumer)
        consumer.nack(dead)  # to the dead-letter queue
        held = delivered(consumer)  # delivered and never acked: in progress
        assert (dead.message_id, held.message_id) == (sent[0].message_id, sent[1].message_id)
        with database.transaction() as connection:  # as DeadLetters records it from after_nack
            insert_dead_letter(
                connection,
                {
                    "queue_name": QUEUE,
                    "actor_name": "charge",
                    "message_id": dead.message_id,
                    "message": {},
                    "error_type": "FatalError",
                    "error_message": "declined",
                    "attempts": 1,
                    "kind": FATAL,
                    "failed_at": datetime.now(UTC),
                },
            )

        if rabbitmq:
            # AMQP reports ready messages only: what runs, and what workers hold until its eta, comes from
            # the live workers' heartbeats (a stale worker's are left out).
            heartbeat(database, "live", age_s=1, running=1, delayed=1)
            heartbeat(database, "stale", age_s=120, running=5, delayed=5)
            # The consumer has prefetched its window (1): only sent[2] and sent[3] are ready.
            expected = (2, 2 + 1, 1, 1)
        else:
            expected = (2, 2, 1, 1)
        now = datetime.now(UTC)
        stats = wait_until(
            lambda: (
                (stats := stats_of(broker, database, now=now))
                and (stats.waiting, stats.delayed, stats.in_progress, stats.dead) == expected
                and stats
            ),
            timeout_s=10,
            what=f"the counts {expected}",
        )

        if rabbitmq:  # the oldest job still queued that is not dead-lettered: sent[1] (in progress, not started)
            enqueued_at = get_job(database, sent[1].message_id)["enqueued_at"].replace(tzinfo=UTC)
        else:  # the head of the list: sent[2], since it was sent
            enqueued_at = datetime.fromtimestamp(sent[2].message_timestamp / 1000, UTC)
        assert stats.oldest_waiting_age_s == pytest.approx((now - enqueued_at).total_seconds(), abs=0.002)
        if rabbitmq:  # a connection the server closed meanwhile (an idle one misses its heartbeats) is replaced
            broker.connection.close()
            assert stats_of(broker, database, now=now) == stats
    finally:
        consumer.close()

    if rabbitmq:  # the command reads the same numbers (the queue is known from the live heartbeat)
        env = {**broker_env, "DATABASE_URL": sqlite_url}
        result = run_ops(env, "queues", "--json")
        assert result.returncode == 0, result.stderr
        [row] = [row for row in json.loads(result.stdout) if row["queue_name"] == QUEUE]
        # Closing the consumer handed its unacked message back: it waits again.
        assert (row["waiting"], row["delayed"], row["in_progress"], row["dead"]) == (3, 3, 1, 1)
        assert row["dead_letters_unresolved"] == 1 and row["oldest_waiting_age_s"] > 0


@pytest.mark.parametrize(("scheme", "command", "output"), [("amqp", "health", "stdout"), ("redis", "queues", "stderr")])
def test_an_unreachable_broker_is_one_line_and_exit_code_1(
    scheme: str, command: str, output: str, sqlite_url: str
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens on it once closed
    url = f"redis://127.0.0.1:{port}/0" if scheme == "redis" else f"amqp://guest:guest@127.0.0.1:{port}"
    result = run_ops({"BROKER_URL": url, "DATABASE_URL": sqlite_url}, command)
    assert result.returncode == 1
    prefix = "broker: " if command == "health" else "error: "
    text = getattr(result, output)
    assert text.startswith(f"{prefix}cannot read the broker's queues: ") and text.count("\n") == 1, text
    assert "Traceback" not in result.stderr
