"""Idempotency keys: a job with a key is enqueued at most once while its key is held.

``actor.send_with_options(args=..., idempotency_key="invoice-42:reminder")`` claims the key when
the message is enqueued. Another send with the same key raises :class:`DuplicateJob` (naming the
message that holds the key) while that job is queued, processing, or completed less than
``ttl_ms`` ago; once the holder has failed, or the key has expired, a new send takes it over.
Re-enqueues of the same message (retries, delays) keep their key.

A worker that receives a keyed message whose job already completed (a redelivery after a lost
ack) skips it, so an email is never sent twice.

A send the broker refuses has already claimed its key. Whether the message reached the broker
before the error cannot be known in general (a reply lost after the command was sent), so the key
is kept, except when the error proves nothing was sent: the connection was refused. Then
:func:`settle_refused_sends` gives the key back, so the sender's retry is enqueued. The Redis
broker (``actors.redis_broker``) and ``send_many`` call it; on RabbitMQ, which retries a publish
on a new connection, a refusal at the last attempt proves nothing about the first.

A sender that dies between claiming a key and sending (a crash, a SIGKILL, a deploy) leaves a
claim whose message is nowhere. On Redis the claim records where the message was to go, so once
the claim is ``unsent_after_ms`` old (``IDEMPOTENCY_UNSENT_AFTER_MS``, a minute) and the message
has neither a job status nor a place in Redis, the next send with that key takes it over. On
RabbitMQ such a claim is held until it expires.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware, SkipMessage
from sqlalchemy import Connection, Row, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from middleware.brokers.redis_keys import bodies_key
from middleware.errors import DuplicateJob
from middleware.job_status import COMPLETED, FAILED, job_status
from middleware.storage.database import Database, as_utc, delete_in_batches
from middleware.storage.tables import idempotency_keys

logger = logging.getLogger("middleware.idempotency.Idempotency")

DEFAULT_TTL_MS = 24 * 3_600_000
#: A claim this old with no job status and no message on Redis was never sent: a send takes
#: milliseconds from its claim to the broker and its ``queued`` row.
DEFAULT_UNSENT_AFTER_MS = 60_000
#: Claims of sends still under way, kept per process; past this many (a broker down for long,
#: without the hook that settles them), the oldest are forgotten: their keys are then kept.
MAX_UNSETTLED_CLAIMS = 10_000


class DuplicateDelivery(SkipMessage):
    """The job this keyed message carries has already completed."""


class Idempotency(Middleware):
    def __init__(
        self, *, database: Database, ttl_ms: int = DEFAULT_TTL_MS, unsent_after_ms: int = DEFAULT_UNSENT_AFTER_MS
    ) -> None:
        self.database = database
        self.ttl = timedelta(milliseconds=ttl_ms)
        self.unsent_after = timedelta(milliseconds=unsent_after_ms)
        # message id -> the key its send claimed, until the broker takes the message (after_enqueue)
        # or refuses it (settle_refused).
        self._unsettled: dict[str, str] = {}
        self._unsettled_lock = threading.Lock()

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None) -> None:
        key = message.options.get("idempotency_key")
        if key:
            with self.database.transaction() as connection:
                self._claim(connection, str(key), message, broker)

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None) -> None:
        if message.options.get("idempotency_key"):  # only a keyed send holds a claim: no lock on the others
            self._take_unsettled(message)

    def settle_refused(self, message: dramatiq.Message, *, release: bool) -> bool:
        """The broker refused ``message``: give back the key its send claimed if ``release`` (nothing
        was sent), else keep it. Returns whether a key was given back."""
        key = self._take_unsettled(message)
        if key is None or not release:
            return False
        released = release_key(self.database, key, message.message_id)
        if released:
            logger.info(
                "Gave back idempotency key %r: the broker refused the connection, so message %s was never sent.",
                key,
                message.message_id,
            )
        return released

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        if not message.options.get("idempotency_key"):
            return
        query = select(job_status.c.status).where(job_status.c.message_id == message.message_id)
        with self.database.engine.connect() as connection:
            if connection.scalar(query) == COMPLETED:
                raise DuplicateDelivery(f"keyed message {message.message_id} already completed; skipping it")

    def _claim(self, connection: Connection, key: str, message: dramatiq.Message, broker: dramatiq.Broker) -> None:
        now = datetime.now(UTC)
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        holding = {
            "message_id": message.message_id,
            "actor_name": message.actor_name,
            "created_at": now,
            "expires_at": now + self.ttl,
            # RedisBroker.enqueue (and send_many) give the message its Redis id before this hook.
            "redis_queue": message.queue_name if "redis_message_id" in message.options else None,
            "redis_message_id": message.options.get("redis_message_id"),
        }
        claimed = connection.execute(
            dialect.insert(idempotency_keys)
            .values(key=key, **holding)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(idempotency_keys.c.key)
        ).scalar_one_or_none()
        if claimed is not None:
            self._hold_unsettled(message, key)
            return
        holder = connection.execute(select(idempotency_keys).where(idempotency_keys.c.key == key)).one()
        if holder.message_id == message.message_id:
            return  # the same message again: a retry or a delayed message moving to its queue
        holder_status = _status_of(connection, holder.message_id)
        alive = as_utc(holder.expires_at) > now and holder_status != FAILED
        never_sent = alive and holder_status is None and self._never_sent(connection, holder, broker, now)
        if alive and not never_sent:
            raise DuplicateJob(key, holder.message_id)
        taken = connection.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.key == key, idempotency_keys.c.message_id == holder.message_id)
            .values(**holding)
        )
        if taken.rowcount != 1:  # another sender took it over first
            raise DuplicateJob(key, holder.message_id)
        self._hold_unsettled(message, key)
        if never_sent:
            logger.warning(
                "Idempotency key %r passes from message %s, which was never sent (its sender stopped "
                "between claiming the key and sending), to %s.",
                key,
                holder.message_id,
                message.message_id,
            )
        else:
            logger.info(
                "Idempotency key %r passes from message %s (%s) to %s.",
                key,
                holder.message_id,
                holder_status or "expired",
                message.message_id,
            )

    def _never_sent(self, connection: Connection, holder: Row, broker: dramatiq.Broker, now: datetime) -> bool:
        """Whether the holder's send never reached Redis: its claim is older than any send takes, it
        has no job status (a send writes ``queued`` right after the broker takes the message, a
        worker ``processing`` before running it), and Redis does not hold its message. Unknowable
        on RabbitMQ, whose queues cannot be searched: there a claim is held until it expires."""
        if holder.redis_message_id is None or not isinstance(broker, RedisBroker):
            return False
        if now - as_utc(holder.created_at) < self.unsent_after:
            return False
        messages = bodies_key(broker, holder.redis_queue)
        if broker.client.hexists(messages, holder.redis_message_id):
            return False
        # Read again after Redis: a message acked since the first read wrote its status before it ran.
        return _status_of(connection, holder.message_id) is None

    def _hold_unsettled(self, message: dramatiq.Message, key: str) -> None:
        with self._unsettled_lock:
            if len(self._unsettled) >= MAX_UNSETTLED_CLAIMS:
                del self._unsettled[next(iter(self._unsettled))]
            self._unsettled[message.message_id] = key

    def _take_unsettled(self, message: dramatiq.Message) -> str | None:
        with self._unsettled_lock:
            return self._unsettled.pop(message.message_id, None)


def _status_of(connection: Connection, message_id: str) -> str | None:
    return connection.scalar(select(job_status.c.status).where(job_status.c.message_id == message_id))


def settle_refused_sends(broker: dramatiq.Broker, messages: Sequence[dramatiq.Message], error: BaseException) -> None:
    """Call when the broker raised ``error`` for ``messages``: their keys are given back if the
    connection was refused, kept otherwise. A database error here is logged, not raised: the caller
    is raising the broker's error, and the key then stays held as before."""
    release = connection_refused(error)
    for middleware in broker.middleware:
        if isinstance(middleware, Idempotency):
            for message in messages:
                try:
                    middleware.settle_refused(message, release=release)
                except Exception:
                    logger.warning(
                        "Could not give back the idempotency key of refused message %s; it stays held.",
                        message.message_id,
                        exc_info=True,
                    )


def connection_refused(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) is a refused TCP connection: nothing was sent."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionRefusedError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def release_key(database: Database, key: str, message_id: str) -> bool:
    """Give up a key claimed by a message that never reached the broker, so a later send can claim it."""
    with database.transaction() as connection:
        statement = delete(idempotency_keys).where(
            idempotency_keys.c.key == key, idempotency_keys.c.message_id == message_id
        )
        return connection.execute(statement).rowcount == 1


def purge_expired_keys(database: Database) -> int:
    """Delete keys past their expiry: an expired key already lets a new send take it over."""
    return delete_in_batches(database, idempotency_keys, idempotency_keys.c.expires_at < datetime.now(UTC))
