"""The scheduler: periodic actors, run by one leader among replicas (``python -m scheduler``).

scheduler/schedule.py  the entries: one line each (cron or interval, time zone, actor, arguments)
scheduler/entries.py   Entry, loading and validating a schedule
scheduler/leader.py    the leader lock: PostgreSQL advisory lock, or a file lock beside SQLite
scheduler/runner.py    APScheduler in the leader: each tick enqueues its actor's message once
scheduler/replica.py   stand by, lead, step down
"""
