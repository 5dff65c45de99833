"""Group commit: concurrent writers share transactions, each gets its own result, one bad write fails alone."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Sequence

import pytest

from middleware.storage.group_commit import GroupCommit, Write
from tests.harness import wait_until


class Recorder:
    """A commit function that doubles each write's value, refuses the value 13, and records each batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.hold_first = threading.Event()
        self.first_started = threading.Event()

    def commit(self, writes: Sequence[Write]) -> None:
        if not self.batches:
            self.first_started.set()
            self.hold_first.wait(timeout=10)
        self.batches.append([write.params["value"] for write in writes])
        if any(write.params["value"] == 13 for write in writes):
            raise ValueError("13 is refused")  # the whole transaction rolls back
        for write in writes:
            write.result = write.params["value"] * 2


def run_in_threads(group: GroupCommit, values: list[int]) -> tuple[dict[int, object], list[threading.Thread]]:
    outcomes: dict[int, object] = {}

    def write(value: int) -> None:
        try:
            outcomes[value] = group.run(Write("double", {"value": value}))
        except ValueError as error:
            outcomes[value] = error

    threads = [threading.Thread(target=write, args=(value,)) for value in values]
    for thread in threads:
        thread.start()
    return outcomes, threads


def test_writes_that_arrive_during_a_flush_are_committed_together_and_each_caller_gets_its_result() -> None:
    recorder = Recorder()
    group = GroupCommit(commit=recorder.commit)
    outcomes, [first] = run_in_threads(group, [1])
    recorder.first_started.wait(timeout=10)
    more, threads = run_in_threads(group, [2, 3, 4, 5])
    wait_until(lambda: len(group._pending) == 4, timeout_s=10, what="four writes waiting for the flush")
    recorder.hold_first.set()
    for thread in [first, *threads]:
        thread.join(timeout=10)
    assert recorder.batches[0] == [1]
    assert sorted(recorder.batches[1]) == [2, 3, 4, 5], "the four waiting writes share one transaction"
    assert {**outcomes, **more} == {1: 2, 2: 4, 3: 6, 4: 8, 5: 10}


def test_a_failing_write_fails_only_its_own_caller() -> None:
    recorder = Recorder()
    group = GroupCommit(commit=recorder.commit)
    _, [first] = run_in_threads(group, [1])
    recorder.first_started.wait(timeout=10)
    more, threads = run_in_threads(group, [12, 13, 14])
    wait_until(lambda: len(group._pending) == 3, timeout_s=10, what="three writes waiting for the flush")
    recorder.hold_first.set()
    for thread in [first, *threads]:
        thread.join(timeout=10)
    assert more[12] == 24 and more[14] == 28
    assert isinstance(more[13], ValueError)
    assert sorted(recorder.batches[1]) == [12, 13, 14] and sorted(map(tuple, recorder.batches[2:])) == [
        (12,),
        (13,),
        (14,),
    ], "the failed batch is retried one write per transaction"


def test_a_single_write_raises_its_error() -> None:
    recorder = Recorder()
    recorder.hold_first.set()
    group = GroupCommit(commit=recorder.commit)
    with pytest.raises(ValueError, match="13 is refused"):
        group.run(Write("double", {"value": 13}))
    assert group.run(Write("double", {"value": 21})) == 42


def test_every_flush_runs_on_the_flusher_thread_never_on_a_callers_thread() -> None:
    """A caller's thread may be interrupted anywhere (issue 18): it must never hold the flush for the others."""
    recorder = Recorder()
    flushers: list[str] = []
    commit = recorder.commit

    def commit_and_record_who(writes: Sequence[Write]) -> None:
        flushers.append(threading.current_thread().name)
        commit(writes)

    group = GroupCommit(commit=commit_and_record_who)
    _, [first] = run_in_threads(group, [1])
    recorder.first_started.wait(timeout=10)
    waiting = []
    for value in (2, 3, 4):
        _, [thread] = run_in_threads(group, [value])
        waiting.append(thread)
    wait_until(lambda: len(group._waiting) == 4, timeout_s=10, what="writes 2, 3 and 4 waiting")
    recorder.hold_first.set()
    for thread in [first, *waiting]:
        thread.join(timeout=10)
    assert recorder.batches == [[1], [2, 3, 4]]
    assert flushers == ["GroupCommitFlusher", "GroupCommitFlusher"]


