"""Group commit: writes from many threads share transactions, and each caller still waits for its own.

Every worker thread writes its job's status at start and at finish, and some must see it committed
before they go on (the delivery count decides poison messages; the ack must not outrun the
status). One transaction per write makes the threads queue for SQLite's single write lock (or
PostgreSQL's commit flush) one by one. Here:

1. A thread hands its write to :meth:`GroupCommit.run` and blocks until it is committed, or
   leaves it pending and goes on (:meth:`GroupCommit.submit`), to wait later if at all
   (:meth:`GroupCommit.wait`) or to leave an action to follow the commit (:meth:`GroupCommit.then`).
2. One thread of this process, the flusher, commits everything pending in one transaction
   (``commit`` turns a batch into a few multi-row statements), then wakes the callers it settled
   and takes the next batch. Under load, batches grow to the number of busy threads.
3. Only the flusher ever runs a transaction, never a worker thread. Dramatiq interrupts worker
   threads with asynchronous exceptions (``TimeLimitExceeded``, ``Shutdown``) that land at any
   line: a worker thread that flushed for the others could be stopped after it was chosen to flush
   and before it did, and every write of the process would wait forever (it happened: issue 18).
   An interrupted caller now only stops waiting; its write is committed all the same, and no
   transaction is ever half done by an interrupt.
4. The flusher sleeps until a caller wakes it, and at most :data:`LOST_WAKE_CHECK_S`: a caller
   interrupted between asking for a flush and waking the flusher delays the writes by that much,
   never for good.
5. A flush wakes only the callers whose writes it settled: with a condition's ``notify_all``
   every waiter woke after every flush and most went back to sleep, each time taking the GIL.
6. If a batch fails, each of its writes is tried again in a transaction of its own, so one bad
   write fails only its own caller, with its own error.
7. Until the flusher takes it, a pending write can still be replaced (:meth:`GroupCommit.replace`):
   two writes become one row.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("middleware.storage.group_commit.GroupCommit")

#: The longest the flusher sleeps without being woken, so that a lost wake costs at most this.
LOST_WAKE_CHECK_S = 0.5


@dataclass(eq=False)
class Write:
    """One caller's write: ``kind`` selects the statement, ``params`` are its values."""

    kind: str
    params: tuple[Any, ...]
    result: Any = None
    error: BaseException | None = None
    done: bool = field(default=False, repr=False)
    #: ``(action, item)`` pairs: once the write is settled (committed or failed), the flusher
    #: calls each action once with the items of all the writes it settled.
    then: list[tuple[Callable[[list[Any]], None], Any]] = field(default_factory=list, repr=False)


#: Runs a batch of writes in one transaction (rolled back if it raises), setting each ``write.result``.
CommitBatch = Callable[[Sequence[Write]], None]


class _Caller:
    """A thread waiting for its writes: the writes, and the lock it sleeps on."""

    __slots__ = ("wake", "writes")

    def __init__(self, writes: Sequence[Write]) -> None:
        self.writes = writes
        self.wake = threading.Lock()
        self.wake.acquire()  # released once, when its writes are settled

    @property
    def done(self) -> bool:
        return all(write.done for write in self.writes)


