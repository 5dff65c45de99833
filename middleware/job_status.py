"""Job status and progress: a row per message, from queued to completed or failed.

1. ``after_enqueue``: the row is created as ``queued`` (a retry's re-enqueue leaves it alone).
2. ``before_process_message``: ``processing``, one more attempt, one more unfinished delivery;
   a message whose previous deliveries all died is dead-lettered as poison instead.
3. ``after_process_message``: ``completed``, or ``failed`` with its error once Retries gives up.
   Between retries the status stays ``processing``, so an app's progress bar does not flicker.
   A delivery that a middleware stopped before the actor ran (``CheckpointBusy``: another message
   holds the checkpoint) gives its attempt back: waiting is not trying.

The writes of a delivery are committed before its ack, so the broker never lets go of a message
whose status is not saved; the actor need not wait for them:

- the finish is left pending when the actor returns, and committed with the writes of the other
  threads in one transaction. The worker thread waits for it in ``before_ack``; or, with a broker
  consumer that acks through :meth:`JobStatus.when_saved` (the Redis stack's), it goes on to its
  next message and the ack follows the commit;
- with ``start_write_behind``, the start is left pending too, and a job that finishes before its
  start was committed costs one row write instead of two. A start that is not committed before
  the actor runs cannot count a delivery whose worker dies at once, so a message the broker
  hands back from a dead worker (marked :data:`HANDED_BACK`) still waits for its start: the
  poison count misses at most the first of those deaths. Only for brokers that mark them (the
  Redis stack: ``middleware.heartbeats``).

Actors report progress with :func:`report_progress`; checkpointed actors report it with every
checkpoint, in the checkpoint's transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import CurrentMessage, Middleware, MiddlewareError
from sqlalchemy import (
    Connection,
    bindparam,
    func,
    select,
    text,
)

from middleware.policies.failure_decision import current_failure, delivery_superseded
from middleware.policies.poison_messages import DEFAULT_MAX_DELIVERIES, HANDED_BACK, PoisonMessage, is_poison
from middleware.storage.database import Database, delete_in_batches
from middleware.storage.group_commit import GroupCommit, Write
from middleware.storage.status_writer import (
    ENQUEUE,
    FINISH,
    RUN,
    START,
    StatusWriter,
    finish_values,
    row_values,
    run_values,
)
from middleware.storage.tables import job_status

logger = logging.getLogger("middleware.job_status.JobStatus")

QUEUED, PROCESSING, COMPLETED, FAILED = "queued", "processing", "completed", "failed"
STATUSES = (QUEUED, PROCESSING, COMPLETED, FAILED)


def _now() -> datetime:
    return datetime.now(UTC)


class JobStatus(Middleware):
    """Parameters:
    database: where ``job_status`` lives.
    max_deliveries: unfinished deliveries after which a message is dead-lettered as poison.
    start_write_behind: the actor runs without waiting for its start to be committed, but for a
      message marked :data:`HANDED_BACK`; only for a broker whose dead workers' messages are marked.
    """

    def __init__(
        self, *, database: Database, max_deliveries: int = DEFAULT_MAX_DELIVERIES, start_write_behind: bool = False
    ) -> None:
        self.database = database
        self.max_deliveries = max_deliveries
        self.start_write_behind = start_write_behind
        # Concurrent writes share a transaction, on a connection of this process's own
        # (middleware/storage/status_writer.py: the hot path).
        self._writes = GroupCommit(commit=StatusWriter(database).commit)
        self._consumers_ack_when_saved = False

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None) -> None:
        self._writes.run(_enqueue_write(message, _now()))

    def after_enqueue_batch(
        self, broker: dramatiq.Broker, messages: Sequence[dramatiq.Message], delay: int | None
    ) -> None:
        """``middleware.operations.bulk_enqueue``'s hook: the rows of many messages in one statement."""
        now = _now()
        self._writes.run_all([_enqueue_write(message, now) for message in messages])

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        start = Write(
            START,
            row_values(
                message.message_id,
                message.actor_name,
                q_name(message.queue_name),
                PROCESSING,
                _now(),
            ),
        )
        if self.start_write_behind and not message.options.get(HANDED_BACK):
            self._writes.submit(start)
            _unsaved(message).append(start)
            return
        unfinished = self._writes.run(start)
        if is_poison(unfinished - 1, max_deliveries=self.max_deliveries):
            logger.error(
                "Message %s was delivered %d times and its worker died each time; dead-lettering it as poison.",
                message.message_id,
                unfinished - 1,
            )
            message.fail()
            self._finish(message, status=FAILED, error=f"poison: its worker died {unfinished - 1} times in a row")
            raise PoisonMessage(f"message {message.message_id} killed its worker {unfinished - 1} times")

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            self._finish(message, status=COMPLETED, progress=1.0)
        elif message.failed:
            decision = current_failure.get()
            reason = f" ({decision.classification.reason})" if decision is not None else ""
            self._finish(message, status=FAILED, error=f"{type(exception).__name__}: {exception}{reason}")
        elif not delivery_superseded.get():  # retried, or handed back: still in progress for the app
            # A middleware that stopped the delivery before the actor ran (a checkpoint held by another
            # message: CheckpointBusy) raised a MiddlewareError; such a look is not an attempt.
            attempted = not isinstance(exception, MiddlewareError)
            self._finish(message, status=PROCESSING, finished=False, attempted=attempted)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        if not message.failed:  # skipped because its work is already complete
            self._finish(message, status=COMPLETED, progress=1.0)

    def before_ack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        if not self._consumers_ack_when_saved:
            self._save(message)

    def before_nack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._save(message)

    def _save(self, message: dramatiq.MessageProxy) -> None:
        """Wait until the delivery's status writes are committed: the broker must not let go of the
        message first (a worker killed in between would leave a finished job ``processing``)."""
        writes = _take_unsaved(message)
        if writes:
            self._writes.wait(writes)

    def acks_follow_saves(self) -> None:
        """Said by a broker consumer that acks through :meth:`when_saved`: ``before_ack`` then need
        not wait, and hold up the worker thread."""
        self._consumers_ack_when_saved = True

    def when_saved(
        self, message: dramatiq.MessageProxy, ack_all: Callable[[list[dramatiq.MessageProxy]], None]
    ) -> None:
        """Ack ``message`` once the delivery's status writes are committed: ``ack_all([message, ...])``
        is called with the messages whose writes were committed together, by the thread that committed
        them; or at once with ``[message]`` if they are committed already."""
        writes = _take_unsaved(message)
        if not writes:
            ack_all([message])
            return
        # The writes of a message are committed in order: the last one settles them all.
        self._writes.then(writes[-1], self._ack_saved, (message, writes, ack_all))

    @staticmethod
    def _ack_saved(
        saved: list[tuple[dramatiq.MessageProxy, list[Write], Callable[[list[dramatiq.MessageProxy]], None]]],
    ) -> None:
        by_ack: dict[Callable[[list[dramatiq.MessageProxy]], None], list[dramatiq.MessageProxy]] = {}
        for message, writes, ack_all in saved:
            for write in writes:
                if write.error is not None:  # as the wait in before_ack would have: logged, and acked
                    logger.error(
                        "The status of message %s could not be saved (%s: %s); acking it anyway.",
                        message.message_id,
                        type(write.error).__name__,
                        write.error,
                    )
            by_ack.setdefault(ack_all, []).append(message)
        for ack_all, messages in by_ack.items():
            ack_all(messages)

    def _finish(
        self,
        message: dramatiq.MessageProxy,
        *,
        status: str,
        error: str | None = None,
        progress: float | None = None,
        finished: bool = True,
        attempted: bool = True,
    ) -> None:
        now = _now()
        finish = Write(
            FINISH,
            finish_values(
                message.message_id,
                status=status,
                now=now,
                finished_at=now if finished else None,
                error=error,
                progress=progress,
                attempted=attempted,
            ),
        )
        writes = _unsaved(message)
        if writes and writes[-1].kind == START:
            run = Write(RUN, run_values(writes[-1].params, finish.params))
            if self._writes.replace(writes[-1], run):  # its start is still pending: one row for both
                writes[-1] = run
                return
        self._writes.submit(finish)
        writes.append(finish)


