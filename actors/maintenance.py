"""Maintenance actors: the work the scheduler's built-in entries enqueue (``scheduler/schedule.py``).

They run on workers like any job, on their own ``maintenance`` queue so they never wait behind a
three-hour transcription: retries, job status, job logs and dead letters come with that. Each one
is idempotent and cheap when there is nothing to do, so a tick enqueued twice, or run late, is
harmless, and a failed tick is made up for by the next one (hence few retries).

| actor | what |
| --- | --- |
| reconcile_dead_letters | records messages sitting in the brokers' dead-letter queues in ``dead_letters`` |
| purge_dead_letters | deletes resolved dead letters older than DEAD_LETTER_RETENTION_DAYS |
| purge_job_status | deletes finished jobs' status older than JOB_STATUS_RETENTION_DAYS, and expired idempotency keys |
| sweep_stalled_jobs | hands back jobs processing for STALLED_JOB_AFTER_MS whose message no queue holds |

(The gauges and alert checks are the scheduler's own tasks, ``scheduler/tasks.py``: they must run
when no worker does.)
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import dramatiq

from actors.system import current_system
from middleware import idempotency, job_status
from middleware.operations import dead_letter_store, stalled_jobs
from middleware.policies.retry_policies import RetryPolicy

logger = logging.getLogger(__name__)

QUEUE = "maintenance"
#: Long enough for a reconcile of a large dead-letter backlog; a stuck run must not hold a worker for ever.
TIME_LIMIT_MS = 5 * 60_000
#: A failed run is retried twice, quickly; after that the next tick tries again.
MAINTENANCE = RetryPolicy(attempts=3, backoff="exponential", base_delay_ms=2_000, max_delay_ms=30_000)


def _maintenance_actor(fn):
    return dramatiq.actor(queue_name=QUEUE, retry_policy=MAINTENANCE, time_limit=TIME_LIMIT_MS)(fn)


@_maintenance_actor
def reconcile_dead_letters() -> int:
    system = current_system()
    recorded = dead_letter_store.reconcile(system.database, system.broker)
    logger.info("Reconcile recorded %d dead letter(s) from the brokers' dead-letter queues.", recorded)
    return recorded


@_maintenance_actor
def purge_dead_letters() -> int:
    system = current_system()
    days = system.settings.dead_letter_retention_days
    deleted = dead_letter_store.purge(system.database, older_than=timedelta(days=days), resolved_only=True)
    logger.info("Purged %d resolved dead letter(s) older than %d days.", deleted, days)
    return deleted


@_maintenance_actor
def purge_job_status() -> dict[str, int]:
    system = current_system()
    days = system.settings.job_status_retention_days
    jobs = job_status.purge_finished_jobs(system.database, older_than=timedelta(days=days))
    keys = idempotency.purge_expired_keys(system.database)
    logger.info(
        "Purged the status of %d job(s) finished over %d days ago, and %d expired idempotency key(s).", jobs, days, keys
    )
    return {"job_status": jobs, "idempotency_keys": keys}


@_maintenance_actor
def sweep_stalled_jobs() -> dict[str, Any]:
    system = current_system()
    stalled_after = timedelta(milliseconds=system.settings.stalled_job_after_ms)
    return stalled_jobs.sweep_stalled_jobs(system.broker, system.database, stalled_after=stalled_after).to_dict()
