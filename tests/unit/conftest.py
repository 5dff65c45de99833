"""Fast tests: Dramatiq's StubBroker and an in-process worker over SQLite in a temporary file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import TimeLimit
from sqlalchemy import Column, Integer, MetaData, String, Table, UniqueConstraint

from actors.broker import build_middleware
from actors.settings import Settings
from middleware.retries import Retries
from middleware.storage.database import Database

test_metadata = MetaData()
outputs = Table(
    "outputs",
    test_metadata,
    Column("job", String(64), nullable=False),
    Column("item", Integer, nullable=False),
    UniqueConstraint("job", "item"),
)


@pytest.fixture
def database(sqlite_url: str) -> Iterator[Database]:
    """A migrated SQLite database of the test's own (the stack's boot check wants the current schema)."""
    database = Database(sqlite_url)
    test_metadata.create_all(database.engine)
    yield database
    database.dispose()


#: The stack's middleware whose timings are tuned for fast tests, rebuilt with the same collaborators:
#: time limits checked every 100 ms, retries after 10-50 ms.
_FAST = {
    TimeLimit: lambda middleware: TimeLimit(interval=100),
    Retries: lambda middleware: Retries(
        min_backoff=10,
        max_backoff=50,
        requeue_delay_ms=10,
        max_hand_backs_without_progress=middleware.max_hand_backs_without_progress,
        database_outages=middleware.database_outages,
    ),
}


@pytest.fixture
def stub_broker(database: Database, tmp_path: Path) -> Iterator[StubBroker]:
    """The production stack, as ``build_middleware`` builds it (its order is what the tests rely on),
    with only the timings of ``_FAST`` shortened."""
    settings = Settings(
        broker_url=None, database_url=database.url, state_dir=tmp_path, max_deliveries=3,
        large_threshold_ms=60_000, regular_time_limit_ms=5_000, large_time_limit_ms=50_000,
    )  # fmt: skip
    stack = build_middleware(settings, database, redis=False)
    broker = StubBroker(middleware=[_FAST.get(type(middleware), lambda same: same)(middleware) for middleware in stack])
    # Without process_boot the TimeLimit middleware never enforces limits (see the field notes).
    broker.emit_after("process_boot")
    yield broker
    broker.close()


@pytest.fixture
def stub_worker(stub_broker: StubBroker) -> Iterator[Worker]:
    worker = Worker(stub_broker, worker_timeout=50, worker_threads=2)
    worker.start()
    yield worker
    worker.stop()
