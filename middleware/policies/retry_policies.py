"""Retry policies per actor: how many attempts, and how long to wait between them.

``@dramatiq.actor(retry_policy=RetryPolicy(attempts=3, backoff="fixed", base_delay_ms=5_000))``.
``attempts`` counts every run, the first included; interruptions never count (see
``middleware.retries``). Delays are in milliseconds; ``jitter`` spreads each delay by up to that
fraction either way, so a burst of failures does not retry in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    attempts: int
    base_delay_ms: int
    backoff: Literal["exponential", "fixed"] = "exponential"
    max_delay_ms: int = 3_600_000
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1 (the first run), got {self.attempts}")
        if self.backoff not in ("exponential", "fixed"):
            raise ValueError(f"backoff must be 'exponential' or 'fixed', got {self.backoff!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be a fraction from 0 up to 1, got {self.jitter}")
        if self.base_delay_ms < 0 or self.max_delay_ms < self.base_delay_ms:
            raise ValueError("base_delay_ms must be >= 0 and max_delay_ms >= base_delay_ms")

    def retries_after(self, failed_attempts: int) -> bool:
        """Whether a job that has failed ``failed_attempts`` times gets another run."""
        return failed_attempts < self.attempts

    def delay_ms(self, failed_attempts: int, *, uniform: Callable[[float, float], float] = random.uniform) -> int:
        """The wait before the next run, after ``failed_attempts`` failures (1 for the first)."""
        if self.backoff == "fixed":
            delay = self.base_delay_ms
        else:
            delay = min(self.base_delay_ms * 2 ** (failed_attempts - 1), self.max_delay_ms)
        spread = delay * self.jitter
        return max(0, round(min(delay + uniform(-spread, spread), self.max_delay_ms)))


#: The reference policies of the seed: orders, emails, payments.
ORDERS = RetryPolicy(attempts=3, backoff="exponential", base_delay_ms=2_000)
EMAILS = RetryPolicy(attempts=5, backoff="exponential", base_delay_ms=1_000)
PAYMENTS = RetryPolicy(attempts=3, backoff="fixed", base_delay_ms=5_000)
