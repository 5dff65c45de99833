"""What ``dramatiq actors`` loads: the settings, then the broker and its middleware, then every actor.

Apps import from here too (``from actors.transcription import transcribe``): importing any
actor module configures the process the same way a worker is configured.
"""

import sys

from actors.observability import configure_observability
from actors.settings import Settings, SettingsError
from middleware.serving.metrics_directory import MetricsDirectoryError

try:
    _settings = Settings.from_env()
    # Before the broker's middleware is imported: prometheus_client picks where it keeps the
    # metrics when it is first imported, and Sentry is set up before any broker is built.
    configure_observability(_settings)
except (SettingsError, MetricsDirectoryError) as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None

from actors.boot import configure
from actors.embedded_redis import EmbeddedRedisError
from middleware.job_logs import configure_job_logs

try:
    system = configure(_settings)
except (SettingsError, EmbeddedRedisError) as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None

broker = system.broker
configure_job_logs()

# Actor modules are imported only now, after the broker is set: an actor declared earlier would
# silently get a default broker of Dramatiq's own.
from actors import exports, maintenance, notifications, transcription  # noqa: E402

__all__ = ["broker", "exports", "maintenance", "notifications", "system", "transcription"]
