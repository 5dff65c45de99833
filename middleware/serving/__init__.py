"""HTTP served beside the workers: each process's liveness probe, the deployment's one metrics
endpoint and its multiprocess directory, and whether a process of this host is alive.

Imports only ``middleware.policies`` and ``middleware.storage`` (``tests/unit/test_import_layers.py``).
"""
