"""Fixtures shared by the integration tests (the session-wide ones are in ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from middleware.storage.database import Database


@pytest.fixture
def database(sqlite_url: str) -> Iterator[Database]:
    """A migrated SQLite database of this test's own, its engine disposed of afterwards."""
    database = Database(sqlite_url)
    yield database
    database.dispose()
