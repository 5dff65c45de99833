"""Worker recycling: a process over its memory cap, or past its number of jobs, is replaced.

Long-lived Python processes grow (fragmented heaps, caches, C libraries that leak). As PM2's
``max_memory_restart`` and Celery's ``max_tasks_per_child`` do, a worker process is replaced:

- ``max_rss_mb``: checked after every job and, for jobs that run for hours, every
  ``check_interval_s`` from a thread;
- ``max_jobs``: after its ``max_jobs``-th job (completed, failed, or handed back).

Replacing is a graceful stop (``middleware.serving.process_replacement``): the process takes no
new message, a checkpointed job hands its message back at once and resumes elsewhere from its
checkpoint, any other job finishes, and messages prefetched but not started go back to the
broker. Nothing is lost, nothing runs twice. Then the process is started again: by
``python -m ops workers``, or by the ``dramatiq`` master itself. Only processes started by the
``dramatiq`` command recycle; an in-process worker (tests, scripts) has no master to replace it.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from middleware.boot_checks import stop_worker_boot
from middleware.serving.process_replacement import ask_master_to_replace_its_processes, dramatiq_master_pid

logger = logging.getLogger("middleware.worker_recycling.WorkerRecycling")

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def resident_memory_mb(pid: int | str = "self") -> float:
    """The process's resident set size, in MB (from ``/proc``)."""
    with open(f"/proc/{pid}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_SIZE / 1_048_576


class WorkerRecycling(Middleware):
    """Parameters:
    max_rss_mb: replace the process once its resident memory is over this; 0: no cap.
    max_jobs: replace the process after this many jobs; 0: never.
    check_interval_s: how often the memory is also checked while jobs run.
    requests_dir: where ``python -m ops workers`` takes replacement requests (None: not supervised).
    """

    def __init__(
        self, *, max_rss_mb: int = 0, max_jobs: int = 0, check_interval_s: float = 1.0, requests_dir: Path | None = None
    ) -> None:
        self.max_rss_mb = max_rss_mb
        self.requests_dir = requests_dir
        self.max_jobs = max_jobs
        self.check_interval_s = check_interval_s
        self.jobs = 0
        self._master_pid: int | None = None
        self._worker: dramatiq.Worker | None = None
        self._recycling = threading.Event()
        self._lock = threading.Lock()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if not (self.max_rss_mb or self.max_jobs):
            return
        if self.max_rss_mb and (size_mb := resident_memory_mb()) > self.max_rss_mb:
            stop_worker_boot(
                f"WORKER_MAX_RSS_MB={self.max_rss_mb} is below this worker process's size at boot "
                f"({size_mb:.0f} MB), so it would be replaced after every job; raise it well above "
                f"{size_mb:.0f}, or set 0 for no cap."
            )
        self._master_pid = dramatiq_master_pid()
        self._worker = worker
        if self._master_pid is not None and self.max_rss_mb:
            threading.Thread(target=self._watch_memory, name="worker-recycling", daemon=True).start()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._job_done()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._job_done()

    def _job_done(self) -> None:
        if self._master_pid is None:
            return
        with self._lock:
            self.jobs += 1
            jobs = self.jobs
        if self.max_jobs and jobs >= self.max_jobs:
            self.recycle(f"it has run {jobs} jobs (WORKER_MAX_JOBS={self.max_jobs})")
        else:
            self._check_memory()

    def _watch_memory(self) -> None:
        while not self._recycling.wait(self.check_interval_s):
            self._check_memory()

    def _check_memory(self) -> None:
        if self.max_rss_mb and (size_mb := resident_memory_mb()) > self.max_rss_mb:
            self.recycle(f"its resident memory is {size_mb:.0f} MB (WORKER_MAX_RSS_MB={self.max_rss_mb})")

    def recycle(self, reason: str) -> None:
        """Have this process replaced, once: it stops gracefully and its master starts it again."""
        with self._lock:
            if self._recycling.is_set() or self._master_pid is None:
                return
            self._recycling.set()
        logger.warning(
            "Worker process %d is recycled: %s. It takes no new message, hands back or finishes its jobs, "
            "and the dramatiq master (pid %d) starts it again.",
            os.getpid(),
            reason,
            self._master_pid,
        )
        # No new job from now on (not even one fetched already: it goes back to the broker on stop). The
        # worker threads pause between jobs; the consumers keep running, as they must to send the acks.
        for thread in self._worker.workers if self._worker is not None else ():
            thread.pause()
        ask_master_to_replace_its_processes(
            self._master_pid, reason=f"recycled: {reason}", requests_dir=self.requests_dir
        )
