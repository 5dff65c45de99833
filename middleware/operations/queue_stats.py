"""Queue statistics for Redis, RabbitMQ (and the StubBroker): waiting, delayed, in progress, dead, oldest age.

Where each number comes from, on Redis (keys under the broker's namespace ``<ns>``):
- ``waiting``: the length of the list ``<ns>:<q>``.
- ``delayed``: the entries of ``<ns>:<q>.DQ.msgs``, in the delay queue or held by a worker until their eta.
- ``in_progress``: fetched and not yet acked: the entries of ``<ns>:<q>.msgs`` that are not waiting
  (messages a worker prefetched are included).
- ``dead``: the entries of the sorted set ``<ns>:<q>.XQ``.
- ``oldest_waiting_age_s``: since the head message was sent (its ``message_timestamp``; a retried
  message keeps its first send's).

On RabbitMQ (and the StubBroker), which say only how many messages are ready:
- ``waiting``, ``dead``: ready messages in ``q`` and ``q.XQ`` (passive declares).
- ``delayed``: ready in ``q.DQ``, plus the delayed messages live workers hold in memory until their eta
  (from their heartbeats).
- ``in_progress``: jobs running on live workers (from their heartbeats); AMQP does not report unacked
  counts without the management plugin, so messages a worker prefetched are in no column.
- ``oldest_waiting_age_s``: since the oldest ``job_status`` row still ``queued`` for the queue was
  enqueued, leaving out dead-lettered ones; None while nothing waits. A message sent with a delay
  counts from its send.

A live worker is one whose heartbeat (``middleware/worker_health.py``) is younger than
``stale_after_ms``. Each Redis queue is read in one atomic script call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import dramatiq
import redis
from dramatiq.common import dq_name, q_name, xq_name
from dramatiq.errors import BrokerConnectionError, DecodeError
from sqlalchemy import exists, func, select

from middleware.brokers.redis_keys import bodies_key
from middleware.dead_letters import dead_letters
from middleware.job_status import QUEUED, job_status
from middleware.storage.database import Database, as_utc
from middleware.worker_health import DEFAULT_STALE_AFTER_MS, is_live, list_worker_heartbeats


class BrokerUnavailable(Exception):
    """The broker could not be read (down, unreachable, refusing the credentials)."""


@dataclass(frozen=True)
class QueueStats:
    queue_name: str
    waiting: int  # ready to be consumed now
    delayed: int  # in the delay queue (retries, delayed sends)
    in_progress: int  # delivered, not yet acked (RabbitMQ: running on a live worker)
    dead: int  # in the broker's dead-letter queue (Redis XQ / RabbitMQ .XQ)
    oldest_waiting_age_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def queue_stats(
    broker: dramatiq.Broker,
    database: Database,
    *,
    stale_after_ms: int = DEFAULT_STALE_AFTER_MS,
    now: datetime | None = None,
    heartbeats: list[dict[str, Any]] | None = None,
) -> list[QueueStats]:
    """Stats of every queue the broker declares, a worker with a heartbeat row serves, or (Redis) holds
    messages; sorted by name. ``heartbeats``: the ``worker_heartbeats`` rows, if the caller has read them.

    Raises BrokerUnavailable, with the broker's error, when the broker cannot be read.
    """
    import pika.exceptions

    try:
        if heartbeats is None:
            heartbeats = list_worker_heartbeats(database)
        return _queue_stats(broker, database, heartbeats, stale_after_ms=stale_after_ms, now=now or datetime.now(UTC))
    except (redis.RedisError, pika.exceptions.AMQPError, BrokerConnectionError) as error:
        detail = str(error).strip() or "no detail given; is the broker up at BROKER_URL?"
        raise BrokerUnavailable(f"cannot read the broker's queues: {type(error).__name__}: {detail}") from error


def _queue_stats(
    broker: dramatiq.Broker, database: Database, heartbeats: list[dict[str, Any]], *, stale_after_ms: int, now: datetime
) -> list[QueueStats]:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.brokers.stub import StubBroker

    live = [row for row in heartbeats if is_live(row, stale_after_ms=stale_after_ms, now=now)]
    # A dead worker's queues too: on RabbitMQ nothing else may name a queue this process never declared.
    names = set(broker.get_declared_queues()) | {queue for row in heartbeats for queue in row["queues"]}
    if isinstance(broker, RedisBroker):
        names |= {q_name(name) for name in redis_queue_names(broker)}
        return [_redis_queue(broker, name, now) for name in sorted(names)]
    if isinstance(broker, RabbitmqBroker):
        counts = _rabbitmq_counts(broker, sorted(names))
    elif isinstance(broker, StubBroker):
        counts = {name: _stub_counts(broker, name) for name in sorted(names)}
    else:
        raise TypeError(f"queue_stats does not know how to read {type(broker).__name__}'s queues")
    running, held = _worker_load(live)
    waiting_since = _oldest_queued(database, [name for name, (waiting, _, _) in counts.items() if waiting])
    return [
        QueueStats(
            queue_name=name,
            waiting=waiting,
            delayed=delayed + held.get(name, 0),
            in_progress=running.get(name, 0),
            dead=dead,
            oldest_waiting_age_s=_age_s(now, waiting_since.get(name)) if waiting else None,
        )
        for name, (waiting, delayed, dead) in counts.items()
    ]


# One atomic read per queue. A nil inside a Lua table would cut the reply short, so the head
# message's body (absent when the queue is empty) comes last.
_REDIS_SNAPSHOT = """
local head = redis.call("lindex", KEYS[1], 0)
local body = false
if head then body = redis.call("hget", KEYS[2], head) end
return {redis.call("llen", KEYS[1]), redis.call("hlen", KEYS[2]), redis.call("hlen", KEYS[3]),
        redis.call("zcard", KEYS[4]), body}
