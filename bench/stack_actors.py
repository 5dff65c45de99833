"""The full stack: the project's broker and middleware (``actors/broker.py``), and the benchmark's jobs.

    dramatiq bench.stack_actors --queues bench
    BENCH_WITHOUT=JobStatus,JobLogs dramatiq bench.stack_actors --queues bench   # ablation

Importing ``actors`` configures this process exactly as ``dramatiq actors`` does, from the same
settings; the benchmark's jobs are then declared on that broker, plus a checkpointed job that
times its own checkpoint writes.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import dramatiq
from sqlalchemy import insert

import actors
from actors.tables import transcript_segments
from bench.jobs import QUEUE, hold, noop, sleep_ms
from middleware.checkpoints import current_checkpoint

broker = actors.broker

# Ablation: BENCH_WITHOUT=JobStatus,JobLogs runs the stack without the named middleware (what each costs).
_without = {name for name in os.environ.get("BENCH_WITHOUT", "").split(",") if name}
broker.middleware[:] = [middleware for middleware in broker.middleware if type(middleware).__name__ not in _without]


@dramatiq.actor(queue_name=QUEUE, checkpointed=True, notify_shutdown=True, max_retries=0)
def checkpointed_segments(segments: int, report_path: str) -> None:
    """Saves ``segments`` checkpoints, each with one transcript row in its transaction (as transcription
    does), and writes how long each save took (milliseconds) to ``report_path`` as JSON."""
    checkpoint = current_checkpoint()
    meeting_id = f"bench-{uuid.uuid4().hex[:12]}"
    latencies_ms = []
    for index in range(segments):
        started = time.perf_counter()
        with checkpoint.saving(index, progress=(index + 1) / segments) as connection:
            connection.execute(
                insert(transcript_segments).values(
                    meeting_id=meeting_id,
                    idx=index,
                    start_ms=index * 1000,
                    end_ms=(index + 1) * 1000,
                    text="bench",
                )
            )
        latencies_ms.append((time.perf_counter() - started) * 1000)
    with open(report_path, "w") as report:
        json.dump(latencies_ms, report)


__all__ = ["broker", "checkpointed_segments", "hold", "noop", "sleep_ms"]
