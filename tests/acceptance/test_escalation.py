"""A routed job that does not fit the regular queue's time limit continues on the large queue.

Real ``dramatiq actors`` workers: the real pocketsphinx engine on a spoken recording, and a job
whose one step fits neither limit (dead-lettered after a bounded number of deliveries).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from middleware.storage.tables import dead_letters, job_status
from ops.recordings import make_long_recording
from tests.harness import WorkerProcess, run_python, wait_until
from tests.transcripts import Transcripts


@pytest.mark.parametrize(("broker_env", "database_url"), [("redis", "postgresql")], indirect=True)
def test_a_70_s_recording_stopped_by_a_3_s_regular_limit_completes_on_the_large_queue(
    broker_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    env = {
        **broker_env,
        "DATABASE_URL": database_url,
        "TRANSCRIPTION_ENGINE": "pocketsphinx",
        "TRANSCRIPTION_SEGMENT_MS": "60000",
        "LARGE_THRESHOLD_MS": "600000",  # 70 s is "short": routed to the regular queue
        "REGULAR_TIME_LIMIT_MS": "3000",
        "LARGE_TIME_LIMIT_MS": "120000",
    }
    recording = make_long_recording(tmp_path / "meeting.wav", seconds=70)
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log")
    transcripts = Transcripts(database_url)
    try:
        worker.wait_ready()
        code = (
            f"from actors.transcription import transcribe; print(transcribe.send('m70', {str(recording)!r}).message_id)"
        )
        sent = run_python(env, code)
        assert sent.returncode == 0, sent.stderr
        message_id = sent.stdout.split()[-1]
        # One 60 s segment takes pocketsphinx about 24 s here: once on the regular queue, once more on the large.
        wait_until(lambda: transcripts.completed("m70"), timeout_s=180, what="the transcript", interval_s=0.5)
        segments = transcripts.segments("m70")
        with transcripts.engine.connect() as connection:
            job = connection.execute(select(job_status).where(job_status.c.message_id == message_id)).one()
    finally:
        worker.stop()
        transcripts.close()
    assert [(s.idx, s.start_ms, s.end_ms) for s in segments] == [(0, 0, 60_000), (1, 60_000, 70_000)]
    assert all(segment.text for segment in segments)
    assert (job.status, job.queue_name) == ("completed", "transcription-large")
    events = [event for event in worker.events() if event.get("message_id") == message_id]
    [escalated] = [event for event in events if event["event"] == "job.escalated"]
    assert (escalated["queue"], escalated["to_queue"], escalated["time_limit_ms"]) == (
        "transcription",
        "transcription-large",
        120_000,
    )
    starts = [event["queue"] for event in events if event["event"] == "job.start"]
    assert starts == ["transcription", "transcription-large"], "two deliveries: no attempt spent, no loop"


@pytest.mark.parametrize(("broker_env", "database_url"), [("rabbitmq", "sqlite")], indirect=True)
def test_a_step_too_long_for_the_large_limit_too_is_dead_lettered_after_bounded_deliveries(
    broker_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    env = {**broker_env, "DATABASE_URL": database_url, "REGULAR_TIME_LIMIT_MS": "1000", "LARGE_TIME_LIMIT_MS": "1000"}
    marker = tmp_path / "marker"
    worker = WorkerProcess(
        env, log_path=tmp_path / "worker.log", modules=("tests.chaos_actors",), queues=["chaos", "chaos-large"]
    )
    engine = create_engine(database_url)
    try:
        worker.wait_ready()
        sent = run_python(env, f"from tests.chaos_actors import routed_step; routed_step.send({str(marker)!r}, 60.0)")
        assert sent.returncode == 0, sent.stderr

        def dead_letter() -> object:
            with engine.connect() as connection:
                return connection.execute(select(dead_letters)).first()

        dead = wait_until(dead_letter, timeout_s=60, what="the job to be dead-lettered", interval_s=0.2)
    finally:
        worker.stop()
        engine.dispose()
    starts = marker.read_text().splitlines()
    assert starts == ["start chaos None", *["start chaos-large None"] * 3], "escalated once, then 3 tries"
    assert (dead.kind, dead.queue_name, dead.error_type) == ("time_limit", "chaos-large", "TimeLimitExceeded")
    assert dead.error_message == (
        "stopped by its time limit of 1 s 3 times in a row without saving a checkpoint, before its first "
        "checkpoint: one step does not fit the longest time limit it can run under"
    )
