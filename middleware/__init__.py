"""Dramatiq middleware for long, expensive jobs: one Middleware a module at this level, named for
its concern as Dramatiq names its own (``retries``, ``checkpoints``, ``job_status``).

``errors`` holds every error an actor author raises or catches; it is the lowest layer. Everything
else lives in a sub-package named for what it holds, lowest layer first:

- ``policies``: pure decisions (fatal or retryable, retry policies, poison, redaction);
- ``storage``: the database, every SQL table, the group commit and the status writer;
- ``brokers``: Dramatiq's Redis key layout, reliable enqueue, hook dispatch;
- ``serving``: the liveness probe and the metrics endpoint;
- ``resumable``: ``CheckpointedActor``, a long job as ``build_items`` and ``each_item``;
- ``operations``: queue statistics, the stalled-job sweep, the dead-letter store, bulk sends;
- ``monitoring``: system gauges and alert checks.

Each imports only the layers below it; this package imports nothing from ``actors``,
``scheduler`` or ``ops``, which build on it (``tests/unit/test_import_layers.py``).
"""

from __future__ import annotations

import importlib
from typing import Any

#: The public API, one import away: ``from middleware import current_checkpoint, FatalError, ...``.
#: Each name is imported from its module on first use (PEP 562), so importing ``middleware.x``
#: imports nothing else: ``prometheus_client`` must not be imported before ``actors`` has set up
#: the metrics directory.
_EXPORTS = {
    "CheckpointedActor": "middleware.resumable.checkpointed_actor",
    "current_checkpoint": "middleware.checkpoints",
    "Checkpoint": "middleware.checkpoints",
    "RoutedActor": "middleware.routing",
    "report_progress": "middleware.job_status",
    "get_job": "middleware.job_status",
    "send_many": "middleware.operations.bulk_enqueue",
    "RetryPolicy": "middleware.policies.retry_policies",
    "FatalError": "middleware.errors",
    "DuplicateJob": "middleware.errors",
    "HandBack": "middleware.errors",
    "CheckpointSuperseded": "middleware.errors",
    "CheckpointBusy": "middleware.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'middleware' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
