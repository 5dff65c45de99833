"""The schedule: every periodic job of the system, one line each. Edit this list.

    Entry(name, every="30s" | "5m" | "1h" | "1d", actor="...", args=(...), kwargs={...})
    Entry(name, cron="0 3 * * 1-5", tz="Europe/Paris", actor="...", args=(...))

``actor`` is the name of a Dramatiq actor; import its module here if it is not in ``actors``.
Every tick enqueues one message with the idempotency key ``schedule:<name>:<tick time>``.
``task=`` instead runs one of the scheduler's own tasks (``scheduler/tasks.py``) in the leader. The
whole list is checked when ``python -m scheduler`` starts: a bad expression, an unknown actor or
arguments that do not fit it stop the scheduler with exit code 2 and a message naming the entry.
Another list can be run instead with ``SCHEDULE_MODULE=package.module[:ATTRIBUTE]``.
"""

from scheduler.entries import Entry

#: Built in: the system's upkeep (actors/maintenance.py, on the maintenance queue), and the watch the
#: leader keeps itself (scheduler/tasks.py), which must go on when no worker runs.
MAINTENANCE = [
    Entry("dead-letter-reconcile", every="5m", actor="reconcile_dead_letters"),
    Entry("dead-letter-purge", cron="30 3 * * *", actor="purge_dead_letters"),
    Entry("job-status-purge", cron="45 3 * * *", actor="purge_job_status"),
    Entry("stalled-job-sweep", every="1m", actor="sweep_stalled_jobs"),
    Entry("gauges-refresh", every="15s", task="refresh_gauges"),
    Entry("alert-checks", every="1m", task="check_alerts"),
]

SCHEDULE = [
    *MAINTENANCE,
    # Your periodic work, for example:
    # Entry("nightly-report", cron="0 3 * * *", tz="Europe/Paris", actor="send_report", args=("daily",)),
]
