"""Bare Dramatiq: the stock Redis broker with Dramatiq's default middleware, and the benchmark's jobs.

    dramatiq bench.bare_actors --queues bench

The broker URL and key prefix come from the project's settings (``BROKER_URL``,
``REDIS_NAMESPACE``), so the bare and the full stack run against the same Redis.
"""

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from actors.settings import Settings

_settings = Settings.from_env()
broker = RedisBroker(url=_settings.broker_url, namespace=_settings.redis_namespace)
dramatiq.set_broker(broker)

from bench.jobs import hold, noop, sleep_ms  # noqa: E402  (declared on the broker set above)

__all__ = ["broker", "hold", "noop", "sleep_ms"]
