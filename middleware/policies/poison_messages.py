"""Poison messages: a message whose worker keeps dying is dead-lettered instead of run again.

Dramatiq redelivers a message whose worker died (SIGKILL, out of memory) forever. The message
itself is immutable, so deliveries are counted outside it, in ``job_status``: a delivery that
starts adds one, a delivery that finishes in any way (success, failure, retry, hand-back) resets
the count. A message that reaches ``max_deliveries`` unfinished deliveries is dead-lettered as
``poison`` on its next delivery.
"""

from __future__ import annotations

from dramatiq.middleware import SkipMessage

DEFAULT_MAX_DELIVERIES = 5

#: A message option: how many times the broker handed the message back from a dead worker. Set by
#: the Redis stack's heartbeat keeper; a delivery of such a message counts itself before it runs.
HANDED_BACK = "handed_back"


class PoisonMessage(SkipMessage):
    """The message's worker died ``max_deliveries`` times in a row; it is not run again."""


def is_poison(unfinished_deliveries_before: int, *, max_deliveries: int) -> bool:
    return unfinished_deliveries_before >= max_deliveries
