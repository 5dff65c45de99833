"""Bulk enqueue on real Redis: messages stored as send() stores them, every enqueue hook run, statuses in one go."""

from __future__ import annotations

from collections.abc import Iterator

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.middleware import Middleware

from actors.redis_broker import RedisBroker
from middleware.errors import DuplicateJob
from middleware.idempotency import Idempotency
from middleware.job_status import JobStatus, count_jobs, get_job
from middleware.operations.bulk_enqueue import Call, send_many
from middleware.storage.database import Database
from tests.harness import REDIS_TEST_URL


class SeenEnqueues(Middleware):
    def __init__(self) -> None:
        self.before: list[str] = []
        self.after: list[str] = []

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None) -> None:
        self.before.append(message.message_id)

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None) -> None:
        self.after.append(message.message_id)


@pytest.fixture
def seen() -> SeenEnqueues:
    return SeenEnqueues()


@pytest.fixture
def broker(redis_namespace: str, database: Database, seen: SeenEnqueues) -> Iterator[RedisBroker]:
    middleware = [seen, Idempotency(database=database), JobStatus(database=database)]
    broker = RedisBroker(url=REDIS_TEST_URL, namespace=redis_namespace, middleware=middleware)
    yield broker
    broker.close()


def test_bulk_sent_messages_are_queued_with_their_status_rows_and_all_run(
    broker: RedisBroker, database: Database, seen: SeenEnqueues, redis_namespace: str
) -> None:
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="bulk")
    def record(number: int) -> None:
        ran.append(number)

    messages = send_many(record, [(number,) for number in range(250)], chunk_size=100)

    assert [message.args for message in messages] == [(number,) for number in range(250)]
    assert redis.Redis.from_url(REDIS_TEST_URL).hlen(f"{redis_namespace}:bulk.msgs") == 250
    assert seen.before == seen.after == [message.message_id for message in messages]
    assert count_jobs(database, status="queued", queue="bulk") == 250
    worker = Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        broker.join("bulk")
        worker.join()
    finally:
        worker.stop()
    assert sorted(ran) == list(range(250))
    assert get_job(database, messages[-1].message_id)["status"] == "completed"


def test_a_duplicate_idempotency_key_stops_the_batch_after_the_messages_before_it(
    broker: RedisBroker, database: Database, redis_namespace: str
) -> None:
    @dramatiq.actor(broker=broker, queue_name="bulk")
    def remind(invoice: int) -> None:
        pass

    def call(invoice: int) -> Call:
        return Call(args=(invoice,), options={"idempotency_key": f"invoice-{invoice}"})

    [held] = send_many(remind, [call(7)])
    with pytest.raises(DuplicateJob) as refused:
        send_many(remind, [call(1), call(7), call(9)])
    assert refused.value.existing_message_id == held.message_id
    assert redis.Redis.from_url(REDIS_TEST_URL).hlen(f"{redis_namespace}:bulk.msgs") == 2, "invoice 7 held, 1 sent"
    assert count_jobs(database, status="queued", queue="bulk") == 2
