"""The worker_slots table on SQLite and PostgreSQL: a slot's row rewritten in place, the rows of a
gone supervisor replaced in the same transaction, and a clean stop's rows deleted."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from middleware.storage.database import Database
from middleware.storage.worker_slots import (
    CRASH_LOOP,
    RESTARTING,
    RUNNING,
    forget_supervisor,
    list_worker_slots,
    record_slots,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


def slot(supervisor_pid: int, number: int, state: str = RUNNING, **changes: Any) -> dict[str, Any]:
    return {
        "host": "h1",
        "supervisor_pid": supervisor_pid,
        "slot": number,
        "queues": ["transcription"],
        "pid": 1000 + number,
        "started_at": NOW,
        "restarts": 0,
        "last_exit_code": None,
        "last_exit_reason": None,
        "state": state,
        "updated_at": NOW,
        **changes,
    }


def test_a_slot_is_one_row_rewritten_on_every_change(database: Database) -> None:
    record_slots(database, [slot(7, 0), slot(7, 1)])
    later = NOW + timedelta(seconds=3)
    crashed = {"restarts": 4, "last_exit_code": -9, "last_exit_reason": "killed by SIGKILL after 1.0 s"}
    record_slots(database, [slot(7, 1, RESTARTING, updated_at=later, **crashed)])
    first, second = list_worker_slots(database)
    assert first == slot(7, 0)
    assert second == slot(7, 1, RESTARTING, updated_at=later, **crashed)


def test_a_new_supervisor_replaces_a_gone_one_and_a_clean_stop_deletes_its_rows(database: Database) -> None:
    record_slots(database, [slot(7, 0, CRASH_LOOP), slot(7, 1, CRASH_LOOP)])
    record_slots(database, [slot(8, 0, host="h2")])
    record_slots(database, [slot(9, 0)], replacing=[("h1", 7)])
    assert [(row["host"], row["supervisor_pid"]) for row in list_worker_slots(database)] == [("h1", 9), ("h2", 8)]
    assert [row["supervisor_pid"] for row in list_worker_slots(database, host="h2")] == [8]
    forget_supervisor(database, host="h1", supervisor_pid=9)
    assert [row["supervisor_pid"] for row in list_worker_slots(database)] == [8]


def test_an_unknown_state_is_refused(database: Database) -> None:
    with pytest.raises(ValueError, match="state must be one of running, restarting, stopped, stopped: crash loop"):
        record_slots(database, [slot(7, 0, "crashed")])
