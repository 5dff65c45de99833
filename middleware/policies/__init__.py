"""Policies: pure decisions the middleware take, with no I/O of their own.

Fatal or retryable (``error_classification``), retry policies, the failure decision ``Retries``
publishes for the middleware after it, the poison-message rule, redaction of sensitive values.

Imports only ``middleware.errors``, the lowest layer (``tests/unit/test_import_layers.py``).
"""
