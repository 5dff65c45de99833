"""One leader among scheduler replicas: the process holding the lock schedules, the others stand by.

PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) taken on a connection of its
own and held for as long as the process leads. The lock lives exactly as long as that session:
when the leader dies, however it dies, the kernel closes its socket, the server ends the session
and the lock is free at once for the next standby attempt (standbys try every
``SCHEDULER_LEADER_RETRY_MS``). Server-side TCP keepalives end the session of a leader whose host
vanished within about 11 s; client-side, ``tcp_user_timeout`` makes a cut-off leader's check fail
within about 5 s, so it stops scheduling before the server hands the lock on.

SQLite (and the embedded default): an exclusive ``flock`` on a file beside the database. SQLite
itself is only sound for processes sharing one kernel (it relies on that kernel's file locks), so
every scheduler that can use the database sees this lock too; the kernel drops a flock when the
last descriptor of the open file closes, which happens when the process dies, even by SIGKILL.
Nothing is written that could go stale (no PID file is trusted, no timeout guessed); the holder
writes its identity into the file only so that ``python -m ops schedule`` can say who leads.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypedDict

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from middleware.storage.database import Database

logger = logging.getLogger("scheduler.leader")

#: The advisory lock's key: advisory locks are per database, so one leader per system database.
ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"resilient-jobs scheduler leader").digest()[:8], "big", signed=True)


class _ClientTimeouts(TypedDict):
    connect_timeout: int
    keepalives: int
    keepalives_idle: int
    keepalives_interval: int
    keepalives_count: int
    tcp_user_timeout: int


#: libpq and server settings of the lock's connection: fail fast rather than lead blind.
_CLIENT_TIMEOUTS: _ClientTimeouts = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 5_000,
}
_SERVER_SETTINGS = (
    "-c statement_timeout=5000 -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
)


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaderLock(Protocol):
    def try_acquire(self) -> bool:
        """Take the lock if it is free; False when another process holds it."""

    def still_held(self) -> bool:
        """Whether this process still holds the lock (the leader checks every retry interval)."""

    def release(self) -> None: ...

    def describe(self) -> str: ...


def leader_lock(database: Database, *, state_dir: Path, identity: str) -> LeaderLock:
    if make_url(database.url).get_backend_name() == "postgresql":
        return PostgresLeaderLock(database.url, identity=identity)
    return FileLeaderLock(lock_file_path(database, state_dir=state_dir), identity=identity)


def current_leader(database: Database, *, state_dir: Path) -> str | None:
    """host:pid of the scheduler that leads now, or None when none does."""
    if make_url(database.url).get_backend_name() == "postgresql":
        return _postgres_holder(database)
    return _file_holder(lock_file_path(database, state_dir=state_dir))


def lock_file_path(database: Database, *, state_dir: Path) -> Path:
    """Beside the SQLite file: every process using that database finds the same lock file."""
    path = make_url(database.url).database
    if path and path != ":memory:":
        return Path(path).resolve().with_name(Path(path).name + ".scheduler-lock")
    return state_dir / "scheduler.lock"


class PostgresLeaderLock:
    def __init__(self, url: str, *, identity: str) -> None:
        self.conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.identity = identity
        self._connection: psycopg.Connection | None = None

    def try_acquire(self) -> bool:
        try:
            if self._connection is None or self._connection.closed:
                self._connection = psycopg.connect(
                    self.conninfo,
                    autocommit=True,
                    application_name=f"scheduler {self.identity}"[:63],
                    options=_SERVER_SETTINGS,
                    **_CLIENT_TIMEOUTS,
                )
            row = self._connection.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()
            assert row is not None  # a SELECT of a function call: always one row
            return bool(row[0])
        except psycopg.Error as error:
            logger.warning("Cannot reach PostgreSQL to take the leader lock (%s); trying again.", error)
            self._drop_connection()
            return False

    def still_held(self) -> bool:
        # The lock is released only with its session (or by release()): a live session holds it.
        if self._connection is None:
            return False
        try:
            self._connection.execute("SELECT 1")
            return True
        except psycopg.Error as error:
            logger.warning("The leader lock's PostgreSQL session is gone (%s).", error)
            self._drop_connection()
            return False

    def release(self) -> None:
        # Closing the session releases its advisory locks.
        self._drop_connection()

    def describe(self) -> str:
        return f"PostgreSQL advisory lock {ADVISORY_LOCK_KEY}"

    def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except psycopg.Error:
                logger.debug("Closing a broken lock connection failed; it is dropped anyway.", exc_info=True)
        self._connection = None


def _postgres_holder(database: Database) -> str | None:
    # pg_locks shows a bigint advisory key as two 32-bit halves: classid (high) and objid (low).
    unsigned = ADVISORY_LOCK_KEY & 0xFFFF_FFFF_FFFF_FFFF
    query = text(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid::bigint = :high AND l.objid::bigint = :low"
    )
    with database.engine.connect() as connection:
        name = connection.scalar(query, {"high": unsigned >> 32, "low": unsigned & 0xFFFF_FFFF})
    return None if name is None else name.removeprefix("scheduler ")


class FileLeaderLock:
    def __init__(self, path: Path, *, identity: str) -> None:
        self.path = path
        self.identity = identity
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"leader": self.identity, "since": datetime.now(UTC).isoformat()}).encode(), 0)
        self._fd = fd
        return True

    def still_held(self) -> bool:
        # The kernel never takes a flock back; but if the file was deleted or replaced, another process
        # could lock the new file, so the lock counts only while the path still names our file.
        if self._fd is None:
            return False
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            logger.warning("The leader lock file %s was deleted.", self.path)
            return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def describe(self) -> str:
        return f"file lock {self.path}"


def _file_holder(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            # A shared lock is refused only while a leader holds its exclusive one; when it is
            # granted nobody leads, and it is dropped at once (a standby trying meanwhile tries again).
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            content = os.pread(fd, 4096, 0).decode(errors="replace")
            try:
                return json.loads(content)["leader"]
            except (ValueError, KeyError, TypeError):
                return "(unknown process)"  # locked, identity not written yet
        return None
    finally:
        os.close(fd)
