"""One SQLAlchemy engine per process, for SQLite (the embedded default) and PostgreSQL.

Engines are created lazily and again after a fork: the ``dramatiq`` CLI imports the broker
module in each worker process, and a connection pool must never cross a fork.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    Connection,
    Engine,
    MetaData,
    Table,
    create_engine,
    delete,
    event,
    literal_column,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

#: One schema for the whole system; each table is defined by the package whose code writes it.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

SQLITE_BUSY_TIMEOUT_MS = 30_000

logger = logging.getLogger("middleware.storage.database")


class Database:
    """Holds a database URL and hands out this process's engine."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is None or self._pid != os.getpid():
                    self._engine = create_database_engine(self.url)
                    self._pid = os.getpid()
        return self._engine

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection inside a transaction, committed on success, rolled back on any exception."""
        with self.engine.begin() as connection:
            yield connection

    def dispose(self) -> None:
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
        self._engine = None


def create_database_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return _create_sqlite_engine(url)
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def _create_sqlite_engine(url: str) -> Engine:
    # Pooled (opening a connection and setting its pragmas cost more than a status write); a
    # connection is used by one thread at a time, so the driver's same-thread check is lifted.
    engine = create_engine(url, pool_size=10, max_overflow=20, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, open transactions (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the single writer; busy_timeout makes writers queue
        # instead of failing with "database is locked".
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock up front, so two writers wait on busy_timeout
        # rather than one failing when it upgrades a read lock.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    @event.listens_for(engine, "invalidate")
    def _on_invalidate(dbapi_connection: Any, _record: Any, exception: BaseException | None) -> None:
        # An interrupt landing in a statement (TimeLimitExceeded, Shutdown: BaseExceptions raised
        # into the thread) makes SQLAlchemy close the connection without a rollback. SQLite then
        # keeps the closed connection, and its write lock, until the cursor is freed, and the
        # interrupt's traceback holds that cursor: every writer of every process waited on it.
        try:
            dbapi_connection.rollback()
        except sqlite3.Error as error:  # it is being closed anyway; the rollback only frees the lock sooner
            logger.warning("Rolling back an invalidated SQLite connection failed: %s", error)

    return engine


def upsert(
    connection: Connection, table: Table, values: dict[str, Any], *, key: list[str], update: dict[str, Any]
) -> None:
    """INSERT ... ON CONFLICT (key) DO UPDATE, for both SQLite and PostgreSQL."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values)
    connection.execute(statement.on_conflict_do_update(index_elements=key, set_=update))


#: Rows a purge deletes per transaction.
PURGE_BATCH = 5_000


def delete_in_batches(
    database: Database, table: Table, *conditions: ColumnElement[bool], batch_size: int = PURGE_BATCH
) -> int:
    """Delete the rows of ``table`` that match ``conditions``; returns how many were deleted.

    On SQLite, ``batch_size`` rows per transaction. A retention purge can match millions of rows,
    and one statement would hold SQLite's write lock, and so every status write of every worker,
    for as long as it runs: 500,000 status rows kept a concurrent writer waiting 1.9 s; in batches
    at most 83-106 ms, for a purge of 7.7-8.2 s instead of 2.1 s (each batch rewrites pages of the
    random message-id index that the next one touches again). Each batch finds its rows through an
    index on the conditions' columns or, with none, at the front of the table, where the oldest
    rows are. PostgreSQL deletes without holding other writers up (500,000 rows in 0.1 s, a
    concurrent writer waiting 5 ms), so there it is one statement.
    """
    if database.engine.dialect.name != "sqlite":
        with database.transaction() as connection:
            return connection.execute(delete(table).where(*conditions)).rowcount
    rowid: ColumnClause[int] = literal_column("rowid")  # SQLite's own row key: the quickest way back to a row
    deleted = 0
    while True:
        with database.transaction() as connection:
            batch = select(rowid).select_from(table).where(*conditions).limit(batch_size)
            count = connection.execute(delete(table).where(rowid.in_(batch))).rowcount
        deleted += count
        if count < batch_size:
            return deleted


@overload
def as_utc(moment: datetime) -> datetime: ...
@overload
def as_utc(moment: None) -> None: ...
def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every datetime this project writes is UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment
