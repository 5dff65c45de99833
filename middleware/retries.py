"""Retries: per-actor policies; never an attempt spent on an interruption, never a fatal error retried.

1. An interruption hands the message straight back, spending no attempt: ``Shutdown`` (a
   deploy) for any actor, ``TimeLimitExceeded`` and ``HandBack`` (held too long for RabbitMQ's
   ``consumer_timeout``) for a checkpointed actor (its next run continues from its checkpoint),
   and a checkpoint's lease: ``CheckpointBusy`` (handed back after the delay it names, to wait for
   the delivery holding it) and ``CheckpointSuperseded`` (handed back, unless the delivery that
   took the lease over carries this same message: then it just ends).
   It goes back through the delay queue: on Redis, re-enqueueing a message
   id into the queue it is being acked from would let that ack delete the new copy. A failure
   because the database is down is one too (``middleware.storage.database_outages``): the worker thread
   then waits for the database before it takes another message.
   ``Shutdown`` is handed back for an actor that is not checkpointed too, even one with
   ``max_retries=0``: the job was stopped by a deploy, not by a failure of its own.
   A routed job stopped by the regular queue's time limit is escalated instead: it continues on
   the large queue, under the large time limit (``middleware.routing.escalated``; the event
   ``job.escalated``).
2. No interruption loops forever. A job interrupted ``max_hand_backs_without_progress`` times in
   a row without saving a checkpoint (a checkpointed job's saves are its progress; a job that is
   not checkpointed saves none) is dead-lettered, not handed back again: with kind ``time_limit``
   when its time limit stopped it (it cannot fit one step in its longest limit), ``no_progress``
   otherwise (deploys, for example). The count, the ``hand_backs_without_progress`` option, starts
   again at every save. The other interruptions have their own bounds: a busy checkpoint waits for
   a holder that saves (or loses its lease after ``lease_ms``), database outages are capped at 50,
   and a job that kills its worker is capped by the poison count (``max_deliveries``).
3. A fatal error (``middleware.policies.error_classification``; the actor options ``fatal_errors`` and
   ``retryable_errors`` add types; ``throws`` counts as fatal) fails the message at once, whatever
   its retry budget. A classified fatal error is logged here at WARNING, and the worker logs it as
   an error with its traceback, so error reporting sees it. An error in the actor's ``throws`` is
   one the actor declared as expected: as in Dramatiq, it is logged at INFO (here and by the worker).
4. Anything else is retried by the actor's :class:`RetryPolicy` (``retry_policy``), or by one
   made from Dramatiq's own options (``max_retries``, ``min_backoff``, ``max_backoff``; the delay
   never exceeds ``max_backoff``, even below ``min_backoff``); ``retry_when(retries, exception)``
   still has the last word when an actor sets it. Each failure stamps ``retries``, ``traceback``
   and ``requeue_timestamp`` (milliseconds since the epoch) on the message, as Dramatiq's does.
5. A message whose retries run out (not a fatal error, which was never to be retried) is sent, as
   in Dramatiq, to the actor named by its ``on_retry_exhausted`` option, with the message as a dict
   and ``{"retries": ..., "max_retries": ...}``. For every final failure, fatal ones included, use
   Dramatiq's ``on_failure`` callback.

The decision is published in ``middleware.policies.failure_decision.current_failure`` for the
middleware that runs after this one (job status, job logs, dead letters).
"""

from __future__ import annotations

import inspect
import logging
import time
import traceback
from typing import Any

import dramatiq
from dramatiq import ActorNotFound, Retry
from dramatiq.middleware import Middleware, Shutdown, TimeLimitExceeded

from middleware.brokers.reliable_enqueue import enqueue_until_accepted
from middleware.dead_letters import NO_PROGRESS, TIME_LIMIT
from middleware.errors import CheckpointBusy, CheckpointSuperseded, HandBack, NoProgress
from middleware.job_logs import log_event
from middleware.policies.error_classification import Classification, ErrorKind, classify_error
from middleware.policies.failure_decision import (
    FailureDecision,
    current_failure,
    delivery_progress,
    delivery_superseded,
)
from middleware.policies.retry_policies import RetryPolicy
from middleware.routing import default_time_limit_ms, escalated, time_limit_ms
from middleware.storage.database_outages import DatabaseOutages

logger = logging.getLogger("middleware.retries.Retries")

REQUEUE_DELAY_MS = 100
#: Interruptions in a row without a checkpoint saved, after which a job is dead-lettered.
MAX_HAND_BACKS_WITHOUT_PROGRESS = 3
#: The message option that counts them.
STALLED_OPTION = "hand_backs_without_progress"
#: Dramatiq's cap on any backoff: 7 days.
MAX_BACKOFF_MS = 7 * 86_400_000


