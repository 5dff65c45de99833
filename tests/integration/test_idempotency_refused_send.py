"""A keyed send that Redis refused gives its key back; one that may have reached Redis keeps it.

Real Redis and SQLite. One broker points at a port nothing listens on (the connection is refused:
nothing was sent), one at a listener that never answers (the command may have been sent), and one
at the suite's Redis, where the app's retry of the send goes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import dramatiq
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import select

from actors.redis_broker import RedisBroker
from middleware.errors import DuplicateJob
from middleware.idempotency import Idempotency, idempotency_keys
from middleware.job_status import JobStatus
from middleware.operations.bulk_enqueue import Call, send_many
from middleware.storage.database import Database
from tests import harness

KEY = "invoice-42:reminder"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a command sent there may or may not have run."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def refused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the probe is closed


def keyed_broker(url: str, namespace: str, database: Database) -> RedisBroker:
    # One short attempt: redis-py's default retries would only make the unanswered send take longer.
    client = redis.Redis.from_url(url, socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
    broker = RedisBroker(
        client=client,
        namespace=namespace,
        middleware=[
            Idempotency(database=database),
            JobStatus(database=database),
        ],
    )
    dramatiq.actor(lambda invoice: None, broker=broker, actor_name="remind", queue_name="reminders")
    return broker


def holder(database: Database) -> str | None:
    with database.engine.connect() as connection:
        return connection.scalar(select(idempotency_keys.c.message_id).where(idempotency_keys.c.key == KEY))


def test_a_refused_connection_gives_the_key_back_and_the_retry_is_enqueued(
    database: Database, redis_namespace: str
) -> None:
    down = keyed_broker(f"redis://127.0.0.1:{refused_port()}/13", redis_namespace, database)
    up = keyed_broker(harness.REDIS_TEST_URL, redis_namespace, database)
    try:
        with pytest.raises(redis.ConnectionError):
            down.get_actor("remind").send_with_options(args=(42,), idempotency_key=KEY)
        assert holder(database) is None
        sent = up.get_actor("remind").send_with_options(args=(42,), idempotency_key=KEY)  # the app's retry
        assert holder(database) == sent.message_id
        assert up.client.hlen(f"{redis_namespace}:reminders.msgs") == 1
        with pytest.raises(DuplicateJob):  # the key still refuses a real duplicate
            up.get_actor("remind").send_with_options(args=(42,), idempotency_key=KEY)
    finally:
        down.close()
        up.close()


def test_a_send_that_may_have_reached_redis_keeps_its_key(
    database: Database, redis_namespace: str, silent_port: int
) -> None:
    silent = keyed_broker(f"redis://127.0.0.1:{silent_port}/13", redis_namespace, database)
    up = keyed_broker(harness.REDIS_TEST_URL, redis_namespace, database)
    try:
        with pytest.raises(redis.TimeoutError):
            sent = silent.get_actor("remind").message_with_options(args=(42,), idempotency_key=KEY)
            silent.enqueue(sent)
        assert holder(database) == sent.message_id
        with pytest.raises(DuplicateJob) as duplicate:
            up.get_actor("remind").send_with_options(args=(42,), idempotency_key=KEY)
        assert duplicate.value.existing_message_id == sent.message_id
    finally:
        silent.close()
        up.close()


def test_send_many_gives_back_the_keys_of_a_refused_pipeline(database: Database, redis_namespace: str) -> None:
    down = keyed_broker(f"redis://127.0.0.1:{refused_port()}/13", redis_namespace, database)
    up = keyed_broker(harness.REDIS_TEST_URL, redis_namespace, database)
    calls = [Call(args=(n,), options={"idempotency_key": f"invoice-{n}"}) for n in range(3)]
    try:
        with pytest.raises(redis.ConnectionError):
            send_many(down.get_actor("remind"), calls)
        with database.engine.connect() as connection:
            assert connection.scalars(select(idempotency_keys.c.key)).all() == []
        assert len(send_many(up.get_actor("remind"), calls)) == 3
        assert up.client.hlen(f"{redis_namespace}:reminders.msgs") == 3
    finally:
        down.close()
        up.close()
