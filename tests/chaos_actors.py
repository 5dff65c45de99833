"""Actors that exist only to misbehave in tests: ``dramatiq actors tests.chaos_actors``."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import dramatiq

import actors  # noqa: F401  (configures the broker before these actors are declared)

QUEUE = "chaos"


@dramatiq.actor(queue_name=QUEUE, max_retries=3)
def kill_own_worker(marker_path: str) -> None:
    """Dies as an out-of-memory kill would, every time: a poison message."""
    with Path(marker_path).open("a") as marker:
        marker.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


@dramatiq.actor(queue_name=QUEUE, max_retries=3)
def succeed(marker_path: str) -> None:
    Path(marker_path).write_text("done")
