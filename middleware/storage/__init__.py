"""Storage: the SQL side of the middleware.

The engine (``database``), every SQL table (``tables``), the group commit and the job-status
writer of the hot path, SQLite's cross-process write lock, database outages, the scheduler's
state, and the worker slots of ``python -m ops workers``.

Imports only ``middleware.policies`` (``tests/unit/test_import_layers.py``).
"""
