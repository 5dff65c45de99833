"""What Retries decided about a failed message, for the middleware that runs after it."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from middleware.policies.error_classification import Classification


@dataclass(frozen=True)
class FailureDecision:
    classification: Classification
    attempt: int  # the attempt that failed, 1 for the first
    max_attempts: int
    will_retry: bool
    delay_ms: int | None = None
    #: The dead letter's kind when it is not what the classification says (``time_limit``, ``no_progress``).
    kind: str | None = None

    @property
    def fatal(self) -> bool:
        return self.classification.fatal


#: The decision about the message this worker thread just processed; None when it succeeded
#: or was handed back after an interruption.
current_failure: ContextVar[FailureDecision | None] = ContextVar("current_failure", default=None)

#: True when this delivery stopped because another delivery of the same message holds its job now
#: (it lost its checkpoint's lease): it writes nothing more about the job, which runs elsewhere.
delivery_superseded: ContextVar[bool] = ContextVar("delivery_superseded", default=False)


@dataclass(frozen=True)
class DeliveryProgress:
    """What a checkpointed job's delivery saved: whether it moved its position on, and its last position."""

    advanced: bool
    position: Any


#: Published by Checkpoints when a checkpointed job's delivery ends (before Retries' after-hook
#: runs); None for an actor that is not checkpointed, or a delivery that never loaded its checkpoint.
delivery_progress: ContextVar[DeliveryProgress | None] = ContextVar("delivery_progress", default=None)
