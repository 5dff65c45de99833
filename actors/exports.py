"""export_transcript: a meeting's transcript exported as text, a page at a time, resuming at its last page.

The second long job of the project, written as a :class:`~middleware.CheckpointedActor`:

1. ``export_transcript.send(meeting_id, page_size=...)`` pages through the meeting's
   ``transcript_segments`` by segment index (keyset pagination: a page never shifts, whatever
   is added after it).
2. Each page is rendered as text (``[mm:ss] text`` lines) outside any transaction, then stored in
   ``transcript_exports`` in the same transaction as the checkpoint, whose cursor is the page's
   last segment index. A killed or interrupted export continues at the next page.
3. One export per meeting at a time (its checkpoint key is the meeting); once complete, sending
   it again is skipped as completed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from actors.system import current_system
from actors.tables import transcript_exports, transcript_segments
from middleware import CheckpointedActor

QUEUE = "exports"
DEFAULT_PAGE_SIZE = 200


class export_transcript(CheckpointedActor):  # named as a function: an actor is called like one
    class Meta:
        queue_name = QUEUE
        max_retries = 5

    def checkpoint_key(self, meeting_id: str, page_size: int = DEFAULT_PAGE_SIZE) -> str:
        return f"export:{meeting_id}"

    def build_items(
        self, meeting_id: str, page_size: int = DEFAULT_PAGE_SIZE, *, cursor: int | None
    ) -> Iterator[tuple[int, list[Any]]]:
        last_idx = -1 if cursor is None else cursor
        database = current_system().database
        while True:
            query = (
                select(transcript_segments.c.idx, transcript_segments.c.start_ms, transcript_segments.c.text)
                .where(transcript_segments.c.meeting_id == meeting_id, transcript_segments.c.idx > last_idx)
                .order_by(transcript_segments.c.idx)
                .limit(page_size)
            )
            with database.engine.connect() as connection:
                page = list(connection.execute(query))
            if not page:
                return
            last_idx = page[-1].idx
            yield last_idx, page

    def each_item(self, page: list[Any], meeting_id: str, page_size: int = DEFAULT_PAGE_SIZE) -> dict[str, Any]:
        lines = [f"[{row.start_ms // 60_000:02d}:{row.start_ms // 1000 % 60:02d}] {row.text}" for row in page]
        return {"first_idx": page[0].idx, "last_idx": page[-1].idx, "content": "\n".join(lines)}

    def save_item(
        self, output: dict[str, Any], meeting_id: str, page_size: int = DEFAULT_PAGE_SIZE, *, connection: Connection
    ) -> None:
        connection.execute(insert(transcript_exports).values(meeting_id=meeting_id, **output))