def _unsaved(message: dramatiq.MessageProxy) -> list[Write]:
    """The status writes of this delivery not known to be committed yet. They live on the delivery
    (Dramatiq's message proxy, from fetch to ack), not under the message id: a delayed message's
    ack and the delivery of its copy in the queue share the id."""
    writes = message.__dict__.get(_UNSAVED)
    if writes is None:
        writes = message.__dict__[_UNSAVED] = []
    return writes


def _take_unsaved(message: dramatiq.MessageProxy) -> list[Write]:
    return message.__dict__.pop(_UNSAVED, None) or []


_UNSAVED = "_job_status_unsaved_writes"


def _enqueue_write(message: dramatiq.Message, now: datetime) -> Write:
    """The ``queued`` row of a message just enqueued (a re-enqueue leaves an existing row alone)."""
    values = row_values(message.message_id, message.actor_name, q_name(message.queue_name), QUEUED, now)
    return Write(ENQUEUE, values)


#: A running job's progress. An upsert, not an update: the job's row may not exist yet, its start
#: written behind and its ``queued`` row (written by the sender after the broker took the message)
#: still on its way; the start and the enqueue that follow leave the progress alone.
PROGRESS_UPSERT = text(
    "INSERT INTO job_status (message_id, actor_name, queue_name, status, attempts, unfinished_deliveries, "
    "progress, updated_at) VALUES (:of_message, :actor_name, :queue_name, 'processing', 0, 0, :new_progress, :now) "
    "ON CONFLICT (message_id) DO UPDATE SET progress = excluded.progress, updated_at = excluded.updated_at"
).bindparams(bindparam("now", type_=job_status.c.updated_at.type))


