"""An interrupt raised into a worker thread mid-statement must not leave SQLite's write lock held.

Dramatiq's TimeLimitExceeded and Shutdown are BaseExceptions raised asynchronously into the
worker thread. Python delivers them wherever Python code runs, including inside
``cursor.execute`` while the driver calls an adapter to bind a parameter (datetimes have one).
SQLAlchemy then closes the connection without a rollback, and SQLite keeps the closed
connection, its transaction and its write lock, for as long as the interrupt's traceback holds
the statement: a worker keeps the interrupt until the delivery ends. Here the interrupt is raised
at exactly that point, from an adapter.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from dramatiq.middleware import TimeLimitExceeded
from sqlalchemy import text

from middleware.storage.database import Database


class InterruptedWhileBound:
    """A parameter whose binding is where the interrupt lands."""


def _interrupt(_: InterruptedWhileBound) -> str:
    raise TimeLimitExceeded()


sqlite3.register_adapter(InterruptedWhileBound, _interrupt)


def write_lock_is_free(path: Path) -> bool:
    probe = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


def test_an_interrupt_inside_a_statement_releases_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "interrupted.sqlite3"
    database = Database(f"sqlite:///{path}")
    with database.transaction() as connection:
        connection.execute(text("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER)"))

    with pytest.raises(TimeLimitExceeded) as interrupted, database.transaction() as connection:
        connection.execute(text("INSERT INTO counters VALUES ('jobs', 1)"))
        connection.execute(text("INSERT INTO counters VALUES (:name, 2)"), {"name": InterruptedWhileBound()})

    # The interrupt, and with it the statement, is still alive: the lock must be free all the same.
    assert interrupted.value.__traceback__ is not None
    assert write_lock_is_free(path), "every other writer would wait out its busy timeout, then fail"
    with database.transaction() as connection:
        assert connection.scalar(text("SELECT count(*) FROM counters")) == 0, "the interrupted transaction rolled back"
    database.dispose()
