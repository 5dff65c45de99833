"""Progressive checkpoints: a long job saves its position with its output, and resumes from it.

1. An actor declared with ``checkpointed=True`` asks :func:`current_checkpoint` for its
   checkpoint and starts after ``checkpoint.position`` (None on a first run).
2. For each unit of work it writes its output inside ``with checkpoint.saving(position):``,
   whose connection commits the output and the new position in one transaction: a crash can
   never leave output without its checkpoint, or a checkpoint without its output.
3. Whatever stops the job (SIGKILL, a retry, a deploy's ``Shutdown``, a time limit), the next
   delivery of the message finds the last committed position and continues after it.
4. When the actor returns, the checkpoint is marked completed; a later delivery of the same
   work (a duplicate, or the redelivery of a message whose ack was lost) is skipped.

5. A checkpoint is leased to one delivery at a time, so two runs of one job never interleave
   their output (a worker taken for dead while its job still runs; the same work sent twice):
   - Loading claims the lease. Another delivery of the *same message* takes it over at once: a
     broker delivers a message again only once it holds its previous delivery for gone.
   - A delivery of *another message* for the same work waits while the lease is held and fresh
     (:class:`CheckpointBusy`: handed back with a growing delay, spending no attempt), until the
     holder completes the work (then it is skipped), releases the lease, or saves nothing for
     ``lease_ms`` (then it takes over).
   - Every save renews the lease and is fenced by it: a delivery that lost its lease raises
     :class:`CheckpointSuperseded` from ``saving`` before the actor writes that save's output.
   - The lease is released when the delivery ends, however it ends.

6. On RabbitMQ, whose ``consumer_timeout`` (30 min by default) closes the channel of a delivery
   held unacked for longer and redelivers it while the job still runs, a checkpointed job
   hands its message back at the first checkpoint after ``hand_back_after_ms`` (:class:`HandBack`,
   an interruption that spends no attempt): the next delivery continues after that checkpoint.

Checkpoints are keyed by message id, or by the actor's ``checkpoint_key(*args, **kwargs)`` when
the work has a natural identity (a meeting), so that sending the same work twice resumes or
skips instead of doing it again.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware, SkipMessage
from sqlalchemy import (
    JSON,
    Connection,
    bindparam,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.dml import ReturningInsert

from middleware.dead_letters import message_payload
from middleware.errors import ActorDeclarationError, CheckpointBusy, CheckpointSuperseded, HandBack
from middleware.job_logs import log_event
from middleware.job_status import PROGRESS_UPSERT, progress_values
from middleware.policies.failure_decision import DeliveryProgress, delivery_progress
from middleware.routing import longest_time_limit_ms
from middleware.storage.database import Database
from middleware.storage.tables import job_checkpoints

logger = logging.getLogger("middleware.checkpoints.Checkpoints")


#: A lease that saved nothing for this long may be taken over by another message for the same work.
DEFAULT_LEASE_MS = 10 * 60_000
#: A delivery waiting for another one's lease looks again after 1, 2, 4 ... s, at most this long.
BUSY_RETRY_MAX_MS = 30_000

_current: ContextVar[Checkpoint | None] = ContextVar("current_checkpoint", default=None)


class CheckpointAlreadyCompleted(SkipMessage):
    """The work this message carries was completed by an earlier delivery; it is skipped."""


def current_checkpoint() -> Checkpoint:
    """The checkpoint of the message this worker thread is processing."""
    checkpoint = _current.get()
    if checkpoint is None:
        raise RuntimeError(
            "current_checkpoint() was called outside a checkpointed actor: declare the actor with "
            "checkpointed=True and add the Checkpoints middleware to the broker."
        )
    return checkpoint


class Checkpoint:
    """The saved position of one job, and this delivery's lease on it; loaded on first use."""

    def __init__(
        self,
        *,
        database: Database,
        key: str,
        message: dramatiq.Message | dramatiq.MessageProxy,
        hand_back_at: float | None = None,
        lease_ms: int = DEFAULT_LEASE_MS,
    ) -> None:
        self.database = database
        #: time.monotonic() after which the next saved checkpoint hands the message back.
        self.hand_back_at = hand_back_at
        self.key = key
        self.message = message
        self.actor_name = message.actor_name
        self.message_id = message.message_id
        self.lease_ms = lease_ms
        #: This delivery's lease, once load() has claimed it.
        self.lease_token: str | None = None
        self._loaded = False
        self._position: Any = None
        self.resumed = False
        #: Checkpoints this delivery committed, and the position it started from.
        self.saves = 0
        self.started_at_position: Any = None
        self._payload = message_payload(message)

    @property
    def position(self) -> Any:
        """The last saved position (any JSON value), or None when the job has saved nothing yet."""
        if not self._loaded:
            self.load()
        return self._position

    @contextmanager
    def saving(self, position: Any, *, progress: float | None = None) -> Iterator[Connection]:
        """Write output on the yielded connection; it commits together with ``position``, or not at
        all if this delivery lost the checkpoint's lease (:class:`CheckpointSuperseded`)."""
        if not self._loaded:
            self.load()
        now = datetime.now(UTC)
        with self.database.transaction() as connection:
            # The checkpoint first: a delivery that lost its lease stops before it writes any output
            # (which could collide with the new holder's), and on PostgreSQL the row stays locked
            # until this commits, so a takeover waits for it instead of racing it.
            saved = connection.execute(
                _save_statement(connection.dialect.name),
                {
                    "key": self.key,
                    "actor_name": self.actor_name,
                    "message_id": self.message_id,
                    "position": position,
                    "progress": progress,
                    "now": now,
                    "message": self._payload,
                    "token": self.lease_token,
                },
            )
            if saved.first() is None:  # not rowcount: on PostgreSQL, SQLAlchemy gives -1 for an upsert
                raise self._superseded(connection, position)
            if progress is not None:
                connection.execute(PROGRESS_UPSERT, progress_values(self.message, progress, now))
            yield connection
        self._position = position
        self.saves += 1
        log_event("checkpoint.saved", self.message, position=position)
        if self.hand_back_at is not None and time.monotonic() >= self.hand_back_at:
            log_event("checkpoint.handed_back", self.message, position=position)
            raise HandBack(f"message {self.message_id} was held too long for its broker; handed back at {position!r}")

    def progress(self) -> DeliveryProgress:
        """What this delivery achieved: it advanced if it saved a position other than the one it started at."""
        return DeliveryProgress(
            advanced=self.saves > 0 and self._position != self.started_at_position, position=self._position
        )

    def load(self) -> None:
        """Claim the checkpoint's lease and read its position.

        Raises CheckpointAlreadyCompleted if the work is done, CheckpointBusy if another message's
        delivery holds the lease.
        """
        now = datetime.now(UTC)
        token = uuid.uuid4().hex
        with self.database.transaction() as connection:
            claimed = connection.execute(
                _claim_statement(connection.dialect.name),
                {
                    "key": self.key,
                    "actor_name": self.actor_name,
                    "message_id": self.message_id,
                    "now": now,
                    "message": self._payload,
                    "token": token,
                    "stale_before": now - timedelta(milliseconds=self.lease_ms),
                },
            ).first()
            if claimed is None:
                holder_query = select(job_checkpoints.c.message_id, job_checkpoints.c.completed_at)
                holder = connection.execute(holder_query.where(job_checkpoints.c.key == self.key)).one()
                if holder.completed_at is not None:
                    raise CheckpointAlreadyCompleted(
                        f"Checkpoint {self.key!r} was completed at {holder.completed_at}; skipping message "
                        f"{self.message_id}."
                    )
                raise self._busy(holder.message_id)
            if claimed.position is not None:
                connection.execute(
                    update(job_checkpoints)
                    .where(job_checkpoints.c.key == self.key)
                    .values(resumes=job_checkpoints.c.resumes + 1, resumed_from=claimed.position)
                )
                self._position = self.started_at_position = claimed.position
                self.resumed = True
        self.lease_token = token
        self._loaded = True
        if self.resumed:
            log_event("checkpoint.resumed", self.message, position=self._position)

    def finish(self, *, completed: bool) -> None:
        """Release the lease when the delivery ends; ``completed``: mark the work done as well."""
        values: dict[str, Any] = {"lease_token": None}
        if completed:
            # The saved message is only for handing back an unfinished job (stalled jobs): the row stays,
            # as the mark that the work is done, but not the copy of the message.
            values.update(completed_at=datetime.now(UTC), progress=1.0, message=null())
        conditions = [job_checkpoints.c.key == self.key, job_checkpoints.c.completed_at.is_(None)]
        if self.lease_token is not None:  # None: the checkpoint was never loaded (the database was down)
            conditions.append(job_checkpoints.c.lease_token == self.lease_token)
        elif not completed:
            return
        with self.database.transaction() as connection:
            finished = connection.execute(update(job_checkpoints).where(*conditions).values(**values)).rowcount
        if completed and not finished and self.lease_token is not None:
            # Every save of this delivery committed, but another delivery holds the work now and
            # completes it once it has resumed after them.
            log_event("checkpoint.superseded", self.message, position=self._position, by_message_id=None)

    def _busy(self, holder_message_id: str) -> CheckpointBusy:
        waits = self.message.options.get("checkpoint_waits", 0)
        self.message.options["checkpoint_waits"] = waits + 1
        delay_ms = min(BUSY_RETRY_MAX_MS, 1_000 * 2**waits)
        log_event("checkpoint.busy", self.message, held_by=holder_message_id, retry_in_ms=delay_ms)
        return CheckpointBusy(
            f"checkpoint {self.key!r} is held by message {holder_message_id}; message {self.message_id} "
            f"waits for it (next look in {delay_ms / 1000:g} s)",
            held_by=holder_message_id,
            delay=delay_ms,
        )

    def _superseded(self, connection: Connection, position: Any) -> CheckpointSuperseded:
        holder = connection.scalar(select(job_checkpoints.c.message_id).where(job_checkpoints.c.key == self.key))
        log_event("checkpoint.superseded", self.message, position=position, by_message_id=holder)
        return CheckpointSuperseded(
            f"message {self.message_id} lost checkpoint {self.key!r} to message {holder}'s delivery; its save at "
            f"{position!r} was not written",
            by_message_id=holder,
        )


