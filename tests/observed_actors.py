"""Actors for the observability tests (metrics, Sentry): ``dramatiq actors tests.observed_actors``.

Short backoffs (100-200 ms), so retries and their exhaustion take a fraction of a second.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dramatiq

import actors  # noqa: F401  (configures the broker before these actors are declared)
from middleware.checkpoints import current_checkpoint
from middleware.errors import FatalError

QUEUE = "observed"
#: A worker started with only this queue runs the jobs a test kills it in the middle of.
DOOMED_QUEUE = "observed-doomed"
#: A queue no test worker serves: its messages wait.
BACKLOG_QUEUE = "observed-backlog"

RETRIES = {"max_retries": 2, "min_backoff": 100, "max_backoff": 200}


def _attempts_so_far(marker_path: str) -> int:
    path = Path(marker_path)
    attempts = len(path.read_text().splitlines()) if path.exists() else 0
    with path.open("a") as marker:
        marker.write(f"attempt {attempts + 1}\n")
    return attempts


@dramatiq.actor(queue_name=QUEUE, **RETRIES)
def flaky(marker_path: str, failures: int) -> None:
    """Fails its first ``failures`` attempts (a connection error: retryable), then succeeds."""
    attempt = _attempts_so_far(marker_path) + 1
    if attempt <= failures:
        raise ConnectionError(f"the ledger refused attempt {attempt}")


@dramatiq.actor(queue_name=QUEUE, **RETRIES)
def always_fails(marker_path: str, account: dict, password: str) -> None:
    """A retryable error every time; its message repeats sensitive arguments, as real errors do."""
    attempt = _attempts_so_far(marker_path) + 1
    raise ConnectionError(f"the ledger refused {account['email']} (password {password}) on attempt {attempt}")


@dramatiq.actor(queue_name=QUEUE, **RETRIES)
def fails_fatally(marker_path: str, url: str) -> None:
    _attempts_so_far(marker_path)
    raise FatalError(f"{url} answered HTTP 404")


@dramatiq.actor(queue_name=QUEUE, **RETRIES)
def succeeds(marker_path: str) -> None:
    _attempts_so_far(marker_path)


@dramatiq.actor(queue_name=QUEUE, checkpointed=True, notify_shutdown=True, **RETRIES)
def stepped(marker_path: str, steps: int, step_s: float) -> None:
    """``steps`` steps of ``step_s``, a checkpoint after each; records every start with its first step."""
    checkpoint = current_checkpoint()
    first = 0 if checkpoint.position is None else checkpoint.position + 1
    with Path(marker_path).open("a") as marker:
        marker.write(f"start {first}\n")
    for step in range(first, steps):
        time.sleep(step_s)  # the step's own work, in short sleeps a time limit can interrupt
        with checkpoint.saving(step, progress=(step + 1) / steps):
            pass


@dramatiq.actor(queue_name=DOOMED_QUEUE, time_limit=600_000, **RETRIES)
def slow(marker_path: str, seconds: float) -> None:
    """Records its start (with the worker's pid), then runs ``seconds``."""
    with Path(marker_path).open("a") as marker:
        marker.write(f"start {os.getpid()}\n")
    finish = time.monotonic() + seconds
    while time.monotonic() < finish:
        time.sleep(0.1)  # the job's own work


@dramatiq.actor(queue_name=BACKLOG_QUEUE)
def waits(marker_path: str) -> None:
    Path(marker_path).write_text("ran")
