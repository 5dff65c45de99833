"""python -m ops workers, in pieces: crash-window counting as a truth table, the supervision loop over
tiny real commands, the recorder of ``worker_slots`` through a database outage, and the status reads."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from middleware.storage.database import Database
from middleware.storage.tables import worker_slots
from middleware.storage.worker_slots import CRASH_LOOP, RESTARTING, RUNNING, STOPPED, list_worker_slots
from ops.supervisor import EXIT_CRASH_LOOP, CrashWindow, Slot, SlotRecorder, Supervisor, exit_reason
from ops.workers_status import process_tree_rss_bytes, slot_status
from tests.harness import wait_until

CRASH = [sys.executable, "-c", "raise SystemExit(1)"]
CLEAN_EXIT = [sys.executable, "-c", "pass"]
BAD_START = [sys.executable, "-c", "raise SystemExit(2)"]
#: A worker that runs until it is told to stop (SIGTERM ends it).
RUNS = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.mark.parametrize(
    ("crashes_at_ms", "looping"),
    [
        ([0, 100], False),  # 2 of 3
        ([0, 100, 200], True),
        ([0, 600, 1200], False),  # the first left the 1 s window before the third
        ([0, 600, 1200, 1500], True),  # 600, 1200 and 1500 are within 1 s
        ([0, 1000, 2000], False),  # exactly a window apart: the older one is out
        ([0, 500, 999], True),  # just within a window
    ],
)
def test_a_slot_loops_at_its_max_crashes_within_the_window(crashes_at_ms: list[int], looping: bool) -> None:
    window = CrashWindow(max_crashes=3, window_ms=1000)
    counts = [window.record(at) for at in crashes_at_ms]
    assert window.looping is looping
    assert counts[-1] == len(window.crashes_ms) and (counts[-1] >= 3) is looping


def test_with_one_crash_allowed_the_first_crash_is_a_loop() -> None:
    window = CrashWindow(max_crashes=1, window_ms=1000)
    assert not window.looping
    assert window.record(5) == 1 and window.looping


@pytest.mark.parametrize(
    ("code", "lived_s", "reason"),
    [
        (1, 0.34, "exited with code 1 after 0.3 s"),
        (0, 3600, "exited with code 0 after 3600.0 s"),
        (-9, 12, "killed by SIGKILL after 12.0 s"),
        (-15, 1, "killed by SIGTERM after 1.0 s"),
        (-99, 1, "killed by signal 99 after 1.0 s"),
    ],
)
def test_an_exit_is_put_in_words(code: int, lived_s: float, reason: str) -> None:
    assert exit_reason(code, lived_s=lived_s) == reason


class Recorded:
    """What the supervisor reports through ``on_change``: (slot, state, restarts, last exit reason)."""

    def __init__(self) -> None:
        self.changes: list[tuple[int, str, int, str | None]] = []
        self._lock = threading.Lock()

    def __call__(self, slot: Slot) -> None:
        with self._lock:
            self.changes.append((slot.number, slot.state, slot.restarts, slot.last_exit_reason))

    def states(self, number: int) -> list[str]:
        with self._lock:
            return [state for slot, state, _, _ in self.changes if slot == number]


Run = Callable[..., tuple[Supervisor, Recorded, list[int]]]


@pytest.fixture
def run_supervisor() -> Iterator[Run]:
    """Starts ``Supervisor.run`` on a thread (its result, once it returns, in the list it hands back);
    stops it and waits for it at the end of the test."""
    started: list[tuple[Supervisor, threading.Thread]] = []

    def run(commands: list[list[str]], **options: Any) -> tuple[Supervisor, Recorded, list[int]]:
        recorded = Recorded()
        supervisor = Supervisor(commands, grace_s=10, max_restart_delay_s=0.01, on_change=recorded, **options)
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(supervisor.run()))
        thread.start()
        started.append((supervisor, thread))
        return supervisor, recorded, result

    yield run
    for supervisor, thread in started:
        supervisor.stop()
        thread.join(timeout=30)


def test_a_crash_looping_slot_is_stopped_after_its_max_crashes_and_its_sibling_keeps_running(
    run_supervisor: Run,
) -> None:
    supervisor, recorded, result = run_supervisor([CRASH, RUNS], max_crashes=3, crash_window_ms=60_000)
    wait_until(lambda: CRASH_LOOP in recorded.states(0), timeout_s=20, what="the crash loop to be stopped")
    assert recorded.states(0) == [RUNNING, RESTARTING, RUNNING, RESTARTING, RUNNING, CRASH_LOOP]
    crashed, sibling = supervisor.slots
    assert (crashed.restarts, crashed.last_exit_code) == (2, 1)
    assert crashed.last_exit_reason.startswith("exited with code 1 after")
    assert sibling.process.poll() is None and recorded.states(1) == [RUNNING]
    assert result == [], "the supervisor goes on with its other slot"
    supervisor.stop()
    wait_until(lambda: result, timeout_s=20, what="the supervisor to stop")
    assert result == [0]
    assert recorded.states(1) == [RUNNING], "a stop request leaves the rows as they are, to be deleted"


def test_a_clean_exit_the_supervisor_did_not_ask_for_counts_and_once_every_slot_loops_it_exits(
    run_supervisor: Run,
) -> None:
    supervisor, _, result = run_supervisor([CLEAN_EXIT, CRASH], max_crashes=2, crash_window_ms=60_000)
    wait_until(lambda: result, timeout_s=20, what="the supervisor to give up")
    assert result == [EXIT_CRASH_LOOP]
    assert [slot.state for slot in supervisor.slots] == [CRASH_LOOP, CRASH_LOOP]
    assert supervisor.slots[0].last_exit_reason.startswith("exited with code 0 after")


def test_exit_code_2_is_not_restarted_and_stops_every_slot(run_supervisor: Run) -> None:
    supervisor, recorded, result = run_supervisor([BAD_START, RUNS], max_crashes=5)
    wait_until(lambda: result, timeout_s=20, what="the supervisor to give up")
    assert result == [1]
    assert recorded.states(0) == [RUNNING, STOPPED] and recorded.states(1) == [RUNNING, STOPPED]
    assert supervisor.slots[0].last_exit_reason.startswith("exited with code 2 after")
    assert supervisor.slots[1].last_exit_reason.startswith("killed by SIGTERM after")
    assert supervisor.slots[1].process.poll() is not None, "no worker is left behind"


def test_a_worker_that_asked_to_be_replaced_is_started_again_and_that_is_no_crash(
    run_supervisor: Run, tmp_path: Path
) -> None:
    # The first run asks as middleware.serving.process_replacement does (for its own pid: here it is its
    # own master), then exits with code 1; the replacement runs on until the test stops it.
    asks = f"""
