"""The deadline board that worker processes share with their hard-time-limit watcher."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from middleware.hard_time_limits import DeadlineBoard, RunningJob, board_path, overdue_jobs, read_board
from middleware.serving.process_replacement import dramatiq_master_pid


def test_a_board_holds_each_busy_threads_deadline_and_message_id(tmp_path: Path) -> None:
    board = DeadlineBoard(board_path(tmp_path, 1, os.getpid()), slots=3)
    first, third = RunningJob("first", "transcription", "transcribe"), RunningJob("third", "exports", "export")
    board.set(0, 100.5, first)
    board.set(2, 200.0, third)
    assert read_board(board.path) == [(100.5, first), (200.0, third)]
    board.clear(0)
    assert read_board(board.path) == [(200.0, third)]
    board.close()
    assert not board.path.exists()


def test_only_jobs_past_their_hard_deadline_are_overdue(tmp_path: Path) -> None:
    board = DeadlineBoard(board_path(tmp_path, 7, os.getpid()), slots=2)
    now = time.time()
    stuck = RunningJob("stuck", "q", "a")
    board.set(0, now - 2.0, stuck)
    board.set(1, now + 60.0, RunningJob("running", "q", "a"))
    assert list(overdue_jobs(tmp_path, 7, now)) == [(os.getpid(), 2.0, stuck)]
    assert list(overdue_jobs(tmp_path, 8, now)) == [], "another master's workers are not this watcher's"
    board.close()


def test_the_board_of_a_process_that_is_gone_is_removed_not_acted_on(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    board = DeadlineBoard(board_path(tmp_path, 7, gone.pid), slots=1)
    board.set(0, time.time() - 10, RunningJob("orphan", "q", "a"))
    assert list(overdue_jobs(tmp_path, 7, time.time())) == []
    assert not board.path.exists()


def test_a_process_not_started_by_the_dramatiq_command_has_no_master_to_reload() -> None:
    assert dramatiq_master_pid() is None  # pytest started this one