class Retries(Middleware):
    """Parameters: the defaults for actors that set none of their own (as Dramatiq's Retries)."""

    def __init__(
        self,
        *,
        max_retries: int = 20,
        min_backoff: int = 15_000,
        max_backoff: int = MAX_BACKOFF_MS,
        requeue_delay_ms: int = REQUEUE_DELAY_MS,
        max_hand_backs_without_progress: int = MAX_HAND_BACKS_WITHOUT_PROGRESS,
        database_outages: DatabaseOutages | None = None,
    ) -> None:
        self.default_policy = _policy_from_dramatiq_options(max_retries, min_backoff, max_backoff)
        self.requeue_delay_ms = requeue_delay_ms
        self.max_hand_backs_without_progress = max_hand_backs_without_progress
        self.database_outages = database_outages

    @property
    def actor_options(self) -> set[str]:
        return {
            "max_retries",
            "min_backoff",
            "max_backoff",
            "retry_when",
            "throws",
            "on_retry_exhausted",
            "retry_policy",
            "fatal_errors",
            "retryable_errors",
        }

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        current_failure.set(None)
        delivery_superseded.set(False)
        delivery_progress.set(None)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            return
        actor = broker.get_actor(message.actor_name)
        if isinstance(exception, TimeLimitExceeded) and (larger := escalated(broker, message)) is not None:
            log_event(
                "job.escalated",
                message,
                to_queue=larger.queue_name,
                time_limit_ms=larger.options["time_limit"],
                position=_last_position(),
            )
            enqueue_until_accepted(broker, larger, delay=self.requeue_delay_ms)
            return
        if is_resumable_interruption(actor, exception):
            if isinstance(exception, CheckpointSuperseded) and exception.by_message_id == message.message_id:
                log_event("job.interrupted", message, reason=type(exception).__name__)
                delivery_superseded.set(True)
                return
            if isinstance(exception, CheckpointBusy | CheckpointSuperseded):
                # Bounded by the holder of the checkpoint (it saves, completes, or loses its lease).
                log_event("job.interrupted", message, reason=type(exception).__name__)
                delay_ms = exception.delay if isinstance(exception, CheckpointBusy) else None
                enqueue_until_accepted(broker, message, delay=delay_ms or self.requeue_delay_ms)
                return
            final = self._hand_back_unless_stalled(broker, message, exception)
            if final is None:
                return
            exception = final  # the NoProgress or TimeLimitExceeded it is dead-lettered with
        if self.database_outages is not None and self.database_outages.interrupts(message, exception):
            log_event("job.interrupted", message, reason="DatabaseUnavailable")
            enqueue_until_accepted(broker, message, delay=self.requeue_delay_ms)
            self.database_outages.wait_until_reachable()
            return
        decision = current_failure.get() or self._decide(actor, message, exception)
        current_failure.set(decision)
        message.options["retries"] = decision.attempt
        message.options["traceback"] = traceback.format_exc(limit=30)
        message.options["requeue_timestamp"] = int(time.time() * 1000)
        if not decision.will_retry:
            if decision.fatal:
                # An error in throws is one the actor expects: INFO, as Dramatiq logs it.
                level = logging.INFO if _in_throws(actor, message, exception) else logging.WARNING
                logger.log(
                    level,
                    "Message %s failed with a fatal error (%s); it is not retried.",
                    message.message_id,
                    decision.classification.reason,
                )
            else:
                logger.warning("Message %s failed all %d attempts.", message.message_id, decision.max_attempts)
                _send_on_retry_exhausted(broker, actor, message, decision)
            message.fail()
            return
        log_event(
            "job.retry",
            message,
            delay_ms=decision.delay_ms,
            error=f"{type(exception).__name__}: {exception}",
            fatal=False,
            attempt=decision.attempt,
        )
        enqueue_until_accepted(broker, message, delay=decision.delay_ms)

    def _hand_back_unless_stalled(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy, exception: BaseException
    ) -> BaseException | None:
        """Hand an interrupted job back (None), unless it has now been interrupted too often in a row
        without saving a checkpoint: then publish the decision that dead-letters it, and return the
        error it is dead-lettered with."""
        progress = delivery_progress.get()
        stalled = 0 if progress is not None and progress.advanced else message.options.get(STALLED_OPTION, 0) + 1
        if stalled < self.max_hand_backs_without_progress:
            message.options[STALLED_OPTION] = stalled
            log_event("job.interrupted", message, reason=type(exception).__name__, without_progress=stalled)
            enqueue_until_accepted(broker, message, delay=self.requeue_delay_ms)
            return None
        position = progress.position if progress is not None else None
        after = "before its first checkpoint" if position is None else f"after position {position!r}"
        if isinstance(exception, TimeLimitExceeded):
            kind = TIME_LIMIT
            limit_ms = time_limit_ms(message, broker.get_actor(message.actor_name), default_time_limit_ms(broker))
            limit = f"its time limit of {limit_ms / 1000:g} s" if limit_ms else "its time limit"
            text = (
                f"stopped by {limit} {stalled} times in a row without saving a checkpoint, {after}: one step "
                "does not fit the longest time limit it can run under"
            )
            final: BaseException = TimeLimitExceeded(text)
        else:
            kind = NO_PROGRESS
            text = (
                f"interrupted {stalled} times in a row ({type(exception).__name__} last) without saving a "
                f"checkpoint, {after}"
            )
            final = NoProgress(text)
        message.stuff_exception(final)
        classification = Classification(ErrorKind.FATAL, text)
        attempt = message.options.get("retries", 0) + 1
        current_failure.set(FailureDecision(classification, attempt, attempt, will_retry=False, kind=kind))
        return final

    def policy_of(self, actor: dramatiq.Actor, message: dramatiq.Message | dramatiq.MessageProxy) -> RetryPolicy:
        policy = message.options.get("retry_policy") or actor.options.get("retry_policy")
        if isinstance(policy, RetryPolicy):
            return policy
        names = ("max_retries", "min_backoff", "max_backoff")
        if any(name in message.options or name in actor.options for name in names):
            default = self.default_policy
            return _policy_from_dramatiq_options(
                message.options.get("max_retries", actor.options.get("max_retries", default.attempts - 1)),
                message.options.get("min_backoff", actor.options.get("min_backoff", default.base_delay_ms)),
                message.options.get("max_backoff", actor.options.get("max_backoff", default.max_delay_ms)),
            )
        return self.default_policy

    def _decide(
        self, actor: dramatiq.Actor, message: dramatiq.Message | dramatiq.MessageProxy, exception: BaseException
    ) -> FailureDecision:
        policy = self.policy_of(actor, message)
        attempt = message.options.get("retries", 0) + 1
        classification = classify_for_actor(actor, message, exception)
        will_retry = not classification.fatal and policy.retries_after(attempt)
        retry_when = actor.options.get("retry_when")
        if retry_when is not None and not classification.fatal:
            will_retry = bool(retry_when(attempt - 1, exception))
        delay_ms = None
        if will_retry:
            explicit = exception.delay if isinstance(exception, Retry) else None
            delay_ms = explicit if explicit is not None else policy.delay_ms(attempt)
        return FailureDecision(classification, attempt, policy.attempts, will_retry, delay_ms)