import os, pathlib, sys, time
from middleware.serving.process_replacement import request_path
directory = pathlib.Path({str(tmp_path)!r})
if (directory / "asked").exists():
    time.sleep(120)
(directory / "asked").touch()
request_path(directory, os.getpid()).write_text("recycled: it has run 4 jobs")
sys.exit(1)
"""
    supervisor, recorded, result = run_supervisor([[sys.executable, "-c", asks]], max_crashes=1, requests_dir=tmp_path)
    wait_until(lambda: recorded.states(0) == [RUNNING, RESTARTING, RUNNING], timeout_s=20, what="the replacement")
    [slot] = supervisor.slots
    assert slot.crashes.crashes_ms == [], "max_crashes=1: counted as a crash, it would be stopped"
    assert slot.last_exit_reason.startswith("replaced after ") and slot.last_exit_reason.endswith(
        ": recycled: it has run 4 jobs"
    )
    assert list(tmp_path.glob("*.replace")) == [], "the request is taken once"
    assert result == []


def slot_of(number: int, *, state: str = RUNNING) -> Slot:
    """A slot whose worker has run (and exited), in ``state``."""
    slot = Slot(number, RUNS, CrashWindow(max_crashes=3, window_ms=1000), state=state)
    slot.process = subprocess.Popen(["true"])
    slot.process.wait()
    slot.started_at_utc = datetime.now(UTC)
    return slot


def test_the_recorder_writes_each_change_and_a_clean_stop_deletes_the_rows(database: Database) -> None:
    recorder = SlotRecorder(database, queues=["b", "a"], host="h1", supervisor_pid=7, retry_s=0.05)
    slot = slot_of(0)
    recorder.record(slot)
    recorder.record(slot_of(1))
    wait_until(lambda: len(list_worker_slots(database)) == 2, timeout_s=10, what="the rows")
    slot.state, slot.restarts, slot.last_exit_code, slot.last_exit_reason = CRASH_LOOP, 4, 1, "exited with code 1"
    recorder.record(slot)
    wait_until(lambda: list_worker_slots(database)[0]["state"] == CRASH_LOOP, timeout_s=10, what="the slot's new state")
    [row, _] = list_worker_slots(database)
    assert {name: row[name] for name in ("host", "supervisor_pid", "slot", "queues", "restarts", "last_exit_code")} == {
        "host": "h1",
        "supervisor_pid": 7,
        "slot": 0,
        "queues": ["a", "b"],
        "restarts": 4,
        "last_exit_code": 1,
    }
    recorder.close(forget=True)
    assert list_worker_slots(database) == []


def test_a_new_supervisor_replaces_the_rows_of_gone_ones_for_the_same_queues_only(database: Database) -> None:
    gone, gone_other = subprocess.Popen(["true"]), subprocess.Popen(["true"])
    alive = subprocess.Popen(RUNS)
    gone.wait()  # its pid runs nothing now
    gone_other.wait()
    try:
        for supervisor_pid, queues in [(alive.pid, ["a"]), (gone.pid, ["a"]), (gone_other.pid, ["other"])]:
            earlier = SlotRecorder(database, queues=queues, host="h1", supervisor_pid=supervisor_pid)
            earlier.record(slot_of(0, state=CRASH_LOOP))
            earlier.close(forget=False)
        recorder = SlotRecorder(database, queues=["a"], host="h1", supervisor_pid=os.getpid())
        recorder.record(slot_of(0))
        recorder.close(forget=False)
    finally:
        alive.kill()
        alive.wait()
    assert sorted((row["supervisor_pid"], tuple(row["queues"])) for row in list_worker_slots(database)) == sorted(
        [(alive.pid, ("a",)), (gone_other.pid, ("other",)), (os.getpid(), ("a",))]
    )


def test_a_database_outage_is_logged_once_and_the_rows_are_written_once_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = Database(f"sqlite:///{tmp_path / 'no-schema-yet.sqlite3'}")  # every write fails: no table
    caplog.set_level(logging.INFO, logger="ops.supervisor")
    recorder = SlotRecorder(database, queues=[], host="h1", supervisor_pid=7, retry_s=0.05)
    for _ in range(3):
        recorder.record(slot_of(0))
    wait_until(lambda: "Could not record" in caplog.text, timeout_s=10, what="the outage warning")
    recorder.record(slot_of(1))  # never blocks, whatever the database does
    worker_slots.create(database.engine)
    wait_until(lambda: len(list_worker_slots(database)) == 2, timeout_s=10, what="the rows, once the table is there")
    recorder.close(forget=False)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "The workers are supervised as usual." in warnings[0].getMessage()
    assert "Recording the worker slots in the database again." in caplog.text
    database.dispose()


def row(**changes: Any) -> dict[str, Any]:
    return {
        "host": "h1",
        "supervisor_pid": os.getpid(),
        "slot": 0,
        "queues": [],
        "pid": None,
        "started_at": datetime.now(UTC) - timedelta(seconds=90),
        "restarts": 0,
        "last_exit_code": None,
        "last_exit_reason": None,
        "state": RUNNING,
        "updated_at": datetime.now(UTC),
        **changes,
    }


def test_status_reads_uptime_and_the_rss_of_a_running_slots_process_tree_from_proc() -> None:
    # A master with a child, as a dramatiq master has its worker process.
    master = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])
    try:
        wait_until(lambda: _commands(_children(master.pid)) == ["sleep"], timeout_s=10, what="the child")
        now = datetime.now(UTC)
        running, gone, elsewhere, stopped = slot_status(
            [
                row(pid=master.pid),
                row(slot=1, pid=2**22 + 1),  # no such process
                row(host="h2", slot=2, pid=master.pid),
                row(slot=3, pid=master.pid, state=CRASH_LOOP),
            ],
            host="h1",
            now=now,
        )
        [child] = _children(master.pid)
        assert running["rss_bytes"] > _rss(master.pid), "the child's memory is counted"
        wait_until(  # a freshly exec'd child may still be growing between two reads
            lambda: process_tree_rss_bytes(master.pid) == _rss(master.pid) + _rss(child),
            timeout_s=10,
            what="the tree's RSS to be the sum of its processes'",
        )
        assert running["uptime_s"] == pytest.approx(90, abs=1) and running["supervisor_running"] is True
        assert (gone["rss_bytes"], gone["uptime_s"]) == (None, None)
        assert (elsewhere["rss_bytes"], elsewhere["supervisor_running"]) == (None, None), "another host's /proc"
        assert stopped["rss_bytes"] is None
    finally:
        master.kill()
        master.wait()
    assert process_tree_rss_bytes(master.pid) is None


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _commands(pids: list[int]) -> list[str]:
    return [Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids]


def _rss(pid: int) -> int:
    [line] = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:")]
    return int(line.split()[1]) * 1024
