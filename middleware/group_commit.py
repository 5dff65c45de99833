"""Group commit: writes from many threads share transactions, and each caller still waits for its own.

Every worker thread writes its job's status at start and at finish, and must see it committed
before it goes on (the delivery count decides poison messages; the ack must not outrun the
status). One transaction per write makes the threads queue for SQLite's single write lock (or
PostgreSQL's commit flush) one by one. Here:

1. A thread hands its write to :meth:`GroupCommit.run` and blocks until it is committed.
2. If no flush is under way, that thread flushes at once: everything pending, its own write
   included, in one transaction (``apply`` turns a batch into a few multi-row statements).
3. Writes arriving meanwhile wait for that flush to end; one of their threads then flushes them
   all together. Under load, batches grow to the number of busy threads; alone, a write costs
   what it did before.
3a. A flush wakes only the threads whose writes it committed, and at most one more, which
   flushes next: with a condition's ``notify_all`` every waiter woke after every flush and most
   went back to sleep, each time taking the GIL (a no-op drain made four times bare Dramatiq's
   futex calls per job).
4. If a batch fails, each of its writes is tried again in a transaction of its own, so one bad
   write fails only its own caller, with its own error.
5. A caller that need not wait (:meth:`GroupCommit.submit`) leaves its write pending and goes
   on; it waits later, if at all (:meth:`GroupCommit.wait`), or leaves an action to follow the
   commit (:meth:`GroupCommit.then`). Such writes are flushed by the flush under way, or else by
   this process's flusher thread, which takes a flush no caller is waiting to take. Until it is
   taken, a pending write can still be replaced (:meth:`GroupCommit.replace`): two writes become
   one row.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("middleware.group_commit.GroupCommit")


@dataclass(eq=False)
class Write:
    """One caller's write: ``kind`` selects the statement, ``params`` are its values."""

    kind: str
    params: dict[str, Any]
    result: Any = None
    error: BaseException | None = None
    done: bool = field(default=False, repr=False)
    #: ``(action, item)`` pairs: once the write is settled (committed or failed), the thread that
    #: settled it calls each action once with the items of all the writes it settled.
    then: list[tuple[Callable[[list[Any]], None], Any]] = field(default_factory=list, repr=False)


#: Runs a batch of writes in one transaction (rolled back if it raises), setting each ``write.result``.
CommitBatch = Callable[[Sequence[Write]], None]


class _Caller:
    """A thread waiting in :meth:`GroupCommit.run_all`: its writes, and the lock it sleeps on."""

    __slots__ = ("wake", "writes")

    def __init__(self, writes: Sequence[Write]) -> None:
        self.writes = writes
        self.wake = threading.Lock()
        self.wake.acquire()  # released once: its writes are done, or it is to flush next

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
        self._flushing = False
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
            flushes = not self._flushing
            if flushes:
                self._flushing = True  # no flush under way: this thread flushes, its own writes included
            else:
                self._waiting.append(caller)
        if not flushes:
            caller.wake.acquire()
        if not caller.done:  # woken to flush next (its writes are among the pending ones)
            self._flush(own=set(writes))
        _raise_first_error(writes)

    def submit(self, write: Write) -> None:
        """Leave ``write`` to be committed without waiting for it (see :meth:`wait`)."""
        with self._lock:
            self._pending.append(write)
            if self._flushing:
                return  # the flush under way hands the pending writes on
            self._flushing = True
        self._flusher().wake.release()

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
            if not caller.done:  # woken to flush next
                self._flush(own=set())
        _raise_first_error(writes)

    def _flush(self, *, own: set[Write]) -> None:
        """Commit everything pending, then wake the callers it settled and hand on the next flush."""
        batch: list[Write] = []
        settled: list[Write] = []
        actions: dict[Callable[[list[Any]], None], list[Any]] = {}
        try:
            with self._lock:
                batch, self._pending = self._pending, []
            try:
                self.commit(batch)
                settled = batch
            except Exception as error:
                if len(batch) == 1:
                    batch[0].error = error
                    settled = batch
                    return
                logger.info("A batch of %d writes failed (%s: %s); trying each in a transaction of its own.",
                            len(batch), type(error).__name__, error)  # fmt: skip
                for write in batch:
                    try:
                        self.commit([write])
                    except Exception as own_error:
                        write.error = own_error
                    settled.append(write)
        finally:
            with self._lock:
                for write in settled:
                    write.done = True
                    for action, item in write.then:
                        actions.setdefault(action, []).append(item)
                # An interruption (Shutdown, TimeLimitExceeded) raised in this thread is this thread's
                # alone: the other writes it had not committed go back to pending, for the next flush.
                self._pending[:0] = [write for write in batch if not write.done and write not in own]
                still_waiting = []
                for caller in self._waiting:
                    if caller.done:
                        caller.wake.release()
                    else:
                        still_waiting.append(caller)
                if self._pending and still_waiting:
                    still_waiting.pop(0).wake.release()  # the longest waiting flushes next; _flushing stays True
                elif self._pending:
                    self._flusher().wake.release()  # submitted writes nobody waits for yet
                else:
                    self._flushing = False
                self._waiting = still_waiting
            for action, items in actions.items():  # after the next flush is handed on: an action may take its time
                try:
                    action(items)
                except Exception:
                    logger.exception("An action after a group commit failed.")

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
    """Takes the flushes of submitted writes that no caller waits to take."""

    def __init__(self, group: GroupCommit) -> None:
        super().__init__(name="GroupCommitFlusher", daemon=True)
        self.group = group
        self.wake = threading.Lock()
        self.wake.acquire()  # released each time a flush is handed to this thread

    def run(self) -> None:
        while True:
            self.wake.acquire()
            try:
                self.group._flush(own=set())
            except Exception:  # each write's own error is on the write; this would be a bug of the flush itself
                logger.exception("A group commit flush failed.")


def _raise_first_error(writes: Sequence[Write]) -> None:
    for write in writes:
        if write.error is not None:
            raise write.error
