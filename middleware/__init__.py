"""Dramatiq middleware for long, expensive jobs: one Middleware a module at this level, named for
its concern as Dramatiq names its own (``retries``, ``checkpoints``, ``job_status``).

Everything else lives in a sub-package named for what it holds, lowest layer first:

- ``policies``: pure decisions (fatal or retryable, retry policies, poison, redaction);
- ``storage``: the database, every SQL table, the group commit and the status writer;
- ``brokers``: Dramatiq's Redis key layout, reliable enqueue, hook dispatch;
- ``serving``: the liveness probe and the metrics endpoint;
- ``operations``: queue statistics, the stalled-job sweep, the dead-letter store, bulk sends;
- ``monitoring``: system gauges and alert checks.

Each imports only the layers below it; this package imports nothing from ``actors``,
``scheduler`` or ``ops``, which build on it (``tests/unit/test_import_layers.py``).
"""
