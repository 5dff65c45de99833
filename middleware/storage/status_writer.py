"""The job-status writes of every message, on a connection of their own: the hot path of the stack.

Each message costs three status writes (enqueue, start, finish), or two where the start had not
been committed yet when the job finished: the two are then one (``RUN``). Through SQLAlchemy's engine,
each transaction spent about 100 us of CPU in pool checkout and reset, events, statement cache
and result objects, against 15 us in the driver (profiled: ``bench/README.md``). Here:

1. Each process holds one DBAPI connection for status writes, taken from the engine (so its
   connect-time settings apply: SQLite's WAL and busy timeout) and detached from the pool.
   A group commit (``middleware.storage.group_commit``) serializes the transactions on it.
2. The statements are plain SQL, the same on SQLite and PostgreSQL but for the
   placeholder; ``test_job_status`` reads what they write through the SQLAlchemy table.
3. A transaction that fails rolls back; a connection that failed (the server went away) is
   closed and replaced on the next transaction. Driver errors are raised as SQLAlchemy's, as
   any other database error in the project.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from middleware.storage.database import Database
from middleware.storage.group_commit import Write
from middleware.storage.sqlite_write_lock import SqliteWriteLock

ENQUEUE, START, FINISH, RUN = "enqueue", "start", "finish", "run"

_ENQUEUE_SQL = (
    "INSERT INTO job_status (message_id, actor_name, queue_name, status, attempts, unfinished_deliveries, "
    "enqueued_at, updated_at) VALUES (?, ?, ?, ?, 0, 0, ?, ?) ON CONFLICT (message_id) DO NOTHING"
)
_START_COLUMNS = "message_id, actor_name, queue_name, status, attempts, unfinished_deliveries, started_at, updated_at"
_START_ROW = "(?, ?, ?, ?, 1, 1, ?, ?)"
_START_CONFLICT = (
    " ON CONFLICT (message_id) DO UPDATE SET status = excluded.status, queue_name = excluded.queue_name, "
    "attempts = job_status.attempts + 1, "
    "unfinished_deliveries = job_status.unfinished_deliveries + 1, started_at = excluded.started_at, "
    "updated_at = excluded.updated_at RETURNING message_id, unfinished_deliveries"
)
_FINISH_SQL = (
    "UPDATE job_status SET status = ?, attempts = attempts - ?, unfinished_deliveries = 0, updated_at = ?, "
    "finished_at = COALESCE(?, finished_at), error = COALESCE(?, error), progress = COALESCE(?, progress) "
    "WHERE message_id = ?"
)

#: A START and its FINISH in one row: the delivery's attempt counted, the row finished (or still in progress).
_RUN_SQL = (
    "INSERT INTO job_status (message_id, actor_name, queue_name, status, attempts, unfinished_deliveries, "
    "started_at, finished_at, error, progress, updated_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?) "
    "ON CONFLICT (message_id) DO UPDATE SET status = excluded.status, queue_name = excluded.queue_name, "
    "attempts = job_status.attempts + excluded.attempts, unfinished_deliveries = 0, "
    "started_at = excluded.started_at, finished_at = COALESCE(excluded.finished_at, job_status.finished_at), "
    "error = COALESCE(excluded.error, job_status.error), progress = COALESCE(excluded.progress, job_status.progress), "
    "updated_at = excluded.updated_at"
)


def row_values(message_id: str, actor_name: str, queue_name: str, status: str, now: datetime) -> tuple:
    """The values of an ENQUEUE or a START write (``now`` is both its event's time and ``updated_at``)."""
    return (message_id, actor_name, queue_name, status, now, now)


def finish_values(
    message_id: str,
    *,
    status: str,
    now: datetime,
    finished_at: datetime | None,
    error: str | None,
    progress: float | None,
    attempted: bool = True,
) -> tuple:
    """The values of a FINISH write; ``attempted=False`` takes back the attempt its START counted
    (a delivery that a middleware stopped before the actor ran)."""
    return (status, 0 if attempted else 1, now, finished_at, error, progress, message_id)


def run_values(start: tuple, finish: tuple) -> tuple:
    """The values of a RUN write: a START's (:func:`row_values`) and its FINISH's (:func:`finish_values`)."""
    message_id, actor_name, queue_name, _, started_at, _ = start
    status, taken_back, now, finished_at, error, progress, _ = finish
    return (message_id, actor_name, queue_name, status, 1 - taken_back, started_at, finished_at, error, progress, now)


class StatusWriter:
    """This process's status connection and the statements run on it."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._lock = threading.Lock()  # transactions are serialized by the group commit; this guards connecting
        self._connection: Any = None
        self._pid: int | None = None
        url = make_url(database.url)  # the URL, not the engine: nothing is built before a worker forks
        path = url.database if url.get_backend_name() == "sqlite" else None
        self._write_lock = SqliteWriteLock(path) if path and path != ":memory:" else None

    @contextmanager
    def transaction(self, connection: Any = None) -> Iterator[_Cursor]:
        """A cursor in a transaction on ``connection`` (by default this process's status connection)."""
        connection = connection if connection is not None else self._connect()
        dialect = self.database.engine.dialect
        cursor = _Cursor(connection.cursor(), postgresql=dialect.name == "postgresql")
        try:
            with self._write_lock.held() if self._write_lock is not None else nullcontext():
                if not cursor.postgresql:
                    cursor.raw.execute("BEGIN IMMEDIATE")  # take the write lock now, as the engine's transactions do
                yield cursor
                connection.commit()
        except dialect.loaded_dbapi.Error as error:
            self._rollback_or_discard(connection)
            raise DBAPIError.instance(None, None, error, dialect.loaded_dbapi.Error) from error
        except BaseException:
            self._rollback_or_discard(connection)
            raise
        finally:
            cursor.raw.close()

    def commit(self, writes: Sequence[Write]) -> None:
        """Run ``writes`` in one transaction. A connection found broken (the server restarted, a
        network cut) is replaced and the batch tried once more on the new one, as the engine's
        pre-ping would."""
        for attempt in (1, 2):
            connection = self._connect()
            try:
                with self.transaction(connection) as cursor:
                    self.apply(cursor, writes)
                return
            except DBAPIError:
                if attempt == 2 or self._connection is connection:  # not a broken connection: a real error
                    raise

    def apply(self, cursor: _Cursor, writes: Sequence[Write]) -> None:
        """One batch: a multi-row statement per kind (messages are distinct, or run one by one)."""
        ids = [write.params[0] if write.kind != FINISH else write.params[-1] for write in writes]
        if len(set(ids)) < len(ids):  # the same message twice (a duplicate delivery): in order, one by one
            for write in writes:
                self.apply(cursor, [write])
            return
        enqueues = [write.params for write in writes if write.kind == ENQUEUE]
        starts = [write for write in writes if write.kind == START]
        finishes = [write.params for write in writes if write.kind == FINISH]
        runs = [write.params for write in writes if write.kind == RUN]
        if enqueues:
            cursor.executemany(_ENQUEUE_SQL, enqueues)
        for chunk in _chunks(starts):
            rows = cursor.execute(_start_sql(len(chunk)), [value for write in chunk for value in write.params])
            unfinished = dict(rows)
            for write in chunk:
                write.result = unfinished[write.params[0]]
        if finishes:
            cursor.executemany(_FINISH_SQL, finishes)
        if runs:  # one multi-row statement instead measured no faster, on either database (bench/README.md)
            cursor.executemany(_RUN_SQL, runs)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None

    def _connect(self) -> Any:
        with self._lock:
            if self._connection is None or self._pid != os.getpid():
                pooled = self.database.engine.raw_connection()
                pooled.detach()  # this process's own, for good: never returned to the pool
                self._connection, self._pid = pooled.dbapi_connection, os.getpid()
            return self._connection

    def _rollback_or_discard(self, connection: Any) -> None:
        try:
            connection.rollback()
        except Exception:  # the connection itself is broken: the next transaction opens a new one
            with self._lock:
                if self._connection is connection:
                    self._connection = None
            with suppress(Exception):  # it may be closed already (by the server or the driver): nothing to release
                connection.close()


class _Cursor:
    """A DBAPI cursor that takes ``?`` placeholders and UTC datetimes on both databases."""

    def __init__(self, raw: Any, *, postgresql: bool) -> None:
        self.raw = raw
        self.postgresql = postgresql

    def execute(self, sql: str, values: Sequence[Any]) -> list[tuple]:
        """Run a statement that returns rows, and return them."""
        self.raw.execute(self._sql(sql), self._values(values))
        return [tuple(row) for row in self.raw.fetchall()]

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if len(rows) == 1:  # psycopg's executemany sets up a pipeline: costly for the usual single row
            self.raw.execute(self._sql(sql), self._values(rows[0]))
        else:
            self.raw.executemany(self._sql(sql), [self._values(values) for values in rows])

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgresql else sql

    def _values(self, values: Sequence[Any]) -> tuple:
        if self.postgresql:
            return tuple(values)
        # SQLAlchemy's SQLite DateTime stores "YYYY-MM-DD HH:MM:SS.ffffff" (UTC, no offset): the same here,
        # by isoformat (a tenth of strftime's cost, which was a fifth of a status write's CPU).
        return tuple(
            value.replace(tzinfo=None).isoformat(" ", "microseconds") if isinstance(value, datetime) else value
            for value in values
        )


#: Rows per multi-row statement: SQLite takes at most 32,766 parameters a statement, PostgreSQL 65,535.
MAX_ROWS_PER_STATEMENT = 500


def _chunks(rows: list) -> Iterator[list]:
    for start in range(0, len(rows), MAX_ROWS_PER_STATEMENT):
        yield rows[start : start + MAX_ROWS_PER_STATEMENT]


@cache
def _start_sql(rows: int) -> str:
    return f"INSERT INTO job_status ({_START_COLUMNS}) VALUES {', '.join([_START_ROW] * rows)}{_START_CONFLICT}"
