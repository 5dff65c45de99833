"""A caller interrupted anywhere in the group commit leaves it working for every other thread (issue 18).

Dramatiq's ``TimeLimit`` and ``ShutdownNotifications`` raise their interrupts into worker threads
asynchronously, at whatever line the thread is on. Before issue 18, a thread woken to flush for
the others and interrupted before it did left every later write of the process waiting for ever.
Here the interrupt is raised at each line the caller's thread runs inside the group commit, one
line per run, and at the point of that stall by Dramatiq's own ``raise_thread_exception``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from dramatiq.middleware import TimeLimitExceeded
from dramatiq.threading import raise_thread_exception

import middleware.storage.group_commit
from middleware.storage.group_commit import GroupCommit, Write
from tests.harness import wait_until
from tests.unit.test_group_commit import Recorder

GROUP_COMMIT_SOURCE = middleware.storage.group_commit.__file__
DEADLINE_S = 10


def finishes(action: Callable[[], Any], *, within_s: float = DEADLINE_S) -> bool:
    """Whether ``action`` returns (or raises) within the deadline, run on a thread of its own."""
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    thread.join(timeout=within_s)
    return not thread.is_alive()


class InterruptAtCheck:
    """A profile function raising TimeLimitExceeded at the ``nth`` point, in this thread's run through the
    group commit, where CPython can deliver an asynchronous exception.

    CPython raises a pending asynchronous exception only where its eval loop checks for one: when a
    Python function starts, and after a call returns (a call of Python code or of C: taking or
    releasing a lock, appending to a list). Those are exactly the profile events ``call``,
    ``return`` and ``c_return``, so every such point of the caller's run is tried, one per run.
    (A trace function's line events would also raise at points no interrupt can reach, such as
    between a ``with`` block's last line and the release of its lock.)
    """

    def __init__(self, nth: int) -> None:
        self.nth = nth
        self.points = 0
        self.raised_at: str | None = None

    def __call__(self, frame: FrameType, event: str, arg: object) -> None:
        if self.raised_at is not None or event == "c_call" or frame.f_code.co_filename != GROUP_COMMIT_SOURCE:
            return
        if frame.f_code.co_name == "<genexpr>":
            return  # raised into a generator being closed, an exception is only printed as unraisable
        self.points += 1
        if self.points == self.nth:
            called = f" after {getattr(arg, '__qualname__', arg)}" if event == "c_return" else ""
            self.raised_at = f"{event} {frame.f_code.co_name}:{frame.f_lineno}{called}"
            raise TimeLimitExceeded()


def run_interrupted(interrupt: InterruptAtCheck, operation: Callable[[], object]) -> None:
    sys.setprofile(interrupt)
    try:
        operation()
    except TimeLimitExceeded:
        pass  # the interrupt the test raised; the group must not care where it landed
    finally:
        sys.setprofile(None)


OPERATIONS: dict[str, Callable[[GroupCommit, Write], object]] = {
    "run": lambda group, write: group.run(write),
    "run_all": lambda group, write: group.run_all([write]),
    "submit, then wait": lambda group, write: (group.submit(write), group.wait([write])),
}


def interrupt_once(operation: str, nth: int) -> str | None:
    """Run ``operation`` on a caller interrupted at its ``nth`` point, behind a flush under way; check
    that the group still commits everything; return where the interrupt landed (None: past the end)."""
    recorder = Recorder()  # holds the first batch, so the interrupted caller waits behind a flush
    group = GroupCommit(commit=recorder.commit)
    first = Write("double", {"value": 1})
    group.submit(first)
    recorder.first_started.wait(timeout=DEADLINE_S)
    write, interrupt = Write("double", {"value": 2}), InterruptAtCheck(nth)
    caller = threading.Thread(target=run_interrupted, args=(interrupt, lambda: OPERATIONS[operation](group, write)))
    caller.start()
    wait_until(
        lambda: not caller.is_alive() or any(write in waiting.writes for waiting in group._waiting),
        timeout_s=DEADLINE_S,
        what="the caller waiting or interrupted",
    )
    recorder.hold_first.set()
    caller.join(timeout=DEADLINE_S)
    where = interrupt.raised_at or "nowhere"
    assert not caller.is_alive(), f"the caller interrupted at {where} never returned"
    later = Write("double", {"value": 3})
    assert finishes(lambda: group.run(later)), f"after an interrupt at {where}, no write is committed any more"
    assert later.result == 6
    assert finishes(lambda: group.wait([first])) and first.result == 2
    assert group._pending == [], f"after an interrupt at {where}, a write was left pending"
    if write.done:
        assert write.result == 4, "a write that was taken is committed whole"
    return interrupt.raised_at


@pytest.mark.parametrize("operation", OPERATIONS)
def test_an_interrupt_at_any_point_of_a_caller_leaves_the_commit_working(operation: str) -> None:
    points = []
    while (where := interrupt_once(operation, len(points) + 1)) is not None:
        points.append(where)
    assert len(points) >= 10, f"the interrupt landed at too few points to mean anything: {points}"


def interrupt_a_waiting_caller(group: GroupCommit, write: Write) -> tuple[threading.Thread, list[object]]:
    """Run ``group.run(write)`` on a thread of its own, wait until it waits behind the flush under way,
    and raise Dramatiq's TimeLimitExceeded into it, as TimeLimit does; return the thread and its
    outcome (the result, or the interrupt), filled in once the thread ends."""
    outcome: list[object] = []

    def caller() -> None:
        try:
            outcome.append(group.run(write))
        except TimeLimitExceeded as interrupt:
            outcome.append(interrupt)

    thread = threading.Thread(target=caller)
    thread.start()
    wait_until(
        lambda: any(write in waiting.writes for waiting in group._waiting),
        timeout_s=DEADLINE_S,
        what="the caller waiting behind the flush",
    )
    raise_thread_exception(thread.ident, TimeLimitExceeded)  # lands as soon as the thread runs Python again
    return thread, outcome


def test_a_caller_woken_by_its_commit_and_interrupted_by_dramatiq_stops_no_one() -> None:
    """The stall of issue 18, end to end: a waiting thread gets TimeLimitExceeded from Dramatiq's own
    raise_thread_exception while a flush is under way and other writes are pending behind it."""
    recorder = Recorder()
    group = GroupCommit(commit=recorder.commit)
    group.submit(Write("double", {"value": 1}))
    recorder.first_started.wait(timeout=DEADLINE_S)
    interrupted = Write("double", {"value": 2})
    thread, outcome = interrupt_a_waiting_caller(group, interrupted)
    behind = Write("double", {"value": 3})
    group.submit(behind)  # pending behind the flush: before issue 18 the interrupted caller was to flush it
    recorder.hold_first.set()
    thread.join(timeout=DEADLINE_S)
    assert not thread.is_alive() and isinstance(outcome[0], TimeLimitExceeded)
    assert finishes(lambda: group.wait([behind])), "the write behind the interrupted caller was never committed"
    assert interrupted.result == 4 and behind.result == 6, "the interrupted caller's write is committed all the same"
    assert finishes(lambda: group.run(Write("double", {"value": 5})))