class GroupCommit:
    """Parameters:
    commit: runs a batch in one transaction (in submission order where order matters) and sets
      each write's result.
    """

    def __init__(self, *, commit: CommitBatch) -> None:
        self.commit = commit
        self._reset()
        _groups.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Write] = []
        self._waiting: list[_Caller] = []
        self._flush_asked = False  # the flusher has been woken for what is pending
        self._flusher_thread: _Flusher | None = None

    def run(self, write: Write) -> Any:
        """Commit ``write`` (with whatever else is pending) and return its result, or raise its error."""
        self.run_all([write])
        return write.result

    def run_all(self, writes: Sequence[Write]) -> None:
        """Commit ``writes`` (with whatever else is pending); raises the first error among them."""
        caller = _Caller(writes)
        with self._lock:
            self._pending.extend(writes)
            self._waiting.append(caller)
        self._ask_for_flush()
        caller.wake.acquire()
        _raise_first_error(writes)

    def submit(self, write: Write) -> None:
        """Leave ``write`` to be committed without waiting for it (see :meth:`wait`)."""
        with self._lock:
            self._pending.append(write)
        self._ask_for_flush()

    def replace(self, write: Write, replacement: Write) -> bool:
        """Put ``replacement`` in the place of ``write`` if no flush has taken ``write`` yet."""
        with self._lock:
            for index, pending in enumerate(self._pending):
                if pending is write:
                    self._pending[index] = replacement
                    return True
        return False

    def then(self, write: Write, action: Callable[[list[Any]], None], item: Any) -> None:
        """Call ``action([item, ...])`` once ``write`` is settled, with the items of the other writes
        settled together (one call for a batch: one ack round trip for many messages, say). If
        ``write`` is settled already, ``action([item])`` runs now, in this thread."""
        with self._lock:
            if not write.done:
                write.then.append((action, item))
                return
        action([item])

    def wait(self, writes: Sequence[Write]) -> None:
        """Wait until submitted ``writes`` are committed; raises the first error among them."""
        caller = _Caller(writes)
        with self._lock:
            waits = not caller.done
            if waits:
                self._waiting.append(caller)
        if waits:
            caller.wake.acquire()
        _raise_first_error(writes)

    def _ask_for_flush(self) -> None:
        with self._lock:
            if not self._flush_asked:  # else the flusher is awake, or woken already: it takes what is pending next
                self._flush_asked = True
                self._flusher().wake.release()  # under the lock, so the flusher's wake is released once per ask

    def _flush(self) -> bool:
        """Commit everything pending, wake the callers it settled, run the actions that follow the
        commit; False if nothing was pending. Runs only on the flusher thread."""
        with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                # Asleep from here, and the wake is taken (a timed-out sleep may have missed one):
                # the next write asks again and releases it exactly once.
                self._flush_asked = False
                if self._flusher_thread is not None:
                    self._flusher_thread.wake.acquire(blocking=False)
                return False
        settled: list[Write] = []
        actions: dict[Callable[[list[Any]], None], list[Any]] = {}
        try:
            try:
                self.commit(batch)
            except Exception as error:
                if len(batch) == 1:
                    batch[0].error = error
                else:
                    logger.info(
                        "A batch of %d writes failed (%s: %s); trying each in a transaction of its own.",
                        len(batch),
                        type(error).__name__,
                        error,
                    )
                    for write in batch:
                        try:
                            self.commit([write])
                        except Exception as own_error:
                            write.error = own_error
                        settled.append(write)
            settled = batch
        finally:
            with self._lock:
                for write in settled:
                    write.done = True
                    for action, item in write.then:
                        actions.setdefault(action, []).append(item)
                # Only a bug could stop the commit short of settling its batch: what it left goes
                # back, to be tried again, rather than leaving its callers waiting for ever.
                self._pending[:0] = [write for write in batch if not write.done]
                still_waiting = []
                for caller in self._waiting:
                    if caller.done:
                        caller.wake.release()
                    else:
                        still_waiting.append(caller)
                self._waiting = still_waiting
        for action, items in actions.items():
            try:
                action(items)
            except Exception:
                logger.exception("An action after a group commit failed.")
        return True

    def _flusher(self) -> _Flusher:
        """This process's flusher thread, started on first use (a thread of the parent does not survive a fork)."""
        if self._flusher_thread is None:
            self._flusher_thread = _Flusher(self)
            self._flusher_thread.start()
        return self._flusher_thread


#: Every group of this process, to reset in a forked child (dramatiq forks its worker processes).
_groups: weakref.WeakSet[GroupCommit] = weakref.WeakSet()


def _reset_after_fork() -> None:
    # A lock held by a thread of the parent would never be released in the child, whose only
    # thread is the one that forked; the parent's pending writes are the parent's to commit.
    # (Checking os.getpid() on every write instead cost a system call per write: 3 % of a
    # worker's GIL samples in a no-op drain.)
    for group in list(_groups):
        group._reset()


os.register_at_fork(after_in_child=_reset_after_fork)


class _Flusher(threading.Thread):
    """Commits the writes of every caller of one group. Dramatiq raises its interrupts only into
    the worker threads it runs messages on, never into this one."""

    def __init__(self, group: GroupCommit) -> None:
        super().__init__(name="GroupCommitFlusher", daemon=True)
        self.group = group
        self.wake = threading.Lock()
        self.wake.acquire()  # released each time a caller asks for a flush

    def run(self) -> None:
        while True:
            self.wake.acquire(timeout=LOST_WAKE_CHECK_S)
            try:
                while self.group._flush():
                    pass
            except Exception:  # each write's own error is on the write; this would be a bug of the flush itself
                logger.exception("A group commit flush failed.")


def _raise_first_error(writes: Sequence[Write]) -> None:
    for write in writes:
        if write.error is not None:
            raise write.error
