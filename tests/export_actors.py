"""A slowed-down export for the kill-and-resume test: ``dramatiq actors tests.export_actors``.

The same actor as ``actors.exports.export_transcript``, reused by subclassing it: each page
takes ``PAGE_DELAY_S`` of work, so a test can kill the worker in the middle of an export.
"""

from __future__ import annotations

import time
from typing import Any

import actors  # noqa: F401  (configures the broker before this actor is declared)
from actors.exports import export_transcript

PAGE_DELAY_S = 0.25


class slow_export_transcript(type(export_transcript)):  # named as a function: an actor is called like one
    def each_item(self, page: list[Any], meeting_id: str, page_size: int = 200) -> dict[str, Any]:
        time.sleep(PAGE_DELAY_S)  # the work a real export spends per page
        return super().each_item(page, meeting_id, page_size)
