"""How this process reports: its metrics directory and Sentry, set up before the broker is built.

``actors`` calls :func:`configure_observability` before it imports the broker's middleware:
``prometheus_client`` picks its storage (memory, or the multiprocess directory) when it is first
imported, and Sentry is set up before any broker exists.

Only the processes of a ``dramatiq`` command keep their metrics in a multiprocess directory, and
only when the deployment has an endpoint (``METRICS_PORT``) or is given a directory
(``METRICS_DIR``, which ``python -m ops workers`` gives its workers). Apps, ``python -m ops`` and
tests keep theirs in memory, in ``prometheus_client``'s default registry. Likewise only those
processes start Sentry (``SENTRY_DSN``).
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from actors.settings import Settings
from middleware.error_reporting import init_error_reporting
from middleware.serving.metrics_directory import instance_directory, is_dramatiq_process, use_metrics_directory

_metrics_directory: Path | None = None


def configure_observability(settings: Settings) -> None:
    global _metrics_directory
    directory = worker_metrics_directory(settings)
    _metrics_directory = use_metrics_directory(directory) if directory is not None else None
    # Only workers run jobs, so only they report; an app keeps whatever Sentry set-up it has.
    if settings.sentry_dsn is not None and is_dramatiq_process():
        init_error_reporting(
            settings.sentry_dsn,
            environment=settings.sentry_environment,
            release=_release(),
            sensitive_fields=settings.sensitive_fields,
        )


def worker_metrics_directory(settings: Settings) -> Path | None:
    """The multiprocess directory this process writes its metrics to, or None for memory."""
    if not is_dramatiq_process():
        return None
    if settings.metrics_dir is not None:
        return settings.metrics_dir
    if settings.metrics_port == 0:
        return None
    # The worker and fork processes of one master share the master's directory.
    return instance_directory(metrics_root(settings), os.getppid())


def metrics_root(settings: Settings) -> Path:
    return settings.state_dir / "metrics"


def serves_metrics(settings: Settings) -> bool:
    """True when this ``dramatiq`` master's deployment serves its own endpoint (from a fork)."""
    return settings.metrics_port > 0 and is_dramatiq_process()


def metrics_directory_in_use() -> Path | None:
    return _metrics_directory


def package_version() -> str | None:
    """This project's installed version; None in a checkout that was never installed."""
    try:
        return version("resilient-jobs")
    except PackageNotFoundError:
        return None


def _release() -> str | None:
    installed = package_version()
    return f"resilient-jobs@{installed}" if installed else None
