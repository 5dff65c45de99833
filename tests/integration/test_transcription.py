"""The transcription job end to end on real brokers and databases, with real worker processes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from middleware.job_status import get_job
from middleware.storage.database import Database
from ops.recordings import make_long_recording
from tests.harness import WorkerProcess, run_python, wait_until
from tests.http_sink import HttpSink
from tests.transcripts import Transcripts


@pytest.fixture
def env(broker_env: dict[str, str], database_url: str) -> dict[str, str]:
    return {
        **broker_env,
        "DATABASE_URL": database_url,
        "TRANSCRIPTION_ENGINE": "echo",
        "TRANSCRIPTION_SEGMENT_MS": "2000",
        "LARGE_THRESHOLD_MS": "10000",
    }


@pytest.fixture
def transcripts(env: dict[str, str]) -> Iterator[Transcripts]:
    transcripts = Transcripts(env["DATABASE_URL"])
    yield transcripts
    transcripts.close()


def send_transcriptions(env: dict[str, str], jobs: dict[str, Path]) -> dict[str, str]:
    """Send from a separate app process, as an app would; returns each meeting's queue."""
    code = (
        "import json, sys\n"
        "from actors.transcription import transcribe\n"
        f"jobs = {json.dumps({meeting: str(path) for meeting, path in jobs.items()})}\n"
        "print(json.dumps({m: transcribe.send(m, uri).queue_name for m, uri in jobs.items()}))\n"
    )
    result = run_python(env, code)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_recordings_are_transcribed_and_routed_by_duration(
    env: dict[str, str], transcripts: Transcripts, tmp_path: Path
) -> None:
    short, long = f"short-{uuid.uuid4().hex[:8]}", f"long-{uuid.uuid4().hex[:8]}"
    recordings = {
        short: make_long_recording(tmp_path / "short.wav", seconds=7, channels=2, sample_rate=44_100),
        long: make_long_recording(tmp_path / "long.wav", seconds=13),
    }
    worker = WorkerProcess(env, threads=2, log_path=tmp_path / "worker.log")
    try:
        worker.wait_ready()
        queues = send_transcriptions(env, recordings)
        assert queues == {short: "transcription", long: "transcription-large"}
        for meeting in (short, long):
            wait_until(lambda m=meeting: transcripts.completed(m), timeout_s=60, what=f"{meeting} to complete")
    finally:
        worker.stop()

    assert transcripts.segment_indexes(short) == [0, 1, 2, 3]  # 7 s in 2 s segments
    assert transcripts.segment_indexes(long) == list(range(7))  # 13 s
    last = transcripts.segments(long)[-1]
    assert (last.start_ms, last.end_ms) == (12_000, 13_000)
    assert transcripts.checkpoint(long).progress == 1.0


def test_a_worker_serves_only_the_queues_it_is_given(
    env: dict[str, str], transcripts: Transcripts, tmp_path: Path
) -> None:
    short, long = f"short-{uuid.uuid4().hex[:8]}", f"long-{uuid.uuid4().hex[:8]}"
    recordings = {
        short: make_long_recording(tmp_path / "short.wav", seconds=3),
        long: make_long_recording(tmp_path / "long.wav", seconds=11),
    }
    worker = WorkerProcess(env, queues=["transcription-large"], log_path=tmp_path / "worker.log")
    try:
        worker.wait_ready()
        send_transcriptions(env, recordings)
        wait_until(lambda: transcripts.completed(long), timeout_s=60, what="the large job to complete")
        assert transcripts.checkpoint(short) is None, "the regular queue has no worker, so nothing started it"
    finally:
        worker.stop()


def test_a_completed_transcript_calls_back_once_even_when_sent_again(
    env: dict[str, str], transcripts: Transcripts, tmp_path: Path
) -> None:
    meeting = f"callback-{uuid.uuid4().hex[:8]}"
    recording = make_long_recording(tmp_path / "meeting.wav", seconds=5)
    worker = WorkerProcess(env, threads=2, log_path=tmp_path / "worker.log")
    with HttpSink() as sink:
        code = (
            "from actors.transcription import transcribe\n"
            f"print(transcribe.send({meeting!r}, {str(recording)!r}, callback_url={sink.url()!r}).message_id)\n"
        )
        try:
            worker.wait_ready()
            first = run_python(env, code)
            assert first.returncode == 0, first.stderr
            [request] = sink.wait_for_requests(1, timeout_s=60)
            again = run_python(env, code)
            assert again.returncode == 0, again.stderr
            second_id = again.stdout.split()[-1]
            database = Database(env["DATABASE_URL"])
            wait_until(
                lambda: (get_job(database, second_id) or {}).get("status") == "completed",
                timeout_s=30,
                what="the second job to be skipped as already complete",
            )
            database.dispose()
        finally:
            worker.stop()
        assert len(sink.requests) == 1, "one transcript, one notification"
    assert request.json == {"event": "transcript.ready", "meeting_id": meeting}
    assert request.headers["idempotency-key"] == f"transcript.ready:{meeting}"
    assert transcripts.segment_indexes(meeting) == [0, 1, 2]
