"""Status writes on SQLite queue on a lock file beside the database, shared by every worker process."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime

from middleware.job_status import get_job
from middleware.storage.database import Database
from middleware.storage.group_commit import Write
from middleware.storage.status_writer import ENQUEUE, StatusWriter, row_values

HOLD_THE_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


def test_a_status_write_waits_while_another_process_holds_the_lock_and_goes_on_once_it_is_released(
    database: Database,
) -> None:
    writer = StatusWriter(database)
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, f"{database.engine.url.database}-writer.lock"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "held"
        committed = threading.Event()

        def write() -> None:
            writer.commit([Write(ENQUEUE, row_values("m-1", "transcribe", "audio", "queued", datetime.now(UTC)))])
            committed.set()

        thread = threading.Thread(target=write)
        thread.start()
        assert not committed.wait(timeout=0.3), "the write did not wait for the other process's lock"
        other.communicate(input="\n", timeout=10)
        assert committed.wait(timeout=10)
        thread.join()
    finally:
        other.kill()
        other.wait()
    assert get_job(database, "m-1")["status"] == "queued"
