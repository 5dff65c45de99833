"""What apps, operators and periodic tasks do with the jobs the middleware keep: queue statistics,
the stalled-job sweep, the dead-letter store (list, resolve, requeue, delete, purge, reconcile)
and bulk sends. ``ops`` and ``actors.maintenance`` are built on it.

Imports the middleware (the package's top level) and the layers below them, never
``middleware.monitoring`` (``tests/unit/test_import_layers.py``).
"""