def _insert_row(dialect_name: str, **values: Any) -> postgresql.Insert | sqlite.Insert:
    """A new checkpoint row, leased to the delivery inserting it: the claim's and the save's INSERT."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    now = bindparam("now", type_=job_checkpoints.c.updated_at.type)
    return dialect.insert(job_checkpoints).values(
        key=bindparam("key"),
        actor_name=bindparam("actor_name"),
        message_id=bindparam("message_id"),
        resumes=0,
        created_at=now,
        updated_at=now,
        message=bindparam("message", type_=JSON),
        lease_token=bindparam("token"),
        **values,
    )


@cache
def _claim_statement(dialect_name: str) -> ReturningInsert[Any]:
    """Claims the lease (creating the row on a first run) unless the work is complete or another
    message's delivery holds a fresh lease; returns the saved position, or no row if not claimed."""
    statement = _insert_row(dialect_name, saves=0)
    stale_before = bindparam("stale_before", type_=job_checkpoints.c.updated_at.type)
    current = job_checkpoints.c
    return statement.on_conflict_do_update(
        index_elements=["key"],
        set_={
            "lease_token": statement.excluded.lease_token,
            "message_id": statement.excluded.message_id,
            "message": statement.excluded.message,
            "updated_at": statement.excluded.updated_at,
        },
        where=current.completed_at.is_(None)
        & or_(
            current.lease_token.is_(None),
            current.message_id == statement.excluded.message_id,
            current.updated_at < stale_before,
        ),
    ).returning(current.position)


