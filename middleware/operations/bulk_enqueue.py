"""Bulk enqueue: many messages to Redis in a few round trips, with every enqueue hook still run.

One ``send()`` costs a round trip to Redis (about 180 us from Python) plus whatever the enqueue
hooks write (JobStatus: one transaction per message). ``send_many(actor, arguments)``:

1. builds each message as ``actor.send`` would (``actor.message_with_options``: actor options
   and routing apply); an item is the actor's positional arguments, or a :class:`Call` with
   keyword arguments and options of its own (an idempotency key per message);
2. runs every middleware's ``before_enqueue`` for each message, as the broker does (an
   idempotency key is claimed here; a :class:`~middleware.idempotency.DuplicateJob` stops the
   batch at that message, after the messages before it are enqueued, as a loop of ``send()``
   would stop);
3. sends each chunk through one Redis pipeline that runs the broker's own enqueue script per
   message, so the messages are stored exactly as ``send()`` stores them;
4. runs ``after_enqueue``: once per chunk for middleware that defines
   ``after_enqueue_batch(broker, messages, delay)`` (JobStatus writes the chunk's rows in one
   statement), once per message for the others, in the broker's order for after-hooks.

On other brokers (RabbitMQ) each message goes through ``broker.enqueue``: the same hooks, one
round trip each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any
from uuid import uuid4

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name
from dramatiq.middleware import MiddlewareError

from middleware.idempotency import settle_refused_sends

logger = logging.getLogger("middleware.operations.bulk_enqueue")

DEFAULT_CHUNK_SIZE = 500


@dataclass(frozen=True)
class Call:
    """One message of a bulk send: its arguments, and options added to (or overriding) the shared ones."""

    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


def send_many(
    actor: dramatiq.Actor,
    calls: Iterable[Sequence[Any] | Call],
    *,
    options: Mapping[str, Any] | None = None,
    delay: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> list[dramatiq.Message]:
    """Enqueue one message per item of ``calls`` (the actor's positional arguments, or a :class:`Call`),
    with ``options`` and ``delay`` shared by all; returns the enqueued messages, in order."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
    broker = actor.broker
    pending = iter(calls)
    sent: list[dramatiq.Message] = []
    while chunk := list(islice(pending, chunk_size)):
        messages = [_message(actor, call, options or {}) for call in chunk]
        if isinstance(broker, RedisBroker):
            sent += _enqueue_pipelined(broker, messages, delay)
        else:
            sent += [broker.enqueue(message, delay=delay) for message in messages]
    return sent


def _message(actor: dramatiq.Actor, call: Sequence[Any] | Call, options: Mapping[str, Any]) -> dramatiq.Message:
    if isinstance(call, Call):
        return actor.message_with_options(
            args=tuple(call.args), kwargs=dict(call.kwargs), **{**options, **call.options}
        )
    return actor.message_with_options(args=tuple(call), **options)


def _enqueue_pipelined(
    broker: RedisBroker, messages: list[dramatiq.Message], delay: int | None
) -> list[dramatiq.Message]:
    ready: list[dramatiq.Message] = []
    refusal: MiddlewareError | None = None
    for message in messages:
        message = _as_broker_stores_it(broker, message, delay)
        try:
            broker.emit_before("enqueue", message, delay)
        except MiddlewareError as error:  # e.g. DuplicateJob: stop here, as a loop of send() would
            refusal = error
            break
        ready.append(message)
    if ready:
        enqueue = broker.scripts["dispatch"]
        pipeline = broker.client.pipeline(transaction=False)
        for message in ready:
            queue_name = message.queue_name
            # The arguments of the broker's own do_enqueue (RedisBroker._dispatch), run in the pipeline.
            enqueue(
                keys=[broker.namespace],
                args=[
                    "enqueue",
                    current_millis(),
                    queue_name,
                    broker.broker_id,
                    broker.heartbeat_timeout,
                    broker.dead_message_ttl,
                    broker._should_do_maintenance("enqueue"),
                    broker._max_unpack_size(),
                    message.options["redis_message_id"],
                    message.encode(),
                ],
                client=pipeline,
            )
        try:
            pipeline.execute()
        except Exception as error:
            settle_refused_sends(broker, ready, error)
            raise
        _emit_after_enqueue(broker, ready, delay)
    if refusal is not None:
        raise refusal
    return ready


def _as_broker_stores_it(broker: RedisBroker, message: dramatiq.Message, delay: int | None) -> dramatiq.Message:
    """What ``RedisBroker.enqueue`` does to a message before its hooks run: a Redis id, and the
    delay queue with an eta when delayed."""
    message = message.copy(options={"redis_message_id": str(uuid4())})
    if delay is not None:
        message = message.copy(queue_name=dq_name(message.queue_name), options={"eta": current_millis() + delay})
    return message


def _emit_after_enqueue(broker: dramatiq.Broker, messages: list[dramatiq.Message], delay: int | None) -> None:
    for middleware in reversed(broker.middleware):
        batch_hook = getattr(middleware, "after_enqueue_batch", None)
        if batch_hook is not None:
            _guarded(middleware, batch_hook, broker, messages, delay)
        else:
            for message in messages:
                _guarded(middleware, middleware.after_enqueue, broker, message, delay)


def _guarded(middleware: Any, hook: Callable[..., None], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:  # as the broker's emit_after does: logged, and the other hooks still run
        logger.critical("Unexpected failure in after_enqueue of %r.", middleware, exc_info=True)
