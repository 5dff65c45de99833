"""Worker settings per kind of job: what ``python -m ops workers --profile`` starts.

``prefetch`` is how many messages each worker process takes from its queue ahead of its threads
(Dramatiq's ``dramatiq_queue_prefetch``). Dramatiq's default is two per thread.

- ``long`` (transcription): one thread per process, because the speech engine holds the GIL;
  a prefetch of 1, so that a busy worker never holds a second hour-long recording that an idle
  worker could start.
- ``short`` (webhooks and other jobs of milliseconds): 8 threads per process and a prefetch of
  64. Dramatiq's Redis consumer sleeps 5-10 ms whenever its prefetch buffer is full, which caps
  a process at about prefetch / 7.5 ms: 16 messages allow about 2,100 jobs/s per process, 64
  lift the cap above what two cores can run (see the benchmarks in ``bench/``). A worker that
  dies hands its prefetched messages back within the liveness window, as any other unacked ones.
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
SHORT_JOBS = WorkerProfile(workers=max(2, os.cpu_count() or 2), threads=8, prefetch=64)
PROFILES = {"long": LONG_JOBS, "short": SHORT_JOBS}
