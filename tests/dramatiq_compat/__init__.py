"""Dramatiq's own test suite run against our middleware stack: a compatibility check.

``python -m tests.dramatiq_compat`` (``make compat``) downloads the source distribution of the
installed Dramatiq version, extracts its ``tests/`` into ``var/dramatiq-compat/``, and runs them
with the fixtures of this folder, whose brokers are built by ``actors.broker`` (our stack, over a
freshly migrated SQLite database per test) instead of Dramatiq's defaults.

- ``__main__.py``: the runner (download, extract, install our files, run pytest).
- ``plugin.py``: the fixtures Dramatiq's tests expect, installed there as their ``conftest.py``.
- ``common.py``: the helpers Dramatiq's test modules import from ``tests/common.py``.
- ``differences.txt``: the tests our stack fails by design, each with its reason. They run as
  ``xfail(strict=True)``: a new failure fails the run until it is fixed or listed with its
  reason, and a listed test that starts passing fails it too, so the list stays true.

None of these files is named ``conftest.py`` or ``test_*.py``: the main suite never collects them.
"""
