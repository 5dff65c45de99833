"""Every SQL table of the middleware, declared in one place (the actors' own tables are in ``actors/tables.py``).

One migration history (``actors/migrations``) covers them all; each table notes the module that
writes it. Status and kind names that rows hold are named by those modules.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, DateTime, Float, Index, Integer, String, Table, Text, false

from middleware.storage.database import metadata

#: Written by ``middleware.job_status``.
job_status = Table(
    "job_status",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("actor_name", String(255), nullable=False),
    Column("queue_name", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("unfinished_deliveries", Integer, nullable=False, default=0),
    Column("progress", Float, nullable=True),
    Column("error", Text, nullable=True),
    Column("enqueued_at", DateTime(timezone=True), nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_job_status_status_updated_at", "status", "updated_at"),
    Index("ix_job_status_actor_name", "actor_name"),
)

#: Written by ``middleware.checkpoints``.
job_checkpoints = Table(
    "job_checkpoints",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("actor_name", String(255), nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("position", JSON, nullable=True),
    Column("progress", Float, nullable=True),
    Column("saves", Integer, nullable=False, default=0),
    Column("resumes", Integer, nullable=False, default=0),
    Column("resumed_from", JSON, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    #: The message that saved the checkpoint, to enqueue again if the broker loses it (stalled jobs).
    Column("message", JSON, nullable=True),
    #: The delivery that may save the checkpoint (a token per delivery); None once it is released.
    Column("lease_token", String(32), nullable=True),
)

#: Written by ``middleware.dead_letters``.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("queue_name", String(255), nullable=False),
    Column("actor_name", String(255), nullable=False),
    Column("message_id", String(64), nullable=False, unique=True),
    Column("message", JSON, nullable=False),
    Column("error_type", String(255), nullable=False),
    Column("error_message", Text, nullable=False),
    Column("traceback", Text, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("failed_at", DateTime(timezone=True), nullable=False),
    Column("resolved", Boolean, nullable=False, server_default=false()),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Column("resolved_by", String(255), nullable=True),
    Column("notes", Text, nullable=True),
    Column("requeued_as", String(64), nullable=True),
    Column("requeued_at", DateTime(timezone=True), nullable=True),
    Index("ix_dead_letters_queue_name_resolved", "queue_name", "resolved"),
    Index("ix_dead_letters_failed_at", "failed_at"),
)

#: Written by ``middleware.idempotency``.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("message_id", String(64), nullable=False),
    Column("actor_name", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    # Where a send on Redis puts the message: a later send can then tell a claim whose sender
    # stopped between claiming the key and sending (the message is nowhere) from a live job.
    Column("redis_queue", String(255), nullable=True),
    Column("redis_message_id", String(64), nullable=True),
)

#: Written by ``middleware.worker_health``.
worker_heartbeats = Table(
    "worker_heartbeats",
    metadata,
    Column("worker_id", String(128), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(64), nullable=False),
    #: The queues this process consumes (canonical names, without .DQ).
    Column("queues", JSON, nullable=False),
    #: Jobs finished since the process started (succeeded or failed), and the failed ones.
    Column("processed", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("in_progress", Integer, nullable=False),
    #: The same over the last ``failure_window_ms`` (counted by the second).
    Column("failure_window_ms", Integer, nullable=False),
    Column("window_processed", Integer, nullable=False),
    Column("window_failed", Integer, nullable=False),
    #: Failures since the last job that succeeded (or since the process started).
    Column("failed_since_success", Integer, nullable=False),
    #: [{"message_id", "actor_name", "queue_name", "started_at", "progress"}], oldest first.
    Column("current_jobs", JSON, nullable=False),
    #: {queue: {"running": n, "delayed": n}}: jobs running, and delayed messages held in memory.
    Column("queue_counts", JSON, nullable=False),
    #: True once the worker has been told to stop and is finishing its current jobs.
    Column("stopping", Boolean, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("last_job_finished_at", DateTime(timezone=True), nullable=True),
    Column("last_success_at", DateTime(timezone=True), nullable=True),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Index("ix_worker_heartbeats_heartbeat_at", "heartbeat_at"),
)

#: Written by ``middleware.storage.schedule_state``.
schedule_state = Table(
    "schedule_state",
    metadata,
    Column("entry", String(100), primary_key=True),
    Column("last_scheduled_for", DateTime(timezone=True), nullable=False),
    Column("last_fired_at", DateTime(timezone=True), nullable=False),
    Column("last_outcome", String(16), nullable=False),
    #: The message of the last tick (for a duplicate: the message that already held the tick).
    Column("last_message_id", String(64), nullable=True),
    #: The error of a failed tick, how late a missed one was, or what a task reported.
    Column("last_error", Text, nullable=True),
    #: host:pid of the scheduler that handled the last tick.
    Column("fired_by", String(255), nullable=False),
)

#: Written by ``ops.supervisor`` (``python -m ops workers``) through ``middleware.storage.worker_slots``:
#: one row per worker slot of each supervisor, rewritten on every change of the slot.
worker_slots = Table(
    "worker_slots",
    metadata,
    Column("host", String(255), primary_key=True),
    Column("supervisor_pid", Integer, primary_key=True),
    Column("slot", Integer, primary_key=True),
    #: The queues the supervisor's workers serve (empty: every declared queue).
    Column("queues", JSON, nullable=False),
    #: The slot's dramatiq master: the running one, or the last one once it has exited.
    Column("pid", Integer, nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("restarts", Integer, nullable=False),
    #: As subprocess reports it: negative for a signal.
    Column("last_exit_code", Integer, nullable=True),
    #: "exited with code 1 after 0.3 s", "killed by SIGKILL after 12.0 s".
    Column("last_exit_reason", Text, nullable=True),
    #: running, restarting, stopped (exit code 2: bad settings or schema), stopped: crash loop.
    Column("state", String(32), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
