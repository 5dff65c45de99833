"""The worker slots of ``python -m ops workers``: one row per slot of each supervisor.

The supervisor (``ops/supervisor.py``) rewrites a slot's row on every change: started, exited and
to be restarted, stopped. ``python -m ops workers status``, ``python -m ops health`` and the ops
exporter read them. A supervisor that stops cleanly deletes its rows; one that gave up on its
slots (a crash loop, exit code 2) leaves them, so the stop stays visible until a supervisor for
the same queues starts again on that host and replaces them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Delete, and_, delete, select

from middleware.storage.database import Database, as_utc, upsert
from middleware.storage.tables import worker_slots

#: A slot's worker runs; it exited and is restarted after a pause; it exited with code 2 (bad
#: settings or schema: restarting cannot help) and its supervisor stopped; it crashed
#: WORKER_MAX_CRASHES times within WORKER_CRASH_WINDOW_MS and is not restarted again.
RUNNING, RESTARTING, STOPPED, CRASH_LOOP = "running", "restarting", "stopped", "stopped: crash loop"
STATES = (RUNNING, RESTARTING, STOPPED, CRASH_LOOP)

_KEY = ("host", "supervisor_pid", "slot")


def is_stopped(row: Mapping[str, Any]) -> bool:
    """True for a slot its supervisor will not restart."""
    return row["state"] in (STOPPED, CRASH_LOOP)


def record_slots(
    database: Database, rows: Sequence[Mapping[str, Any]], *, replacing: Iterable[tuple[str, int]] = ()
) -> None:
    """Write ``rows`` (each a whole row of ``worker_slots``), and delete every row of the supervisors
    ``replacing`` names ((host, supervisor_pid): gone, and replaced by the writer), in one transaction."""
    for row in rows:
        if row["state"] not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, not {row['state']!r}")
    with database.transaction() as connection:
        for host, supervisor_pid in replacing:
            connection.execute(_delete_supervisor(host, supervisor_pid))
        for row in rows:
            update = {name: value for name, value in row.items() if name not in _KEY}
            upsert(connection, worker_slots, dict(row), key=list(_KEY), update=update)


def forget_supervisor(database: Database, *, host: str, supervisor_pid: int) -> None:
    """Delete the rows of one supervisor (it stopped cleanly: nothing of it is left to report)."""
    with database.transaction() as connection:
        connection.execute(_delete_supervisor(host, supervisor_pid))


def list_worker_slots(database: Database, *, host: str | None = None) -> list[dict[str, Any]]:
    """Every slot row (of ``host`` only, if given) by host, supervisor and slot; datetimes in UTC."""
    query = select(worker_slots).order_by(*(worker_slots.c[name] for name in _KEY))
    if host is not None:
        query = query.where(worker_slots.c.host == host)
    with database.engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(query)]
    for row in rows:
        row["started_at"], row["updated_at"] = as_utc(row["started_at"]), as_utc(row["updated_at"])
    return rows


def _delete_supervisor(host: str, supervisor_pid: int) -> Delete:
    return delete(worker_slots).where(
        and_(worker_slots.c.host == host, worker_slots.c.supervisor_pid == supervisor_pid)
    )
