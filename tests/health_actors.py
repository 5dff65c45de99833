"""Actors for the worker-health tests: ``dramatiq actors tests.health_actors``."""

from __future__ import annotations

import time
from pathlib import Path

import dramatiq

import actors  # noqa: F401  (configures the broker before these actors are declared)
from actors.system import current_system
from middleware.errors import FatalError
from middleware.job_status import report_progress

QUEUE = "health"


@dramatiq.actor(queue_name=QUEUE)
def succeed() -> None:
    pass


@dramatiq.actor(queue_name=QUEUE)
def fail_fatally() -> None:
    raise FatalError("this job always fails")


@dramatiq.actor(queue_name=QUEUE, time_limit=120_000)
def half_done_until(release_path: str) -> None:
    """Reports progress 0.5, then holds its worker thread until ``release_path`` exists."""
    report_progress(current_system().database, 0.5)
    while not Path(release_path).exists():
        time.sleep(0.05)  # waiting for the test to release it
