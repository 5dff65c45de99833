"""The core promise: a long job whose worker is SIGKILLed resumes from its last saved segment.

Real ``dramatiq actors`` processes, the real pocketsphinx engine, real brokers and databases.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.recordings import make_long_recording
from tests.harness import WorkerProcess, run_python, wait_until
from tests.transcripts import Transcripts

SEGMENT_MS = 3_000
RECORDING_S = 30
EXPECTED_SEGMENTS = RECORDING_S * 1000 // SEGMENT_MS


@pytest.fixture
def env(broker_env: dict[str, str], database_url: str) -> dict[str, str]:
    return {
        **broker_env,
        "DATABASE_URL": database_url,
        "TRANSCRIPTION_ENGINE": "pocketsphinx",
        "TRANSCRIPTION_SEGMENT_MS": str(SEGMENT_MS),
    }


@pytest.fixture
def transcripts(database_url: str) -> Iterator[Transcripts]:
    transcripts = Transcripts(database_url)
    yield transcripts


def start_mid_job(env: dict[str, str], transcripts: Transcripts, meeting: str, tmp_path: Path) -> WorkerProcess:
    """Start a worker, send a 30 s recording, and return once two of its segments are stored."""
    recording = make_long_recording(tmp_path / "meeting.wav", seconds=RECORDING_S)
    worker = WorkerProcess(env, log_path=tmp_path / "first-worker.log")
    worker.wait_ready()
    code = f"from actors.transcription import transcribe; transcribe.send({meeting!r}, {str(recording)!r})"
    sent = run_python(env, code)
    assert sent.returncode == 0, sent.stderr
    wait_until(
        lambda: len(transcripts.segment_indexes(meeting)) >= 2,
        timeout_s=60,
        what="two segments to be stored",
        interval_s=0.05,
    )
    return worker


@pytest.mark.parametrize(
    ("broker_env", "database_url"), [("redis", "postgresql"), ("rabbitmq", "sqlite")], indirect=True
)
def test_a_killed_transcription_resumes_from_its_checkpoint(
    env: dict[str, str], transcripts: Transcripts, tmp_path: Path
) -> None:
    meeting = f"killed-{uuid.uuid4().hex[:8]}"
    first = start_mid_job(env, transcripts, meeting, tmp_path)
    second = None
    try:
        first.kill_worker_child()
        killed_at = time.monotonic()
        stored_at_kill = len(transcripts.segment_indexes(meeting))
        assert stored_at_kill < EXPECTED_SEGMENTS, "the job must be killed mid-way"
        first.process.wait(timeout=30)  # the dramatiq master exits when its child dies

        second = WorkerProcess(env, log_path=tmp_path / "second-worker.log")
        second.wait_ready()
        resumed = wait_until(
            lambda: (row := transcripts.checkpoint(meeting)) is not None and row.resumes and row,
            timeout_s=90,
            what="the job to resume",
            interval_s=0.05,
        )
        recovery_s = time.monotonic() - killed_at
        wait_until(lambda: transcripts.completed(meeting), timeout_s=120, what="the transcript to complete")
    finally:
        first.stop()
        if second is not None:
            second.stop()

    indexes = transcripts.segment_indexes(meeting)
    assert indexes == list(range(EXPECTED_SEGMENTS)), "contiguous segments 0..n-1, none twice"
    assert resumed.resumes == 1
    assert resumed.resumed_from["idx"] >= stored_at_kill - 1 >= 1, "resumed from its checkpoint, not from zero"
    kind = f"{env['BROKER_URL'].split(':')[0]}+{env['DATABASE_URL'].split(':')[0]}"
    print(
        f"\n{kind}: killed after {stored_at_kill} of {EXPECTED_SEGMENTS} segments; resumed at segment "
        f"{resumed.resumed_from['idx'] + 1}, {recovery_s:.1f} s after the kill"
    )


@pytest.mark.parametrize(("broker_env", "database_url"), [("redis", "sqlite")], indirect=True)
def test_a_deploy_hands_the_job_back_at_once_and_it_continues_without_spending_a_retry(
    env: dict[str, str], transcripts: Transcripts, tmp_path: Path
) -> None:
    meeting = f"deployed-{uuid.uuid4().hex[:8]}"
    first = start_mid_job(env, transcripts, meeting, tmp_path)
    second = None
    try:
        stopping_at = time.monotonic()
        assert first.stop(timeout_s=30) == 0, first.log()
        stop_s = time.monotonic() - stopping_at
        interrupted = [event for event in first.events() if event["event"] == "job.interrupted"]
        assert [event["reason"] for event in interrupted] == ["Shutdown"], "handed back without spending an attempt"
        stored_at_stop = len(transcripts.segment_indexes(meeting))

        second = WorkerProcess(env, log_path=tmp_path / "second-worker.log")
        second.wait_ready()
        wait_until(lambda: transcripts.completed(meeting), timeout_s=120, what="the transcript to complete")
    finally:
        first.stop()
        if second is not None:
            second.stop()

    row = transcripts.checkpoint(meeting)
    assert transcripts.segment_indexes(meeting) == list(range(EXPECTED_SEGMENTS))
    assert row.resumes == 1 and row.resumed_from["idx"] == stored_at_stop - 1
    events = [event["event"] for event in first.events() + second.events()]
    assert "job.retry" not in events and "job.failed" not in events, "a deploy must not spend a retry"
    print(f"\nSIGTERM: worker stopped in {stop_s:.1f} s with the job handed back at segment {stored_at_stop}")
