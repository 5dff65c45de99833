"""Broker mechanics both brokers share: Dramatiq's Redis key layout, an enqueue that survives a
broker blip, and hook dispatch to only the middleware that implement a hook.

Imports only ``middleware.policies`` and ``middleware.storage`` (``tests/unit/test_import_layers.py``).
"""