@cache
def _save_statement(dialect_name: str) -> ReturningInsert[Any]:
    """The checkpoint's upsert, fenced by the lease, built once per dialect: building it for every
    save cost more CPU than the database's round trips (profiled: ``bench/README.md``)."""
    statement = _insert_row(
        dialect_name, saves=1, position=bindparam("position", type_=JSON), progress=bindparam("progress")
    )
    # A row deleted meanwhile (by an operator) is written anew, leased to this delivery.
    return statement.on_conflict_do_update(
        index_elements=["key"],
        set_={
            "position": statement.excluded.position,
            "progress": statement.excluded.progress,
            "message_id": statement.excluded.message_id,
            "saves": job_checkpoints.c.saves + 1,
            "updated_at": statement.excluded.updated_at,
            "message": statement.excluded.message,
        },
        where=job_checkpoints.c.lease_token == statement.excluded.lease_token,
    ).returning(job_checkpoints.c.key)


class Checkpoints(Middleware):
    """Gives checkpointed actors their :class:`Checkpoint` and completes it when they succeed.

    Parameters:
      database: where checkpoints are kept (the same database as the actors' output, so both
        commit in one transaction).
      hand_back_after_ms: hand the message back at the first checkpoint saved after the delivery
        has been held this long (RabbitMQ: safely under its ``consumer_timeout``); None: never.
      consumer_timeout_ms: RabbitMQ's ``consumer_timeout``. At boot, each actor that is not
        checkpointed and whose jobs may run longer (:func:`longest_time_limit_ms`) is named in a
        warning: the broker would deliver its message again while the job still runs.
      lease_ms: how long a checkpoint's lease holds without a save against a delivery of another
        message for the same work (a delivery of the same message takes it over at once).

    Actor options:
      checkpointed(bool): the actor calls :func:`current_checkpoint`.
      checkpoint_key(Callable[..., str]): derives the checkpoint's key from the message's
        arguments; defaults to the message id.
    """

    def __init__(
        self,
        *,
        database: Database,
        hand_back_after_ms: int | None = None,
        consumer_timeout_ms: int | None = None,
        lease_ms: int = DEFAULT_LEASE_MS,
    ) -> None:
        self.database = database
        self.lease_ms = lease_ms
        self.hand_back_after_ms = hand_back_after_ms
        self.consumer_timeout_ms = consumer_timeout_ms

    @property
    def actor_options(self) -> set[str]:
        return {"checkpointed", "checkpoint_key"}

    def before_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor) -> None:
        # A MiddlewareError raised here stops the declaration: the mistake shows at import, not at a deploy.
        if actor.options.get("checkpointed") and not actor.options.get("notify_shutdown"):
            raise ActorDeclarationError(
                f"Actor {actor.actor_name!r} is declared checkpointed=True without notify_shutdown=True: a "
                "deploy would wait out the worker's shutdown timeout, then kill the job, instead of stopping "
                "it at once with its checkpoint saved. Add notify_shutdown=True to its options."
            )

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Not after_process_boot: the dramatiq CLI emits that before it imports the actor modules.
        if self.consumer_timeout_ms is None:
            return
        for actor_name in sorted(broker.get_declared_actors()):
            actor = broker.get_actor(actor_name)
            limit_ms = longest_time_limit_ms(broker, actor)
            if not actor.options.get("checkpointed") and limit_ms > self.consumer_timeout_ms:
                runs = "without a time limit" if limit_ms == math.inf else f"for up to {_duration(limit_ms)}"
                logger.warning(
                    "Actor %r is not checkpointed and may run %s, longer than the broker's consumer timeout "
                    "(%s): the broker would close the channel and deliver the message again while the job "
                    "still runs. Declare it checkpointed=True (a checkpointed job hands its message back in time), "
                    "give it a time_limit under the consumer timeout, or raise the consumer timeout.",
                    actor_name,
                    runs,
                    _duration(self.consumer_timeout_ms),
                )

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        actor = broker.get_actor(message.actor_name)
        if not actor.options.get("checkpointed"):
            return
        key_of: Callable[..., str] | None = actor.options.get("checkpoint_key")
        key = key_of(*message.args, **message.kwargs) if key_of else message.message_id
        hand_back_at = None
        if self.hand_back_after_ms is not None:
            hand_back_at = time.monotonic() + self.hand_back_after_ms / 1000
        checkpoint = Checkpoint(
            database=self.database, key=key, message=message, hand_back_at=hand_back_at, lease_ms=self.lease_ms
        )
        _current.set(checkpoint)
        try:
            # Loaded here so completed work is skipped, and a busy checkpoint waited for, before the actor starts.
            checkpoint.load()
        except SQLAlchemyError:
            logger.warning(
                "Could not load checkpoint %r; the actor will load it when it asks, and fail (and be "
                "retried) if the database is still unreachable.",
                key,
                exc_info=True,
            )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        checkpoint = _current.get()
        _current.set(None)
        if checkpoint is not None:
            # For Retries, whose after-hook runs next: an interrupted job that saved nothing is stalling.
            loaded = checkpoint.lease_token is not None
            delivery_progress.set(checkpoint.progress() if loaded else None)
            _finish(checkpoint, completed=exception is None)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        checkpoint = _current.get()
        _current.set(None)
        if checkpoint is not None and checkpoint.lease_token is not None:  # skipped by a later middleware
            _finish(checkpoint, completed=False)


def _finish(checkpoint: Checkpoint, *, completed: bool) -> None:
    try:
        checkpoint.finish(completed=completed)
    except SQLAlchemyError as error:  # the database is down: say what it leaves, not a traceback
        if completed:
            logger.warning(
                "Could not mark checkpoint %r completed after message %s succeeded (%s). Its work is saved; "
                "a later delivery for it resumes at the last position and completes it.",
                checkpoint.key,
                checkpoint.message_id,
                type(error).__name__,
            )
        else:
            logger.warning(
                "Could not release checkpoint %r after message %s (%s). A redelivery of that message takes it "
                "over at once; another message for the same work waits until the lease goes stale.",
                checkpoint.key,
                checkpoint.message_id,
                type(error).__name__,
            )


def _duration(milliseconds: float) -> str:
    return f"{milliseconds / 60_000:g} min" if milliseconds >= 60_000 else f"{milliseconds / 1000:g} s"
