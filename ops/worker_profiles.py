"""Worker settings per kind of job: what ``python -m ops workers --profile`` starts.

``prefetch`` is how many messages each worker process takes from its queue ahead of its threads
(Dramatiq's ``dramatiq_queue_prefetch``). Dramatiq's default is two per thread.

- ``long`` (transcription): one thread per process, because the speech engine holds the GIL;
  a prefetch of 1, so that a busy worker never holds a second hour-long recording that an idle
  worker could start.
- ``short`` (webhooks and other jobs of milliseconds): 8 threads per process and a prefetch of
  256. A message holds its place in the prefetch from its fetch to its ack, and the consumer
  fetches no more while all places are taken (Dramatiq's Redis consumer then sleeps 5-10 ms).
  Dramatiq's 16 capped a process near 2,100 jobs/s. With the stack, an ack also waits for the
  job's status commit (the acks of one commit go together), so a message holds its place
  longer: with 64 the stack drained 0.7 x bare Dramatiq, with 256 as fast as bare Dramatiq
  with any prefetch (bench/README.md, fix 15). A worker that dies hands its prefetched messages
  back within the liveness window, as any other unacked ones; one that stops for a deploy puts
  back those it has not started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class WorkerProfile:
    workers: int
    threads: int
    prefetch: int

    def environment(self) -> dict[str, str]:
        """What a worker command needs in its environment for this profile (Dramatiq reads it)."""
        return {"dramatiq_queue_prefetch": str(self.prefetch)}


LONG_JOBS = WorkerProfile(workers=2, threads=1, prefetch=1)
SHORT_JOBS = WorkerProfile(workers=max(2, os.cpu_count() or 2), threads=8, prefetch=256)
PROFILES = {"long": LONG_JOBS, "short": SHORT_JOBS}
