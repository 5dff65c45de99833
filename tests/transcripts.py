"""Reading what the system wrote, from a test process, straight from the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, select

from actors.tables import transcript_segments
from middleware.checkpoints import job_checkpoints


class Transcripts:
    def __init__(self, database_url: str) -> None:
        self.engine = create_engine(database_url)

    def segment_indexes(self, meeting_id: str) -> list[int]:
        query = select(transcript_segments.c.idx).where(transcript_segments.c.meeting_id == meeting_id)
        with self.engine.connect() as connection:
            return list(connection.scalars(query.order_by(transcript_segments.c.idx)))

    def segments(self, meeting_id: str) -> list[Any]:
        query = select(transcript_segments).where(transcript_segments.c.meeting_id == meeting_id)
        with self.engine.connect() as connection:
            return list(connection.execute(query.order_by(transcript_segments.c.idx)))

    def checkpoint(self, meeting_id: str) -> Any | None:
        query = select(job_checkpoints).where(job_checkpoints.c.key == f"transcribe:{meeting_id}")
        with self.engine.connect() as connection:
            return connection.execute(query).first()

    def completed(self, meeting_id: str) -> bool:
        row = self.checkpoint(meeting_id)
        return row is not None and row.completed_at is not None

    def close(self) -> None:
        self.engine.dispose()
