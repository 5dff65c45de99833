"""Dramatiq's Redis key layout, named once for every module that reads the broker's own keys.

Dramatiq keeps each queue's message bodies in a hash, ``<namespace>:<queue>.msgs`` (the delay and
dead-letter queues are queues of their own: ``<queue>.DQ``, ``<queue>.XQ``), and each worker's
unacked message ids in a set per queue, ``<namespace>:__acks__.<worker id>.<queue>``.
"""

from __future__ import annotations

from typing import Any


def bodies_key(broker: Any, queue_name: str) -> str:
    """The hash of ``queue_name``'s message bodies, by Redis message id."""
    return f"{broker.namespace}:{queue_name}.msgs"


def unacked_key(broker: Any, worker_id: str, queue_name: str) -> str:
    """The set of the message ids a worker holds unacked on ``queue_name`` (``""``: the keys' common prefix)."""
    return f"{broker.namespace}:__acks__.{worker_id}.{queue_name}"
