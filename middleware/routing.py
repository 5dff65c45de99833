"""Routing by expected duration: long jobs go to a large queue with a long time limit.

A message cannot be re-routed once it is built (both brokers read ``message.queue_name`` before
``before_enqueue`` runs), so routing happens when the message is built: actors declared with
``actor_class=RoutedActor`` ask :class:`DurationRouting` for their queue in
``message_with_options``. Each routed message also carries the time limit of its queue.

The expected duration is, in order: the message option ``expected_duration_ms`` given by the
caller, then the actor option ``estimate_duration_ms(*args, **kwargs)``.

An estimate can be wrong. A routed job stopped by the regular queue's time limit is *escalated*:
Retries moves it to the large queue, under the large time limit, without spending an attempt
(:func:`escalated`); a checkpointed one resumes there from its last checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import Middleware, TimeLimit

from middleware.metrics import count_routing

logger = logging.getLogger("middleware.routing.DurationRouting")

LARGE_QUEUE_SUFFIX = "-large"


def large_queue_name(queue_name: str) -> str:
    return f"{queue_name}{LARGE_QUEUE_SUFFIX}"


class DurationRouting(Middleware):
    """Chooses the regular or the large queue for each message of a routed actor.

    Parameters:
      large_threshold_ms: messages expected to run longer than this go to the large queue.
      regular_time_limit_ms, large_time_limit_ms: the time limit each queue's messages carry.

    Actor options:
      estimate_duration_ms(Callable[..., int | None]): estimates a job's duration from its
        arguments; None means unknown (the regular queue).
    """

    def __init__(self, *, large_threshold_ms: int, regular_time_limit_ms: int, large_time_limit_ms: int) -> None:
        self.large_threshold_ms = large_threshold_ms
        self.regular_time_limit_ms = regular_time_limit_ms
        self.large_time_limit_ms = large_time_limit_ms

    @property
    def actor_options(self) -> set[str]:
        return {"estimate_duration_ms"}

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor) -> None:
        # Consumers exist only for declared queues: declare the large queue with the actor.
        if isinstance(actor, RoutedActor):
            broker.declare_queue(large_queue_name(actor.queue_name))

    def route(self, actor: dramatiq.Actor, message: dramatiq.Message) -> dramatiq.Message:
        duration_ms = self.expected_duration_ms(actor, message)
        large = duration_ms is not None and duration_ms > self.large_threshold_ms
        queue_name = large_queue_name(actor.queue_name) if large else actor.queue_name
        time_limit = self.large_time_limit_ms if large else self.regular_time_limit_ms
        options = {"time_limit": time_limit, **message.options}
        if duration_ms is not None:
            options["expected_duration_ms"] = duration_ms
        logger.debug("Routing message %s (expected %s ms) to %r.", message.message_id, duration_ms, queue_name)
        count_routing(actor.actor_name, queue_name, large=large)
        return message.copy(queue_name=queue_name, options=options)

    @staticmethod
    def expected_duration_ms(actor: dramatiq.Actor, message: dramatiq.Message) -> int | None:
        given = message.options.get("expected_duration_ms")
        if given is not None:
            return int(given)
        estimate: Callable[..., int | None] | None = actor.options.get("estimate_duration_ms")
        return estimate(*message.args, **message.kwargs) if estimate else None


class RoutedActor(dramatiq.Actor):
    """An actor whose messages are routed by :class:`DurationRouting` when they are built."""

    @property
    def queue_names(self) -> tuple[str, ...]:
        """Every queue its messages may run on (other middleware read this, without importing routing)."""
        return (self.queue_name, large_queue_name(self.queue_name))

    def message_with_options(
        self, *, args: tuple = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> dramatiq.Message:
        message = super().message_with_options(args=args, kwargs=kwargs, **options)
        return _routing_of(self.broker).route(self, message)


def escalated(broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> dramatiq.Message | None:
    """The copy of a routed message, stopped by the regular queue's time limit, that continues on
    the large queue under the large time limit; None when it ran on the large queue already, or
    its actor is not routed."""
    actor = broker.get_actor(message.actor_name)
    if not isinstance(actor, RoutedActor) or q_name(message.queue_name) != actor.queue_name:
        return None
    routing = _routing_of(broker)
    time_limit = max(message.options.get("time_limit") or 0, routing.large_time_limit_ms)
    options = {**message.options, "time_limit": time_limit, "escalated_from": actor.queue_name}
    return message.copy(queue_name=large_queue_name(actor.queue_name), options=options)


def longest_time_limit_ms(broker: dramatiq.Broker, actor: dramatiq.Actor) -> float:
    """How long the actor's jobs may run by default (``math.inf`` without a TimeLimit middleware): a
    routed actor's messages carry the large queue's limit at most, an actor's own ``time_limit``
    comes next, then the TimeLimit middleware's default. A sender may still pass its own."""
    if isinstance(actor, RoutedActor):
        return _routing_of(broker).large_time_limit_ms
    if actor.options.get("time_limit") is not None:
        return actor.options["time_limit"]
    default = default_time_limit_ms(broker)
    return math.inf if default is None else default


def default_time_limit_ms(broker: dramatiq.Broker) -> float | None:
    """The TimeLimit middleware's limit for messages and actors that set none (None without one)."""
    limits = [middleware.time_limit for middleware in broker.middleware if isinstance(middleware, TimeLimit)]
    return limits[0] if limits else None


def time_limit_ms(
    message: dramatiq.Message | dramatiq.MessageProxy, actor: dramatiq.Actor, default: float | None
) -> float | None:
    """The limit a delivery runs under, as TimeLimit reads it: the message's, its actor's, or ``default``."""
    return message.options.get("time_limit") or actor.options.get("time_limit") or default


def _routing_of(broker: dramatiq.Broker) -> DurationRouting:
    for middleware in broker.middleware:
        if isinstance(middleware, DurationRouting):
            return middleware
    raise RuntimeError("RoutedActor needs the DurationRouting middleware on its broker; add it to the stack.")