"""


def _redis_queue(broker: Any, name: str, now: datetime) -> QueueStats:
    prefix = f"{broker.namespace}:"
    reply = broker.client.eval(
        _REDIS_SNAPSHOT,
        4,
        f"{prefix}{name}",
        bodies_key(broker, name),
        bodies_key(broker, dq_name(name)),
        f"{prefix}{xq_name(name)}",
    )
    waiting, stored, delayed, dead = (int(value) for value in reply[:4])
    head = reply[4] if len(reply) > 4 else None
    return QueueStats(
        queue_name=name,
        waiting=waiting,
        delayed=delayed,
        in_progress=max(0, stored - waiting),  # every message of the queue is stored; the rest were fetched
        dead=dead,
        oldest_waiting_age_s=_redis_head_age_s(head, now),
    )


def _redis_head_age_s(body: bytes | None, now: datetime) -> float | None:
    if body is None:
        return None
    try:
        sent_ms = dramatiq.Message.decode(body).message_timestamp
    except DecodeError:
        return None  # a malformed body has no send time; its consumer moves it to the dead-letter queue
    return max(0.0, now.timestamp() - sent_ms / 1000)


def redis_queue_names(broker: Any, *, suffix: str = ".msgs") -> set[str]:
    """The queues holding messages under the broker's namespace: each keeps its bodies in
    ``<ns>:<name>.msgs`` (a dead-letter queue's name ends in ``.XQ``; ``suffix=".XQ.msgs"`` finds only those)."""
    prefix = f"{broker.namespace}:"
    keys = broker.client.scan_iter(match=f"{prefix}*{suffix}", count=1000)
    return {key.decode()[len(prefix) : -len(suffix)] for key in keys}


def _rabbitmq_counts(broker: Any, names: list[str]) -> dict[str, tuple[int, int, int]]:
    """Ready messages in q, q.DQ and q.XQ by passive declares; a queue that does not exist holds none."""
    import pika.exceptions

    try:
        return _rabbitmq_ready(broker, names)
    except (pika.exceptions.AMQPConnectionError, pika.exceptions.ChannelWrongStateError):
        # The broker's connection (one per thread) may have been closed by the server since it was
        # last used: an idle blocking connection misses its heartbeats. Once more on a new one.
        del broker.connection
        return _rabbitmq_ready(broker, names)


def _rabbitmq_ready(broker: Any, names: list[str]) -> dict[str, tuple[int, int, int]]:
    import pika.exceptions

    counts, channel = {}, broker.connection.channel()
    try:
        for name in names:
            ready = []
            for queue in (name, dq_name(name), xq_name(name)):
                try:
                    ready.append(channel.queue_declare(queue=queue, passive=True).method.message_count)
                except pika.exceptions.ChannelClosedByBroker as error:
                    if error.reply_code != 404:
                        raise
                    ready.append(0)
                    channel = broker.connection.channel()  # the broker closes a channel on a 404
            counts[name] = (ready[0], ready[1], ready[2])
    finally:
        if channel.is_open:
            channel.close()
    return counts


def _stub_counts(broker: Any, name: str) -> tuple[int, int, int]:
    queues, dead = broker.queues, broker.dead_letters_by_queue
    delayed = queues[dq_name(name)].qsize() if dq_name(name) in queues else 0
    waiting = queues[name].qsize() if name in queues else 0
    return waiting, delayed, len(dead.get(name, ())) + len(dead.get(dq_name(name), ()))


def _worker_load(live: Iterable[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """Per queue: jobs running on live workers, and delayed messages they hold in memory."""
    running: dict[str, int] = {}
    held: dict[str, int] = {}
    for row in live:
        for queue, counts in row["queue_counts"].items():
            running[queue] = running.get(queue, 0) + int(counts.get("running", 0))
            held[queue] = held.get(queue, 0) + int(counts.get("delayed", 0))
    return running, held


def _oldest_queued(database: Database, names: list[str]) -> dict[str, datetime]:
    """When the oldest job still ``queued`` of each queue was enqueued, leaving out dead-lettered ones."""
    if not names:
        return {}
    dead_lettered = exists().where(dead_letters.c.message_id == job_status.c.message_id)
    query = (
        select(job_status.c.queue_name, func.min(job_status.c.enqueued_at))
        .where(job_status.c.status == QUEUED, job_status.c.queue_name.in_(names), ~dead_lettered)
        .group_by(job_status.c.queue_name)
    )
    with database.engine.connect() as connection:
        # Indexed, not unpacked: mypy 1 types an unpacked Row's values as object.
        return {row[0]: row[1] for row in connection.execute(query) if row[1] is not None}


def _age_s(now: datetime, since: datetime | None) -> float | None:
    since = as_utc(since)
    return None if since is None else max(0.0, (now - since).total_seconds())
