"""Retries that never spend an attempt on an interruption, and never retry a fatal error.

Dramatiq's ``Retries`` counts a deploy's ``Shutdown`` as a failed attempt, so repeated deploys
can exhaust a long job's retries. This subclass hands an interrupted message straight back:

- ``Shutdown`` (a deploy or restart), for any actor;
- ``TimeLimitExceeded`` for a checkpointed actor, whose next run continues from its checkpoint.

A fatal error (see ``middleware.error_classification``; per actor, the options
``fatal_errors`` and ``retryable_errors`` add exception types) fails the message at once,
whatever its retry budget. It is not hidden behind Dramatiq's ``throws``, which would log it at
INFO where error reporting never sees it: the worker still logs it as an error with its traceback.

Everything else is retried exactly as Dramatiq does.

The message goes back through its delay queue (a delay of ``requeue_delay_ms``), not its own
queue: on Redis, re-enqueueing a message id into the queue it is being acked from would let
that ack delete the new copy.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import dramatiq
from dramatiq import Retry
from dramatiq.middleware import Retries as DramatiqRetries
from dramatiq.middleware import Shutdown, TimeLimitExceeded

from middleware.error_classification import Classification, classify_error
from middleware.retry_policies import RetryPolicy

logger = logging.getLogger("middleware.retries.Retries")

REQUEUE_DELAY_MS = 100


class Retries(DramatiqRetries):
    @property
    def actor_options(self) -> set[str]:
        return super().actor_options | {"fatal_errors", "retryable_errors", "retry_policy"}

    def __init__(self, *, requeue_delay_ms: int = REQUEUE_DELAY_MS, **options: Any) -> None:
        super().__init__(**options)
        self.requeue_delay_ms = requeue_delay_ms

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            return
        actor = broker.get_actor(message.actor_name)
        if is_resumable_interruption(actor, exception):
            logger.info(
                "Message %s was interrupted by %s; handing it back without spending an attempt.",
                message.message_id, type(exception).__name__,
                extra={"event": "job.interrupted", "message_id": message.message_id},
            )  # fmt: skip
            broker.enqueue(message, delay=self.requeue_delay_ms)
            return
        if not isinstance(exception, Retry):
            classification = classify_for_actor(actor, exception)
            if classification.fatal:
                logger.warning(
                    "Message %s failed with a fatal error (%s); it is not retried.",
                    message.message_id, classification.reason,
                    extra={"event": "job.fatal", "message_id": message.message_id},
                )  # fmt: skip
                message.options["traceback"] = traceback.format_exc(limit=30)
                message.fail()
                return
        policy: RetryPolicy | None = actor.options.get("retry_policy")
        if policy is not None:
            self._retry_by_policy(broker, message, policy)
            return
        super().after_process_message(broker, message, result=result, exception=exception)

    def _retry_by_policy(self, broker: dramatiq.Broker, message: dramatiq.Message, policy: RetryPolicy) -> None:
        failed_attempts = message.options.get("retries", 0) + 1
        message.options["retries"] = failed_attempts
        message.options["traceback"] = traceback.format_exc(limit=30)
        if not policy.retries_after(failed_attempts):
            logger.warning("Message %s failed all %d attempts.", message.message_id, policy.attempts)
            message.fail()
            return
        delay_ms = policy.delay_ms(failed_attempts)
        logger.info("Retrying message %s in %d ms (attempt %d of %d).", message.message_id, delay_ms,
                    failed_attempts + 1, policy.attempts)  # fmt: skip
        broker.enqueue(message, delay=delay_ms)


def classify_for_actor(actor: dramatiq.Actor, exception: BaseException) -> Classification:
    return classify_error(
        exception,
        fatal=tuple(actor.options.get("fatal_errors", ())),
        retryable=tuple(actor.options.get("retryable_errors", ())),
    )


def is_resumable_interruption(actor: dramatiq.Actor, exception: BaseException) -> bool:
    if isinstance(exception, Shutdown):
        return True
    return isinstance(exception, TimeLimitExceeded) and bool(actor.options.get("checkpointed"))
