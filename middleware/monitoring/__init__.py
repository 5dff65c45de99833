"""Monitoring: the system-wide gauges and the alert checks that the scheduler's tasks run.

The top layer of ``middleware``: it may import any other part of it (``tests/unit/test_import_layers.py``).
"""
