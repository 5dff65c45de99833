"""Actors that exist only to misbehave in tests: ``dramatiq actors tests.chaos_actors``."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import dramatiq
from sqlalchemy import insert

import actors  # noqa: F401  (configures the broker before these actors are declared)
from actors.tables import transcript_segments
from middleware.checkpoints import current_checkpoint
from middleware.routing import RoutedActor

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


@dramatiq.actor(queue_name=QUEUE, max_retries=3, time_limit=600_000)
def hold_gil(marker_path: str) -> None:
    """One ~10 s C call that never releases the GIL: no thread of this process can run meanwhile."""
    with Path(marker_path).open("a") as marker:
        marker.write(f"start {os.getpid()}\n")
    3**25_000_000  # noqa: B018  (the point is the time it takes)
    with Path(marker_path).open("a") as marker:
        marker.write("done\n")


@dramatiq.actor(queue_name=QUEUE, max_retries=3, time_limit=600_000, notify_shutdown=True)
def long_job(marker_path: str, seconds: float) -> None:
    """A job that runs ``seconds`` (in short steps), recording each start."""
    with Path(marker_path).open("a") as marker:
        marker.write(f"start {os.getpid()} {time.time()}\n")
    finish = time.monotonic() + seconds
    while time.monotonic() < finish:
        time.sleep(0.1)  # the job's own work, standing in for a long computation
    with Path(marker_path).open("a") as marker:
        marker.write("done\n")


@dramatiq.actor(queue_name=QUEUE, max_retries=3, time_limit=600_000, checkpointed=True, notify_shutdown=True)
def checkpointed_steps(marker_path: str, steps: int, step_s: float) -> None:
    """``steps`` steps of ``step_s`` each, a checkpoint after each; records every start and step."""
    checkpoint = current_checkpoint()
    first = 0 if checkpoint.position is None else checkpoint.position + 1
    with Path(marker_path).open("a") as marker:
        marker.write(f"start {os.getpid()} {first}\n")
    for step in range(first, steps):
        time.sleep(step_s)  # the step's own work
        with checkpoint.saving(step, progress=(step + 1) / steps), Path(marker_path).open("a") as marker:
            marker.write(f"step {step}\n")
    with Path(marker_path).open("a") as marker:
        marker.write("done\n")


@dramatiq.actor(queue_name=QUEUE, max_retries=3, time_limit=600_000, checkpointed=True, notify_shutdown=True)
def checkpointed_rows(job: str, steps: int, step_s: float) -> None:
    """``steps`` steps of ``step_s`` each; each step's row (``transcript_segments``, one per index:
    a second write of an index fails) commits with its checkpoint and names the writing process."""
    checkpoint = current_checkpoint()
    first = 0 if checkpoint.position is None else checkpoint.position + 1
    for step in range(first, steps):
        time.sleep(step_s)  # the step's own work
        with checkpoint.saving(step, progress=(step + 1) / steps) as connection:
            connection.execute(
                insert(transcript_segments).values(
                    meeting_id=job,
                    idx=step,
                    start_ms=step,
                    end_ms=step + 1,
                    text=str(os.getpid()),
                )
            )


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=1_000, checkpointed=True, notify_shutdown=True)
def stuck_in_c_once(marker_path: str) -> None:
    """Saves a checkpoint, then (on its first delivery only) sits in one ~27 s C call that holds the
    GIL, far past its 1 s time limit, which cannot interrupt it; a resumed delivery just finishes."""
    checkpoint = current_checkpoint()
    with Path(marker_path).open("a") as marker:
        marker.write(f"start {os.getpid()} {checkpoint.position}\n")
    if checkpoint.position is None:
        with checkpoint.saving(0):
            pass
        3**50_000_000  # noqa: B018  (the point is the time it takes)
    with Path(marker_path).open("a") as marker:
        marker.write("done\n")


#: What growing_rows keeps: memory a leaking library would hold on to.
_hoard: list[bytearray] = []


@dramatiq.actor(queue_name=QUEUE, max_retries=3, time_limit=600_000, checkpointed=True, notify_shutdown=True)
def growing_rows(job: str, steps: int, step_s: float, grow_mb: int) -> None:
    """``checkpointed_rows``, growing the process by ``grow_mb`` for good at each step (a leak)."""
    checkpoint = current_checkpoint()
    first = 0 if checkpoint.position is None else checkpoint.position + 1
    for step in range(first, steps):
        _hoard.append(bytearray(grow_mb * 1_048_576))  # zero-filled pages count once written
        _hoard[-1][::4096] = b"\1" * len(range(0, len(_hoard[-1]), 4096))
        time.sleep(step_s)  # the step's own work
        with checkpoint.saving(step, progress=(step + 1) / steps) as connection:
            connection.execute(
                insert(transcript_segments).values(
                    meeting_id=job, idx=step, start_ms=step, end_ms=step + 1, text=str(os.getpid())
                )
            )


@dramatiq.actor(
    actor_class=RoutedActor, queue_name=QUEUE, checkpointed=True, notify_shutdown=True, max_retries=0
)  # fmt: skip
def routed_step(marker_path: str, step_s: float) -> None:
    """A routed job (regular queue ``chaos``, large ``chaos-large``) of one step of ``step_s``, which
    it saves when done; records each start with its queue."""
    checkpoint = current_checkpoint()
    queue_name = dramatiq.middleware.CurrentMessage.get_current_message().queue_name
    with Path(marker_path).open("a") as marker:
        marker.write(f"start {queue_name} {checkpoint.position}\n")
    finish = time.monotonic() + step_s
    while time.monotonic() < finish:
        time.sleep(0.05)  # the step's own work, interruptible by the time limit
    with checkpoint.saving(0):
        pass
