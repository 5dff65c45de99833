"""Nothing is lost when the database is down as a job dies: reconcile records it from the broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from middleware.database import Database, metadata
from middleware.dead_letter_store import count_dead_letters, list_dead_letters, reconcile
from middleware.dead_letters import DeadLetters
from middleware.error_classification import FatalError
from middleware.retries import Retries
from tests import harness


@pytest.fixture(params=["redis", "rabbitmq"])
def make_broker(request: pytest.FixtureRequest) -> Iterator:
    brokers = []

    def make(middleware) -> dramatiq.Broker:
        if request.param == "redis":
            broker = RedisBroker(url=harness.REDIS_TEST_URL, namespace=request.getfixturevalue("redis_namespace"),
                                 middleware=middleware)  # fmt: skip
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