def progress_values(
    message: dramatiq.Message | dramatiq.MessageProxy, fraction: float, now: datetime
) -> dict[str, Any]:
    """The parameters of :data:`PROGRESS_UPSERT` (``fraction`` clamped to 0..1)."""
    return {
        "of_message": message.message_id,
        "actor_name": message.actor_name,
        "queue_name": q_name(message.queue_name),
        "new_progress": max(0.0, min(1.0, fraction)),
        "now": now,
    }


def report_progress(database: Database, fraction: float, *, connection: Connection | None = None) -> None:
    """Record the running job's progress (0..1); on ``connection``, inside the caller's transaction."""
    message = CurrentMessage.get_current_message()
    if message is None:
        raise RuntimeError("report_progress() is for actors: no message is being processed in this thread.")
    values = progress_values(message, fraction, _now())
    if connection is not None:
        connection.execute(PROGRESS_UPSERT, values)
        return
    with database.transaction() as own_connection:
        own_connection.execute(PROGRESS_UPSERT, values)


def get_job(database: Database, message_id: str) -> dict[str, Any] | None:
    with database.engine.connect() as connection:
        row = connection.execute(select(job_status).where(job_status.c.message_id == message_id)).first()
    return dict(row._mapping) if row is not None else None


def list_jobs(
    database: Database,
    *,
    status: str | None = None,
    actor: str | None = None,
    queue: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    query = _where(select(job_status), status=status, actor=actor, queue=queue)
    query = query.order_by(job_status.c.updated_at.desc()).limit(limit).offset(offset)
    with database.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def count_jobs(
    database: Database, *, status: str | None = None, actor: str | None = None, queue: str | None = None
) -> int:
    query = _where(select(func.count()).select_from(job_status), status=status, actor=actor, queue=queue)
    with database.engine.connect() as connection:
        return connection.scalar(query)


def purge_finished_jobs(database: Database, *, older_than: timedelta) -> int:
    """Delete the rows of jobs that completed or failed more than ``older_than`` ago (retention)."""
    cutoff = _now() - older_than
    return delete_in_batches(
        database, job_status, job_status.c.status.in_((COMPLETED, FAILED)), job_status.c.updated_at < cutoff
    )


def _where(query, *, status: str | None, actor: str | None, queue: str | None):
    for column, value in (
        (job_status.c.status, status),
        (job_status.c.actor_name, actor),
        (job_status.c.queue_name, queue),
    ):
        if value is not None:
            query = query.where(column == value)
    return query
