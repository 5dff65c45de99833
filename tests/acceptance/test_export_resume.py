"""The second long job: a transcript export killed mid-run (SIGKILL) resumes at its next page.

Real ``dramatiq actors`` processes over Redis and SQLite; the export pages through 40 stored
segments two at a time, and the worker is killed once three pages are stored.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from actors.tables import transcript_exports, transcript_segments
from middleware.storage.database import Database
from middleware.storage.tables import job_checkpoints
from tests.harness import WorkerProcess, run_python, wait_until

SEGMENTS = 40
PAGE_SIZE = 2
PAGES = SEGMENTS // PAGE_SIZE


@pytest.mark.parametrize(("broker_env", "database_url"), [("redis", "sqlite")], indirect=True)
def test_a_killed_export_resumes_at_its_next_page(
    broker_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    env = {**broker_env, "DATABASE_URL": database_url}
    meeting = f"export-{uuid.uuid4().hex[:8]}"
    database = Database(database_url)
    with database.transaction() as connection:
        connection.execute(
            insert(transcript_segments),
            [
                {
                    "meeting_id": meeting,
                    "idx": idx,
                    "start_ms": idx * 3_000,
                    "end_ms": idx * 3_000 + 3_000,
                    "text": f"segment {idx}",
                }
                for idx in range(SEGMENTS)
            ],
        )

    def stored_pages() -> list[int]:
        with database.engine.connect() as connection:
            query = select(transcript_exports.c.first_idx).where(transcript_exports.c.meeting_id == meeting)
            return sorted(connection.scalars(query))

    first = WorkerProcess(env, log_path=tmp_path / "first.log", modules=("tests.export_actors",))
    second = None
    try:
        first.wait_ready()
        code = f"from tests.export_actors import slow_export_transcript as e; e.send({meeting!r}, {PAGE_SIZE})"
        sent = run_python(env, code)
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: len(stored_pages()) >= 3, timeout_s=60, what="three pages stored", interval_s=0.05)
        first.kill_worker_child()
        killed_at = len(stored_pages())
        assert killed_at < PAGES, "the export finished before the kill: the test proved nothing"
        second = WorkerProcess(env, log_path=tmp_path / "second.log", modules=("tests.export_actors",))
        second.wait_ready()
        wait_until(lambda: len(stored_pages()) == PAGES, timeout_s=90, what="every page stored")
        with database.engine.connect() as connection:
            checkpoint = connection.execute(
                select(job_checkpoints).where(job_checkpoints.c.key == f"export:{meeting}")
            ).one()
        resumed = [event for event in second.events() if event.get("event") == "checkpoint.resumed"]
    finally:
        for worker in (first, second):
            if worker is not None:
                worker.stop()
        database.dispose()

    assert stored_pages() == list(range(0, SEGMENTS, PAGE_SIZE)), "every page once, none twice, none missing"
    assert resumed and resumed[0]["position"] >= killed_at * PAGE_SIZE - 1, "the second run resumed, not from zero"
    assert checkpoint.position == SEGMENTS - 1 and checkpoint.resumes >= 1
    wait_until(lambda: _completed(database_url, meeting), timeout_s=30, what="the checkpoint marked complete")


def _completed(database_url: str, meeting: str) -> bool:
    database = Database(database_url)
    try:
        with database.engine.connect() as connection:
            query = select(job_checkpoints.c.completed_at).where(job_checkpoints.c.key == f"export:{meeting}")
            return connection.scalar(query) is not None
    finally:
        database.dispose()
