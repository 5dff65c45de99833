"""Dead letters in SQL: every message that will not run again gets a row an operator can act on.

1. ``after_nack`` runs once when a message is dead-lettered, while ``message._exception`` still
   holds the final exception and ``options["traceback"]`` its traceback (the broker's own
   dead-letter copy is one attempt behind). The row keeps the original message to requeue from.
2. If the database is down at that moment nothing is lost: the message sits in the broker's
   dead-letter queue, and ``reconcile`` (``python -m ops dlq reconcile``, or the scheduler)
   records it later. Rows are unique by message id, so recording twice is harmless.

Operations on the rows (list, resolve, requeue, purge, ...) are in ``middleware.operations.dead_letter_store``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import Middleware
from sqlalchemy import (
    Connection,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from middleware.job_logs import log_event
from middleware.policies.failure_decision import current_failure
from middleware.policies.poison_messages import PoisonMessage
from middleware.storage.database import Database
from middleware.storage.tables import dead_letters

logger = logging.getLogger("middleware.dead_letters.DeadLetters")

FATAL, RETRYABLE, POISON = "fatal", "retryable", "poison"
#: A job that cannot fit one step in its longest time limit, or that never saves a checkpoint
#: between interruptions (``middleware.retries``).
TIME_LIMIT, NO_PROGRESS = "time_limit", "no_progress"
KINDS = (FATAL, RETRYABLE, POISON, TIME_LIMIT, NO_PROGRESS)


def insert_dead_letter(connection: Connection, row: dict[str, Any]) -> int | None:
    """Insert unless the message is already recorded; returns the new row's id, or None."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(dead_letters).values(**row).on_conflict_do_nothing(index_elements=["message_id"])
    return connection.execute(statement.returning(dead_letters.c.id)).scalar_one_or_none()


def kind_of(exception: BaseException | None) -> str:
    if isinstance(exception, PoisonMessage):
        return POISON
    if isinstance(exception, ActorNotFound):
        return FATAL
    decision = current_failure.get()
    if decision is not None and decision.kind is not None:
        return decision.kind
    return FATAL if decision is not None and decision.fatal else RETRYABLE


class DeadLetters(Middleware):
    """Records every dead-lettered message in the ``dead_letters`` table."""

    def __init__(self, *, database: Database) -> None:
        self.database = database

    def after_nack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        exception = getattr(message, "_exception", None)
        row = {
            "queue_name": q_name(message.queue_name),
            "actor_name": message.actor_name,
            "message_id": message.message_id,
            "message": message_payload(message),
            "error_type": type(exception).__name__ if exception is not None else "Unknown",
            "error_message": str(exception) if exception is not None else "no exception was recorded",
            "traceback": message.options.get("traceback"),
            "attempts": max(1, message.options.get("retries", 0)),
            "kind": kind_of(exception),
            "failed_at": datetime.now(UTC),
        }
        try:
            with self.database.transaction() as connection:
                dead_letter_id = insert_dead_letter(connection, row)
        except SQLAlchemyError:
            logger.error(
                "Could not record dead letter %s in the database; it stays in the broker's dead-letter queue "
                "and `python -m ops dlq reconcile` will record it.",
                message.message_id,
                exc_info=True,
            )
            return
        log_event(
            "job.dead_lettered",
            message,
            kind=row["kind"],
            error=f"{row['error_type']}: {row['error_message']}",
            dead_letter_id=dead_letter_id,
        )


def message_payload(message: dramatiq.Message | dramatiq.MessageProxy) -> dict[str, Any]:
    """The message as a plain dict (what ``Message(**payload)`` rebuilds), without broker bookkeeping."""
    payload = message.asdict()
    payload["options"] = {key: value for key, value in payload["options"].items() if key != "redis_message_id"}
    return payload