def _last_position() -> Any:
    progress = delivery_progress.get()
    return progress.position if progress is not None else None


def _in_throws(
    actor: dramatiq.Actor, message: dramatiq.Message | dramatiq.MessageProxy, exception: BaseException
) -> bool:
    throws = message.options.get("throws") or actor.options.get("throws")
    if not throws:
        return False
    return isinstance(exception, throws)


def _send_on_retry_exhausted(
    broker: dramatiq.Broker,
    actor: dramatiq.Actor,
    message: dramatiq.Message | dramatiq.MessageProxy,
    decision: FailureDecision,
) -> None:
    target_name = message.options.get("on_retry_exhausted") or actor.options.get("on_retry_exhausted")
    if not target_name:
        return
    try:
        target = broker.get_actor(target_name)
    except ActorNotFound:
        logger.error(
            "Message %s ran out of retries, but its on_retry_exhausted actor %r is not declared; "
            "nothing was sent to it (the message is dead-lettered as usual).",
            message.message_id,
            target_name,
        )
        return
    # The same arguments as Dramatiq's: the message as it was, and its retry count and budget.
    target.send(message.asdict(), {"retries": decision.attempt - 1, "max_retries": decision.max_attempts - 1})


def classify_for_actor(
    actor: dramatiq.Actor, message: dramatiq.Message | dramatiq.MessageProxy, exception: BaseException
) -> Classification:
    if _in_throws(actor, message, exception):
        return Classification(ErrorKind.FATAL, f"{type(exception).__name__} is in the actor's throws")
    if isinstance(exception, TypeError) and not _arguments_fit(actor, message):
        return Classification(ErrorKind.FATAL, "the message's arguments do not match the actor's signature")
    return classify_error(
        exception,
        fatal=tuple(actor.options.get("fatal_errors", ())),
        retryable=tuple(actor.options.get("retryable_errors", ())),
    )


def is_resumable_interruption(actor: dramatiq.Actor, exception: BaseException) -> bool:
    if isinstance(exception, Shutdown):
        return True
    return isinstance(exception, TimeLimitExceeded | HandBack | CheckpointBusy | CheckpointSuperseded) and bool(
        actor.options.get("checkpointed")
    )


def _arguments_fit(actor: dramatiq.Actor, message: dramatiq.Message | dramatiq.MessageProxy) -> bool:
    try:
        inspect.signature(actor.fn).bind(*message.args, **message.kwargs)
    except TypeError:
        return False
    return True


def _policy_from_dramatiq_options(max_retries: int | None, min_backoff: int, max_backoff: int) -> RetryPolicy:
    # Dramatiq's backoff doubles from min_backoff with jitter and never exceeds max_backoff (itself
    # at most 7 days), even where max_backoff is below min_backoff: max_backoff=0 retries at once.
    # max_retries=None meant "forever", which this system never allows: it is capped at Dramatiq's
    # default of 20.
    retries = 20 if max_retries is None else max_retries
    max_delay_ms = min(max_backoff, MAX_BACKOFF_MS)
    return RetryPolicy(
        attempts=retries + 1, base_delay_ms=min(min_backoff, max_delay_ms), max_delay_ms=max_delay_ms, jitter=0.5
    )
