"""The scheduler's memory: per schedule entry, the last tick it handled and what came of it.

The entries themselves are code (``scheduler/schedule.py``); this table only says how far each one
has got. A scheduler that becomes leader resumes each entry after its ``last_scheduled_for``, so
ticks missed while no leader ran are caught up under the misfire and coalescing settings.
``python -m ops schedule`` reads it, joined with ``job_status`` for the last message's outcome.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from middleware.storage.database import Database, as_utc
from middleware.storage.tables import job_status, schedule_state

#: What happened to a tick: its message was enqueued; another fire had already enqueued it (its
#: idempotency key was taken); its task ran in the scheduler; it was too late (past the misfire
#: grace time); enqueueing or the task failed.
ENQUEUED, DUPLICATE, RAN, MISSED, ERROR = "enqueued", "duplicate", "ran", "missed", "error"
OUTCOMES = (ENQUEUED, DUPLICATE, RAN, MISSED, ERROR)


def record_tick(
    database: Database,
    entry: str,
    *,
    scheduled_for: datetime,
    outcome: str,
    message_id: str | None,
    error: str | None,
    fired_by: str,
) -> None:
    """Remember the tick, unless a later tick of the entry is already recorded (two leaders, briefly)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    values = {
        "entry": entry,
        "last_scheduled_for": scheduled_for,
        "last_fired_at": datetime.now(UTC),
        "last_outcome": outcome,
        "last_message_id": message_id,
        "last_error": error,
        "fired_by": fired_by,
    }
    with database.transaction() as connection:
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(schedule_state).values(**values)
        connection.execute(
            insert.on_conflict_do_update(
                index_elements=["entry"],
                set_={name: insert.excluded[name] for name in values if name != "entry"},
                where=schedule_state.c.last_scheduled_for <= insert.excluded.last_scheduled_for,
            )
        )


def last_scheduled(database: Database) -> dict[str, datetime]:
    """Each entry's last handled tick, in UTC."""
    query = select(schedule_state.c.entry, schedule_state.c.last_scheduled_for)
    with database.engine.connect() as connection:
        return {row.entry: as_utc(row.last_scheduled_for) for row in connection.execute(query)}


def entry_states(database: Database) -> dict[str, dict[str, Any]]:
    """Each entry's row, with the status, error and finish time of its last message (from job_status)."""
    return _states(database)


def entry_state(database: Database, entry: str) -> dict[str, Any] | None:
    return _states(database, entry=entry).get(entry)


def _states(database: Database, *, entry: str | None = None) -> dict[str, dict[str, Any]]:
    query = select(
        schedule_state,
        job_status.c.status.label("last_job_status"),
        job_status.c.error.label("last_job_error"),
        job_status.c.finished_at.label("last_job_finished_at"),
    ).select_from(schedule_state.outerjoin(job_status, job_status.c.message_id == schedule_state.c.last_message_id))
    if entry is not None:
        query = query.where(schedule_state.c.entry == entry)
    with database.engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(query)]
    for row in rows:
        for name in ("last_scheduled_for", "last_fired_at", "last_job_finished_at"):
            row[name] = as_utc(row[name])
    return {row["entry"]: row for row in rows}
