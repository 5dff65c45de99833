"""A checkpoint save on SQLite and PostgreSQL: what the prepared upsert writes, first and on each later save,
and that the job's progress moves in the same transaction (or not at all, with the output)."""

from __future__ import annotations

from datetime import UTC, datetime

import dramatiq
import pytest
from sqlalchemy import insert, select

from actors.tables import transcript_segments
from middleware.checkpoints import Checkpoint, job_checkpoints
from middleware.job_status import PROCESSING, job_status
from middleware.storage.database import Database


def test_each_save_moves_the_position_and_progress_with_the_output(database_url: str) -> None:
    database = Database(database_url)
    message = dramatiq.Message(queue_name="long", actor_name="transcribe", args=("m-1",), kwargs={}, options={})
    try:
        started = datetime.now(UTC)
        with database.transaction() as connection:
            connection.execute(
                insert(job_status).values(
                    message_id=message.message_id,
                    actor_name="transcribe",
                    queue_name="long",
                    status=PROCESSING,
                    attempts=1,
                    unfinished_deliveries=1,
                    started_at=started,
                    updated_at=started,
                )
            )
        checkpoint = Checkpoint(database=database, key="meeting-1", message=message)
        assert checkpoint.position is None
        for idx in range(3):
            with checkpoint.saving({"idx": idx, "segment_ms": 30_000}, progress=(idx + 1) / 4) as connection:
                connection.execute(
                    insert(transcript_segments).values(
                        meeting_id="meeting-1",
                        idx=idx,
                        start_ms=idx * 30_000,
                        end_ms=(idx + 1) * 30_000,
                        text=f"s{idx}",
                    )
                )
        with pytest.raises(RuntimeError), checkpoint.saving({"idx": 3}, progress=1.0) as connection:
            connection.execute(
                insert(transcript_segments).values(
                    meeting_id="meeting-1",
                    idx=3,
                    start_ms=90_000,
                    end_ms=120_000,
                    text="s3",
                )
            )
            raise RuntimeError("the segment's output failed: neither it nor the position commits")

        with database.engine.connect() as connection:
            row = connection.execute(select(job_checkpoints)).one()
            progress = connection.scalar(select(job_status.c.progress))
            segments = connection.scalars(select(transcript_segments.c.idx).order_by(transcript_segments.c.idx)).all()
        assert (row.key, row.actor_name, row.message_id) == ("meeting-1", "transcribe", message.message_id)
        assert (row.position, row.progress, row.saves, row.resumes) == ({"idx": 2, "segment_ms": 30_000}, 0.75, 3, 0)
        assert row.updated_at > row.created_at  # created by the first save, kept by the later ones
        assert row.message["args"] == ["m-1"] and row.message["message_id"] == message.message_id
        assert (progress, segments) == (0.75, [0, 1, 2])

        again = Checkpoint(database=database, key="meeting-1", message=message)
        assert again.position == {"idx": 2, "segment_ms": 30_000} and again.resumed
    finally:
        database.dispose()
