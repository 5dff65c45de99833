"""Retries that never spend an attempt on an interruption.

Dramatiq's ``Retries`` counts a deploy's ``Shutdown`` as a failed attempt, so repeated deploys
can exhaust a long job's retries. This subclass hands an interrupted message straight back:

- ``Shutdown`` (a deploy or restart), for any actor;
- ``TimeLimitExceeded`` for a checkpointed actor, whose next run continues from its checkpoint.

Everything else is retried exactly as Dramatiq does.

The message goes back through its delay queue (a delay of ``requeue_delay_ms``), not its own
queue: on Redis, re-enqueueing a message id into the queue it is being acked from would let
that ack delete the new copy.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.middleware import Retries as DramatiqRetries
from dramatiq.middleware import Shutdown, TimeLimitExceeded

logger = logging.getLogger("middleware.retries.Retries")

REQUEUE_DELAY_MS = 100


class Retries(DramatiqRetries):
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
        if exception is not None and is_resumable_interruption(broker.get_actor(message.actor_name), exception):
            logger.info(
                "Message %s was interrupted by %s; handing it back without spending an attempt.",
                message.message_id, type(exception).__name__,
                extra={"event": "job.interrupted", "message_id": message.message_id},
            )  # fmt: skip
            broker.enqueue(message, delay=self.requeue_delay_ms)
            return
        super().after_process_message(broker, message, result=result, exception=exception)


def is_resumable_interruption(actor: dramatiq.Actor, exception: BaseException) -> bool:
    if isinstance(exception, Shutdown):
        return True
    return isinstance(exception, TimeLimitExceeded) and bool(actor.options.get("checkpointed"))