def test_a_submitted_write_is_committed_without_its_caller_and_what_follows_it_runs_once_per_commit() -> None:
    recorder = Recorder()
    group = GroupCommit(commit=recorder.commit)
    group.submit(Write("double", {"value": 1}))  # returns at once; the flusher's commit is held
    recorder.first_started.wait(timeout=10)
    followed: list[tuple[list[str], list[list[int]], str]] = []

    def follow(items: list[str]) -> None:
        followed.append((items, [*recorder.batches], threading.current_thread().name))

    together = [Write("double", {"value": value}) for value in (2, 3)]
    for write in together:
        group.submit(write)
        group.then(write, follow, f"after {write.params['value']}")
    assert followed == [] and not any(write.done for write in together)
    recorder.hold_first.set()  # nobody waits: the flusher thread commits 2 and 3 next
    wait_until(lambda: followed, timeout_s=10, what="the action after the commit")
    assert [write.result for write in together] == [4, 6]
    assert followed == [(["after 2", "after 3"], [[1], [2, 3]], "GroupCommitFlusher")], (
        "one call for the writes committed together, by the thread that committed them, after the commit"
    )
    group.then(together[0], follow, "late")
    assert followed[-1] == (["late"], [[1], [2, 3]], threading.current_thread().name), "settled: at once, here"


def test_a_pending_write_can_be_replaced_until_a_flush_takes_it() -> None:
    recorder = Recorder()
    group = GroupCommit(commit=recorder.commit)
    taken = Write("double", {"value": 1})
    group.submit(taken)
    recorder.first_started.wait(timeout=10)  # the flusher holds write 1
    pending, replacement = Write("double", {"value": 2}), Write("double", {"value": 20})
    group.submit(pending)
    assert group.replace(pending, replacement)
    assert not group.replace(taken, Write("double", {"value": 10})), "a write a flush has taken stays"
    recorder.hold_first.set()
    group.wait([taken, replacement])
    assert recorder.batches == [[1], [20]] and replacement.result == 40


def test_a_forked_child_commits_its_own_writes_although_the_parent_was_mid_flush() -> None:
    """dramatiq forks its worker processes: a lock or a flush of the parent's must not hang the child."""
    recorder = Recorder()
    group = GroupCommit(commit=recorder.commit)
    outcomes, [first] = run_in_threads(group, [1])
    recorder.first_started.wait(timeout=10)  # the parent's flush holds the group, mid-transaction
    group.submit(Write("double", {"value": 2}))

    def child() -> None:
        child_recorder = Recorder()
        child_recorder.hold_first.set()
        group.commit = child_recorder.commit
        assert group.run(Write("double", {"value": 21})) == 42
        assert child_recorder.batches == [[21]], "the parent's pending write is the parent's to commit"

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout=30)
    recorder.hold_first.set()
    first.join(timeout=10)
    assert process.exitcode == 0, "the child's write was committed (a held lock would have hung it)"
    assert outcomes == {1: 2}


def test_what_follows_a_write_runs_when_the_write_fails_alone_too() -> None:
    """An ack waits on its status write: a failed write is still followed (logged and acked), never dropped."""
    recorder = Recorder()
    recorder.hold_first.set()
    group = GroupCommit(commit=recorder.commit)
    followed: list[list[str]] = []
    refused = Write("double", {"value": 13})
    group.submit(refused)
    group.then(refused, followed.append, "ack 13")
    with pytest.raises(ValueError, match="13 is refused"):
        group.wait([refused])
    wait_until(lambda: followed, timeout_s=10, what="the action after the failed write")
    assert followed == [["ack 13"]]
