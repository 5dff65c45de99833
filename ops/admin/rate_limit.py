"""Requeues through the admin API are rate-limited per token, so one script cannot flood the workers.

Each requeued message costs one unit; a token may spend ``ADMIN_REQUEUE_PER_MINUTE`` units in
any 60 s (a moving window, from the ``limits`` library). A request that needs more than is left
gets 429 with ``Retry-After``, and nothing is requeued.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from ops.admin.errors import ApiError


class RequeueLimiter:
    def __init__(self, *, per_minute: int) -> None:
        self.per_minute = per_minute
        self._item = RateLimitItemPerMinute(per_minute)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def spend(self, token_fingerprint: str, count: int) -> None:
        """Take ``count`` units from the token's allowance, or raise a 429 :class:`ApiError`."""
        if count <= 0 or self._limiter.hit(self._item, token_fingerprint, cost=count):
            return
        window = self._limiter.get_window_stats(self._item, token_fingerprint)
        retry_after_s = max(1, math.ceil(window.reset_time - time.time()))
        raise ApiError(
            429,
            "rate_limited",
            f"requeues are limited to {self.per_minute} messages per minute per token; {window.remaining} are left "
            f"now and this request needs {count}: retry in {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
        )
