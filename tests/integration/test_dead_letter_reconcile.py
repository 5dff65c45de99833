"""Nothing is lost when the database is down as a job dies: reconcile records it from the broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import xq_name
from dramatiq.middleware import CurrentMessage
from sqlalchemy import event

from middleware.dead_letters import FATAL, DeadLetters, insert_dead_letter, message_payload
from middleware.errors import FatalError
from middleware.operations.dead_letter_store import RECONCILE_PAGE, count_dead_letters, list_dead_letters, reconcile
from middleware.retries import Retries
from middleware.storage.database import Database, metadata
from tests import harness


@pytest.fixture(params=["redis", "rabbitmq"])
def make_broker(request: pytest.FixtureRequest) -> Iterator:
    brokers = []

    def make(middleware) -> dramatiq.Broker:
        if request.param == "redis":
            broker = RedisBroker(
                url=harness.REDIS_TEST_URL, namespace=request.getfixturevalue("redis_namespace"), middleware=middleware
            )
        else:
            broker = RabbitmqBroker(url=request.getfixturevalue("rabbitmq_url"), middleware=middleware)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close()


def test_a_dead_letter_missed_while_the_database_was_down_is_recorded_once_by_reconcile(
    make_broker, tmp_path: Path
) -> None:
    unreachable = Database(f"sqlite:///{tmp_path / 'no-such-directory' / 'jobs.sqlite3'}")
    broker = make_broker([CurrentMessage(), DeadLetters(database=unreachable), Retries(max_retries=0)])
    queue = f"reconcile-{uuid.uuid4().hex[:6]}"

    @dramatiq.actor(broker=broker, queue_name=queue)
    def charge(invoice: str) -> None:
        raise FatalError(f"invoice {invoice} was cancelled")

    broker.emit_after("process_boot")
    worker = Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        message = charge.send("inv-7")
        broker.join(queue, timeout=30_000)
        worker.join()
    finally:
        worker.stop()

    database = Database(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    metadata.create_all(database.engine)
    assert count_dead_letters(database) == 0, "the database was down: nothing was recorded then"
    assert reconcile(database, broker) == 1
    assert reconcile(database, broker) == 0, "recording twice must not create a second row"
    [row] = list_dead_letters(database)
    assert (row["message_id"], row["queue_name"], row["actor_name"]) == (message.message_id, queue, "charge")
    assert row["error_type"] == "Unrecorded" and "database was unreachable" in row["error_message"]


def test_a_long_dead_letter_queue_is_reconciled_a_page_at_a_time(redis_namespace: str, tmp_path: Path) -> None:
    broker = RedisBroker(url=harness.REDIS_TEST_URL, namespace=redis_namespace)
    database = Database(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    metadata.create_all(database.engine)
    dead = [
        dramatiq.Message(queue_name="storm", actor_name="charge", args=(n,), kwargs={}, options={})
        for n in range(2 * RECONCILE_PAGE + 500)
    ]
    pipeline = broker.client.pipeline(transaction=False)
    for message in dead:
        pipeline.hset(f"{redis_namespace}:{xq_name('storm')}.msgs", uuid.uuid4().hex, message.encode())
    pipeline.execute()
    missed = {message.message_id for message in dead[::125]}  # the failures the database did not see
    with database.transaction() as connection:
        for message in dead:
            if message.message_id not in missed:
                insert_dead_letter(
                    connection,
                    {
                        "queue_name": "storm",
                        "actor_name": "charge",
                        "message_id": message.message_id,
                        "message": message_payload(message),
                        "error_type": "FatalError",
                        "error_message": "declined",
                        "traceback": None,
                        "attempts": 1,
                        "kind": FATAL,
                        "failed_at": datetime.now(UTC),
                    },
                )
    transactions = []
    event.listen(database.engine, "begin", lambda connection: transactions.append(connection))
    try:
        assert reconcile(database, broker, queues=["storm"]) == len(missed) == 20
    finally:
        broker.close()
    assert len(transactions) == 3, "one transaction per page of dead letters, not one per message"
    recorded = {row["message_id"]: row["error_type"] for row in list_dead_letters(database, limit=10_000)}
    assert len(recorded) == len(dead)
    assert {message_id for message_id, error_type in recorded.items() if error_type == "Unrecorded"} == missed
