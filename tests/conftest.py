"""Test-wide set-up: the environment of this test process, and the real services per test.

The environment is set at import, before any test module imports ``actors`` (which configures
the process from it): this process uses its own Redis database and key prefix, and SQLite in a
temporary directory, so tests never touch a developer's data.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests import harness

_STATE_DIR = Path(tempfile.mkdtemp(prefix="rj-tests-"))
os.environ.update(
    BROKER_URL=harness.REDIS_TEST_URL,
    REDIS_NAMESPACE=f"rjtest-inproc-{os.getpid()}",
    DATABASE_URL=f"sqlite:///{_STATE_DIR / 'jobs.sqlite3'}",
    STATE_DIR=str(_STATE_DIR),
    TRANSCRIPTION_ENGINE="echo",
)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    harness.delete_redis_namespace(os.environ["REDIS_NAMESPACE"])


def migrate(url: str) -> None:
    """Bring a test database to the newest schema, as an operator would."""
    result = harness.run_ops({"DATABASE_URL": url, "BROKER_URL": harness.REDIS_TEST_URL}, "db", "upgrade")
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated database that nothing connects to, copied for each test that needs its own."""
    name = f"rj_template_{os.getpid()}"
    url = harness.create_postgres_database(name)
    migrate(url)
    yield name
    harness.drop_postgres_database(name)


@pytest.fixture(scope="session")
def postgres_url(postgres_template: str) -> Iterator[str]:
    """A migrated PostgreSQL database shared by this test session's tests, dropped at the end."""
    name = f"rj_test_{os.getpid()}"
    url = harness.create_postgres_database(name, template=postgres_template)
    yield url
    harness.drop_postgres_database(name)


@pytest.fixture
def own_postgres_url(postgres_template: str) -> Iterator[str]:
    """A migrated PostgreSQL database of this test's own, so no other test's rows (stale workers,
    dead letters, stalled jobs) are in what it judges."""
    name = f"rj_own_{uuid.uuid4().hex[:10]}"
    url = harness.create_postgres_database(name, template=postgres_template)
    yield url
    harness.drop_postgres_database(name)


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    namespace = f"rjtest-{uuid.uuid4().hex[:12]}"
    yield namespace
    harness.delete_redis_namespace(namespace)


@pytest.fixture
def rabbitmq_url() -> Iterator[str]:
    """A RabbitMQ virtual host of this test's own, so its queues start empty."""
    vhost = f"rjtest-{uuid.uuid4().hex[:12]}"
    yield harness.create_rabbitmq_vhost(vhost)
    harness.delete_rabbitmq_vhost(vhost)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test: a copy takes milliseconds, a migration 1.5 s."""
    path = tmp_path_factory.mktemp("sqlite-template") / "jobs.sqlite3"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A migrated SQLite database of this test's own."""
    path = tmp_path / "jobs.sqlite3"
    # SQLite's backup API copies a consistent database, whatever the journal mode left beside it.
    with closing(sqlite3.connect(sqlite_template)) as source, closing(sqlite3.connect(path)) as target:
        source.backup(target)
    return f"sqlite:///{path}"


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Environment for a real broker of the parametrised kind, isolated to this test."""
    if request.param == "redis":
        namespace = request.getfixturevalue("redis_namespace")
        # The defaults: explicit heartbeats and a 4 s liveness window (middleware/heartbeats.py).
        return {"BROKER_URL": harness.REDIS_TEST_URL, "REDIS_NAMESPACE": namespace, "STATE_DIR": str(tmp_path)}
    return {"BROKER_URL": request.getfixturevalue("rabbitmq_url"), "STATE_DIR": str(tmp_path)}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A database of this test's own: SQLite in its temporary directory, or a PostgreSQL copy."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "own_postgres_url")
