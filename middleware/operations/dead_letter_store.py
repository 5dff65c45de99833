"""Operations on dead letters: list, show, resolve, requeue, delete, purge, stats, reconcile.

The Python API behind ``python -m ops dlq ...`` (and, later, the admin API). Every function takes
the :class:`Database`; requeue and reconcile also take the broker.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
from dramatiq.common import xq_name
from dramatiq.errors import DecodeError
from sqlalchemy import case, delete, func, select, update

from middleware.brokers.redis_keys import bodies_key
from middleware.dead_letters import FATAL, KINDS, RETRYABLE, dead_letters, insert_dead_letter, message_payload
from middleware.operations.queue_stats import redis_queue_names
from middleware.storage.database import Database, delete_in_batches

logger = logging.getLogger("middleware.operations.dead_letter_store")

#: Dead letters read, looked up and recorded together by reconcile.
RECONCILE_PAGE = 1_000

#: Options that belonged to the failed run, not to the job: a requeued message starts afresh.
#: The key under which a dead letter keeps a body that could not be decoded as a message.
MALFORMED_BODY = "malformed_body"

_RUN_OPTIONS = ("retries", "traceback", "requeue_timestamp", "eta", "redis_message_id", "dead_letter_id")


class DeadLetterNotFound(LookupError):
    def __init__(self, dead_letter_id: int) -> None:
        super().__init__(f"there is no dead letter with id {dead_letter_id}")


@dataclass(frozen=True, kw_only=True)
class Filters:
    queue: str | None = None
    actor: str | None = None
    kind: str | None = None
    resolved: bool | None = None
    since: datetime | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")

    def apply(self, query):
        conditions = {
            "queue": lambda value: dead_letters.c.queue_name == value,
            "actor": lambda value: dead_letters.c.actor_name == value,
            "kind": lambda value: dead_letters.c.kind == value,
            "resolved": lambda value: dead_letters.c.resolved.is_(value),
            "since": lambda value: dead_letters.c.failed_at >= value,
        }
        for name, condition in conditions.items():
            value = getattr(self, name)
            if value is not None:
                query = query.where(condition(value))
        return query


def list_dead_letters(
    database: Database, filters: Filters = Filters(), *, limit: int = 50, offset: int = 0, with_message: bool = False
) -> list[dict[str, Any]]:
    """Rows newest first, without their traceback, and without their message unless ``with_message``."""
    left_out = ("traceback",) if with_message else ("message", "traceback")
    columns = [column for column in dead_letters.c if column.name not in left_out]
    query = filters.apply(select(*columns)).order_by(dead_letters.c.id.desc()).limit(limit).offset(offset)
    with database.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def count_dead_letters(database: Database, filters: Filters = Filters()) -> int:
    with database.engine.connect() as connection:
        return connection.scalar(filters.apply(select(func.count()).select_from(dead_letters)))


def get_dead_letter(database: Database, dead_letter_id: int) -> dict[str, Any]:
    with database.engine.connect() as connection:
        row = connection.execute(select(dead_letters).where(dead_letters.c.id == dead_letter_id)).first()
    if row is None:
        raise DeadLetterNotFound(dead_letter_id)
    return dict(row._mapping)


def resolve(database: Database, dead_letter_id: int, *, by: str, notes: str | None = None) -> dict[str, Any]:
    _update(database, dead_letter_id, resolved=True, resolved_at=datetime.now(UTC), resolved_by=by, notes=notes)
    return get_dead_letter(database, dead_letter_id)


def delete_dead_letter(database: Database, dead_letter_id: int) -> None:
    with database.transaction() as connection:
        if connection.execute(delete(dead_letters).where(dead_letters.c.id == dead_letter_id)).rowcount != 1:
            raise DeadLetterNotFound(dead_letter_id)


def requeue(database: Database, broker: dramatiq.Broker, dead_letter_id: int, *, by: str = "requeue") -> str:
    """Enqueue the original message again, as a new message linked back to the row; returns its id."""
    row = get_dead_letter(database, dead_letter_id)
    payload = dict(row["message"])
    if MALFORMED_BODY in payload:
        raise ValueError(f"dead letter {dead_letter_id} holds a malformed message body; there is nothing to requeue")
    options = {key: value for key, value in payload.get("options", {}).items() if key not in _RUN_OPTIONS}
    message: dramatiq.Message[Any] = dramatiq.Message(
        **{**payload, "options": options, "message_id": str(uuid.uuid4()), "message_timestamp": int(time.time() * 1000)}
    )
    broker.enqueue(message)
    now = datetime.now(UTC)
    _update(
        database,
        dead_letter_id,
        requeued_as=message.message_id,
        requeued_at=now,
        resolved=True,
        resolved_at=now,
        resolved_by=by,
        notes=row["notes"] or f"requeued as {message.message_id}",
    )
    return message.message_id


def requeue_matching(
    database: Database, broker: dramatiq.Broker, filters: Filters, *, limit: int, per_second: float = 50.0
) -> list[tuple[int, str]]:
    """Requeue up to ``limit`` unresolved rows, paced at ``per_second`` so a backlog does not flood workers."""
    if per_second <= 0:
        raise ValueError("per_second must be positive")
    unresolved = Filters(**{**filters.__dict__, "resolved": False})
    requeued = []
    for row in list_dead_letters(database, unresolved, limit=limit):
        started = time.monotonic()
        requeued.append((row["id"], requeue(database, broker, row["id"], by="bulk requeue")))
        time.sleep(max(0.0, 1 / per_second - (time.monotonic() - started)))  # pacing, not waiting
    return requeued


def purge(database: Database, *, older_than: timedelta, resolved_only: bool = True) -> int:
    """Delete rows that failed more than ``older_than`` ago (resolved ones only, by default)."""
    cutoff = datetime.now(UTC) - older_than
    conditions = [dead_letters.c.failed_at < cutoff]
    if resolved_only:
        conditions.append(dead_letters.c.resolved.is_(True))
    return delete_in_batches(database, dead_letters, *conditions)


def stats(database: Database) -> list[dict[str, Any]]:
    """Per queue: total, resolved and unresolved."""
    resolved = func.sum(case((dead_letters.c.resolved.is_(True), 1), else_=0))
    query = (
        select(dead_letters.c.queue_name, func.count().label("total"), resolved.label("resolved"))
        .group_by(dead_letters.c.queue_name)
        .order_by(dead_letters.c.queue_name)
    )
    with database.engine.connect() as connection:
        return [
            {
                "queue": row.queue_name,
                "total": row.total,
                "resolved": int(row.resolved or 0),
                "unresolved": row.total - int(row.resolved or 0),
            }
            for row in connection.execute(query)
        ]


def reconcile(database: Database, broker: dramatiq.Broker, *, queues: Iterable[str] = ()) -> int:
    """Record messages sitting in the broker's dead-letter queues that have no row yet.

    Looks at the broker's declared queues, ``queues``, and on Redis every queue with a
    dead-letter queue under the broker's namespace.
    """
    recorded = 0
    for queue_name in sorted(set(broker.get_declared_queues()) | set(queues) | _redis_dead_letter_queues(broker)):
        for page in _pages(broker_dead_letters(broker, queue_name)):
            rows = [_reconciled_row(queue_name, dead_id, body) for dead_id, body in page]
            recorded += _record_missing(database, rows)
    return recorded


def _record_missing(database: Database, rows: list[dict[str, Any]]) -> int:
    """Insert the rows whose message has none yet, in one transaction. Almost every dead letter was
    recorded when it failed, so one query that finds them spares a transaction each."""
    recorded = 0
    with database.transaction() as connection:
        known: set[str] = set(
            connection.scalars(
                select(dead_letters.c.message_id).where(
                    dead_letters.c.message_id.in_([row["message_id"] for row in rows])
                )
            )
        )
        for row in rows:
            if row["message_id"] not in known and insert_dead_letter(connection, row) is not None:
                recorded += 1
                logger.info("Reconciled dead letter %s from %s.", row["message_id"], xq_name(row["queue_name"]))
    return recorded


def _pages(items: Iterator[tuple[str, bytes]], size: int = RECONCILE_PAGE) -> Iterator[list[tuple[str, bytes]]]:
    page: list[tuple[str, bytes]] = []
    for item in items:
        page.append(item)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


def _reconciled_row(queue_name: str, dead_id: str, body: bytes) -> dict[str, Any]:
    now = datetime.now(UTC)
    try:
        message = dramatiq.Message.decode(body)
    except DecodeError as error:
        return {
            "queue_name": queue_name,
            "actor_name": "(unknown)",
            "message_id": dead_id,
            "message": {MALFORMED_BODY: body[:10_000].decode("utf-8", errors="replace")},
            "error_type": "DecodeError",
            "error_message": f"malformed message body: {error.__cause__ or error}",
            "traceback": None,
            "attempts": 0,
            "kind": FATAL,
            "failed_at": now,
        }
    return {
        "queue_name": queue_name,
        "actor_name": message.actor_name,
        "message_id": message.message_id,
        "message": message_payload(message),
        "error_type": "Unrecorded",
        "error_message": "recorded by reconcile from the broker's dead-letter queue: the final error was "
        "not captured (the database was unreachable when the job failed)",
        "traceback": message.options.get("traceback"),
        "attempts": max(1, message.options.get("retries", 0)),
        "kind": RETRYABLE,
        "failed_at": now,
    }


def broker_dead_letters(broker: dramatiq.Broker, queue_name: str) -> Iterator[tuple[str, bytes]]:
    """(id, raw body) of each message in a queue's broker-side dead-letter queue, left in place."""
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.brokers.redis import RedisBroker

    if isinstance(broker, RedisBroker):
        # A page at a time (a failure storm can leave a week of dead letters there): a message dead-lettered
        # meanwhile may be missed, and is found by the next reconcile.
        for redis_message_id, body in broker.client.hscan_iter(
            bodies_key(broker, xq_name(queue_name)), count=RECONCILE_PAGE
        ):
            yield redis_message_id.decode(), body
    elif isinstance(broker, RabbitmqBroker):
        yield from _rabbitmq_dead_letters(broker, xq_name(queue_name))
    else:
        raise TypeError(f"reconcile does not know how to read {type(broker).__name__}'s dead-letter queues")


def _redis_dead_letter_queues(broker: dramatiq.Broker) -> set[str]:
    from dramatiq.brokers.redis import RedisBroker

    if not isinstance(broker, RedisBroker):
        return set()
    return redis_queue_names(broker, suffix=".XQ.msgs")


def _rabbitmq_dead_letters(broker, queue: str) -> Iterator[tuple[str, bytes]]:
    # basic_get without acking, then close the channel: every message goes back to the queue.
    channel = broker.connection.channel()
    try:
        while True:
            method, _properties, body = channel.basic_get(queue=queue, auto_ack=False)
            if method is None:
                return
            yield f"malformed-{hashlib.sha256(body).hexdigest()[:32]}", body
    finally:
        channel.close()


def _update(database: Database, dead_letter_id: int, **values: Any) -> None:
    with database.transaction() as connection:
        result = connection.execute(update(dead_letters).where(dead_letters.c.id == dead_letter_id).values(**values))
        if result.rowcount != 1:
            raise DeadLetterNotFound(dead_letter_id)
