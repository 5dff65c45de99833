"""Fast tests: Dramatiq's StubBroker and an in-process worker over SQLite in a temporary file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, ShutdownNotifications, TimeLimit
from sqlalchemy import Column, Integer, MetaData, String, Table, UniqueConstraint

from middleware.checkpoints import Checkpoints
from middleware.dead_letters import DeadLetters
from middleware.idempotency import Idempotency
from middleware.job_logs import JobLogs
from middleware.job_status import JobStatus
from middleware.retries import Retries
from middleware.routing import DurationRouting
from middleware.storage.database import Database, metadata

test_metadata = MetaData()
outputs = Table(
    "outputs",
    test_metadata,
    Column("job", String(64), nullable=False),
    Column("item", Integer, nullable=False),
    UniqueConstraint("job", "item"),
)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'unit.sqlite3'}")
    metadata.create_all(database.engine)
    test_metadata.create_all(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def stub_broker(database: Database) -> Iterator[StubBroker]:
    broker = StubBroker(
        middleware=[
            TimeLimit(interval=100),
            ShutdownNotifications(),
            CurrentMessage(),
            JobLogs(),
            DeadLetters(database=database),
            Idempotency(database=database),
            JobStatus(database=database, max_deliveries=3),
            Retries(min_backoff=10, max_backoff=50, requeue_delay_ms=10),
            Checkpoints(database=database),
            DurationRouting(large_threshold_ms=60_000, regular_time_limit_ms=5_000, large_time_limit_ms=50_000),
        ]
    )
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
