"""What Retries decided about a failed message, for the middleware that runs after it."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from middleware.policies.error_classification import Classification


@dataclass(frozen=True)
class FailureDecision:
    classification: Classification
    attempt: int  # the attempt that failed, 1 for the first
    max_attempts: int
    will_retry: bool
    delay_ms: int | None = None

    @property
    def fatal(self) -> bool:
        return self.classification.fatal


#: The decision about the message this worker thread just processed; None when it succeeded
#: or was handed back after an interruption.
current_failure: ContextVar[FailureDecision | None] = ContextVar("current_failure", default=None)

#: True when this delivery stopped because another delivery of the same message holds its job now
#: (it lost its checkpoint's lease): it writes nothing more about the job, which runs elsewhere.
delivery_superseded: ContextVar[bool] = ContextVar("delivery_superseded", default=False)
