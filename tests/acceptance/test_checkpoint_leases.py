"""A worker taken for dead while its job still runs: the job moves on elsewhere, and the old run
can write nothing more (the checkpoint's lease, middleware/checkpoints.py).

Two real ``dramatiq actors`` commands on Redis with a 3 s liveness window. The one running a
checkpointed job is frozen whole (SIGSTOP of its master, its heartbeat process and its worker:
a paused VM, a partitioned host), so its heartbeats stop and the other one's keeper hands the job
back; it resumes there from the checkpoint. Then the frozen one is thawed, mid-job.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from sqlalchemy import create_engine, select

from actors.tables import transcript_segments
from middleware.checkpoints import job_checkpoints
from middleware.job_status import COMPLETED, job_status
from tests.acceptance.conftest import WINDOW_MS
from tests.harness import WorkerProcess, run_python, wait_until

STEPS = 16
STEP_S = 0.4


@pytest.mark.parametrize(("broker_env", "database_url"), [("redis", "postgresql")], indirect=True)
def test_a_run_taken_for_dead_loses_its_checkpoint_and_writes_nothing_more(
    two_workers_env: dict[str, str], database_url: str, two_workers: list[WorkerProcess]
) -> None:
    engine = create_engine(database_url)
    job = f"lease-{uuid.uuid4().hex[:8]}"

    def writers() -> list[tuple[int, int]]:
        query = select(transcript_segments.c.idx, transcript_segments.c.text).where(
            transcript_segments.c.meeting_id == job
        )
        with engine.connect() as connection:
            return [(idx, int(pid)) for idx, pid in connection.execute(query.order_by(transcript_segments.c.idx))]

    sent = run_python(
        two_workers_env,
        f"from tests.chaos_actors import checkpointed_rows; "
        f"print(checkpointed_rows.send({job!r}, {STEPS}, {STEP_S}).message_id)",
    )
    assert sent.returncode == 0, sent.stderr
    message_id = sent.stdout.strip()
    try:
        first_pid = wait_until(
            lambda: len(rows := writers()) >= 2 and rows[0][1], timeout_s=30, what="two steps stored", interval_s=0.05
        )
        frozen = next(worker for worker in two_workers if first_pid in worker.children())
        other = next(worker for worker in two_workers if worker is not frozen)
        os.killpg(frozen.process.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        wait_until(
            lambda: any(
                event["event"] == "job.start" and event["message_id"] == message_id for event in other.events()
            ),
            timeout_s=30,
            what="the other worker to take the job over",
            interval_s=0.05,
        )
        taken_over_s = time.monotonic() - frozen_at
    finally:
        os.killpg(frozen.process.pid, signal.SIGCONT)
    thawed_at = time.monotonic()
    wait_until(
        lambda: any(event["event"] == "checkpoint.superseded" for event in frozen.events()),
        timeout_s=30,
        what="the thawed run to find out it lost the checkpoint",
        interval_s=0.05,
    )
    stopped_s = time.monotonic() - thawed_at
    with engine.connect() as connection:
        wait_until(
            lambda: connection.scalar(
                select(job_checkpoints.c.completed_at).where(job_checkpoints.c.message_id == message_id)
            ),
            timeout_s=60,
            what="the job to complete",
        )
        status = connection.execute(select(job_status).where(job_status.c.message_id == message_id)).one()
    rows = writers()
    events = frozen.events() + other.events()
    engine.dispose()

    assert [idx for idx, _ in rows] == list(range(STEPS)), "every step once, none twice"
    pids = [pid for _, pid in rows]
    switch = pids.index(next(pid for pid in pids if pid != first_pid))
    assert set(pids[:switch]) == {first_pid} and first_pid not in pids[switch:], (
        f"the frozen run wrote nothing after the other took over: {pids}"
    )
    interrupted = [event["reason"] for event in frozen.events() if event["event"] == "job.interrupted"]
    assert interrupted == ["CheckpointSuperseded"]
    names = [event["event"] for event in events if event.get("message_id") == message_id]
    assert names.count("job.start") == 2, "the superseded run is not sent again: its message already runs"
    assert "job.retry" not in names and "job.failed" not in names, names
    assert (status.status, status.attempts) == (COMPLETED, 2)
    print(
        f"\nRedis+PostgreSQL, {WINDOW_MS} ms window: frozen after {switch} of {STEPS} steps; the other worker "
        f"took the job over {taken_over_s:.1f} s later; thawed, the old run stopped {stopped_s:.1f} s later, "
        f"at its next save"
    )
