"""The benchmark's work, declared on whatever broker the importing module set: the same for every system.

Import this only after ``dramatiq.set_broker`` (``bench.bare_actors`` and ``bench.stack_actors`` do).
"""

from __future__ import annotations

import os
import time

import dramatiq

QUEUE = "bench"


@dramatiq.actor(queue_name=QUEUE)
def noop() -> None:
    """No work at all: what is left is the framework's own cost per job."""


@dramatiq.actor(queue_name=QUEUE)
def sleep_ms(duration_ms: int) -> None:
    """An I/O-bound job: waits without holding the GIL, as a network call would."""
    time.sleep(duration_ms / 1000)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def hold(duration_ms: int, marker_path: str) -> None:
    """Appends "pid start-time" to ``marker_path``, then waits: the job a crash-recovery run kills."""
    with open(marker_path, "a") as marker:
        marker.write(f"{os.getpid()} {time.time():.6f}\n")
    deadline = time.monotonic() + duration_ms / 1000
    while time.monotonic() < deadline:  # short sleeps, so Shutdown can land between them
        time.sleep(0.05)
