"""A queue for SQLite's write lock that wakes the next writer at once, across worker processes.

SQLite lets one writer at a time; a writer that finds the lock taken is put to sleep by SQLite's
busy handler for 1, 2, 5, 10 ... ms before it looks again. Two worker processes writing job
status for short jobs meet that handler all the time: in a no-op drain, most of a worker's
threads waited on a group commit whose flusher was asleep in ``BEGIN IMMEDIATE`` while the
lock had long been free.

Here the writers of all processes queue on an exclusive ``flock`` of a file beside the database
(``<database>-writer.lock``): the kernel hands it to the next waiter the moment it is released,
and the waiter's thread blocks without holding the GIL. SQLite's own lock is then almost always
free when ``BEGIN IMMEDIATE`` runs; a writer that does not take this lock (a migration, the
``ops`` CLI) is still waited for by SQLite's busy handler, as before.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class SqliteWriteLock:
    """Serializes write transactions on one SQLite file, between threads and between processes."""

    def __init__(self, database_path: str | Path) -> None:
        self.path = Path(f"{database_path}-writer.lock")
        self._threads = threading.Lock()  # flock is per open file: threads of one process queue here
        self._fd: int | None = None
        self._pid: int | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        if self._pid is not None and self._pid != os.getpid():
            # A fork's child: a lock held by a thread of the parent would never be released here,
            # and the inherited descriptor shares the parent's flock.
            self._threads, self._fd = threading.Lock(), None
        with self._threads:
            fd = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._pid = os.getpid()
        return self._fd
