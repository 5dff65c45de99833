"""Our ``tests/common.py`` for Dramatiq's suite: the helpers its test modules import.

Installed next to Dramatiq's test modules, so it is imported by them before their module-level
code runs, in the pytest process and in the ``dramatiq`` CLI processes ``test_cli.py`` starts.
So this is also where their Redis clients are pointed at our database: ``RedisBroker()`` at the
top of ``test_cli.py`` and ``test_watch.py`` means Redis database 0, which other systems on this
machine use, so here a client built without a database or a pool gets :data:`REDIS_DB`.

RabbitMQ and Redis are required services (``make services`` starts them), as in our own suite:
a test fails rather than skips without them.
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika.credentials
import pytest
import redis
from dramatiq import Worker

#: Our Redis database on the shared server (never 0, 13 or 14): emptied before and after each test.
REDIS_DB = 12
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"

RABBITMQ_USERNAME = "guest"
RABBITMQ_PASSWORD = "guest"
RABBITMQ_CREDENTIALS = pika.credentials.PlainCredentials(RABBITMQ_USERNAME, RABBITMQ_PASSWORD)


@contextmanager
def worker(*args: Any, **kwargs: Any) -> Iterator[Worker]:
    """A started worker, stopped on the way out (as Dramatiq's helper)."""
    started = Worker(*args, **kwargs)
    started.start()
    try:
        yield started
    finally:
        started.stop()


skip_in_ci = pytest.mark.skipif(
    os.getenv("APPVEYOR") is not None or os.getenv("GITHUB_ACTION") is not None, reason="test skipped in CI"
)
skip_on_windows = pytest.mark.skipif(platform.system() == "Windows", reason="test skipped on Windows")
skip_on_pypy = pytest.mark.skipif(
    platform.python_implementation() == "PyPy", reason="Time limits are not supported under PyPy."
)
#: Dramatiq skips these when RabbitMQ is down; here RabbitMQ is required, so they never skip.
skip_unless_rabbit_mq = pytest.mark.skipif(False, reason="RabbitMQ is a required service here")


def _default_redis_database(db: int) -> None:
    """Make ``redis.Redis(...)`` given neither a database nor a connection pool use ``db``, not 0."""
    init = redis.Redis.__init__
    if getattr(init, "default_db", None) == db:
        return

    @functools.wraps(init)
    def __init__(self: redis.Redis, *args: Any, **kwargs: Any) -> None:
        if len(args) < 3 and "connection_pool" not in kwargs:  # db is the third parameter
            kwargs.setdefault("db", db)
        init(self, *args, **kwargs)

    __init__.default_db = db  # type: ignore[attr-defined]
    redis.Redis.__init__ = __init__  # type: ignore[method-assign]


_default_redis_database(REDIS_DB)
