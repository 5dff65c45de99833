"""Schedules and actors for the scheduler and maintenance tests.

``SCHEDULE_MODULE=tests.schedules`` runs :data:`SCHEDULE` (ticks every second); ``tests.schedules:BAD_CRON``
must not start. Workers: ``dramatiq actors tests.schedules``.
"""

from __future__ import annotations

import time
from pathlib import Path

import dramatiq

import actors  # noqa: F401  (configures the broker before these actors are declared)
from middleware.checkpoints import current_checkpoint
from scheduler.entries import Entry

TICKS_QUEUE = "scheduled-ticks"
STALLED_QUEUE = "stalled"


@dramatiq.actor(queue_name=TICKS_QUEUE)
def count_tick(kind: str) -> None:
    """Nothing to do: the tests count the messages the scheduler enqueued."""


@dramatiq.actor(queue_name=STALLED_QUEUE, checkpointed=True, notify_shutdown=True, time_limit=120_000)
def resumable_steps(release_path: str, steps: int) -> None:
    """Saves step 0, then waits for ``release_path`` before each further step."""
    checkpoint = current_checkpoint()
    start = 0 if checkpoint.position is None else checkpoint.position + 1
    for step in range(start, steps):
        if step > 0:
            _wait_for(Path(release_path))
        with checkpoint.saving(step, progress=(step + 1) / steps):
            pass


@dramatiq.actor(queue_name=STALLED_QUEUE, time_limit=120_000)
def wait_for_release(release_path: str) -> None:
    _wait_for(Path(release_path))


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.05)  # the test releases the job by creating the file


SCHEDULE = [
    Entry("tick", every="1s", actor="count_tick", args=("tick",)),
    Entry("gauges", every="1s", task="refresh_gauges"),
]
BAD_CRON = [
    Entry("tick", every="1s", actor="count_tick", args=("tick",)),
    Entry("nightly-report", cron="0 25 * * *", actor="count_tick", args=("report",)),
]
