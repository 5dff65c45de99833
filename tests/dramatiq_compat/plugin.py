"""The fixtures Dramatiq's test suite expects, with brokers built by our stack (its ``conftest.py``).

``python -m tests.dramatiq_compat`` installs this file as ``conftest.py`` in the extracted suite;
it is not named so here, so that our own suite never collects it.

1. At import, before ``actors`` is imported (importing it configures the process from the
   environment): this process's settings point at Redis database 12 and a temporary directory.
2. Each broker fixture builds the broker as production does, with ``actors.broker`` (its
   middleware stack over a SQLite database of the test's own, copied from one migrated per
   session), where Dramatiq's builds its own defaults. With ``DRAMATIQ_COMPAT_STACK=stock`` they
   build Dramatiq's defaults instead, to tell our differences from the environment's.
3. Redis tests empty database 12 before and after (never another database); RabbitMQ tests get a
   virtual host of their own, and brokers the tests build themselves get the session's, never ``/``.
4. The tests listed in the file named by ``DRAMATIQ_COMPAT_DIFFERENCES`` are marked
   ``xfail(strict=True)`` with their reason; a listed test the whole suite no longer has is an error.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pika.connection
import pytest
import redis

from .common import REDIS_DB, REDIS_URL

_STATE_DIR = Path(tempfile.mkdtemp(prefix="rj-compat-"))
os.environ.update(
    BROKER_URL=REDIS_URL,
    REDIS_NAMESPACE=f"rjcompat-{os.getpid()}",
    DATABASE_URL=f"sqlite:///{_STATE_DIR / 'jobs.sqlite3'}",
    STATE_DIR=str(_STATE_DIR),
    TRANSCRIPTION_ENGINE="echo",
)

import dramatiq  # noqa: E402
from dramatiq import Worker  # noqa: E402
from dramatiq.brokers.rabbitmq import RabbitmqBroker  # noqa: E402
from dramatiq.brokers.redis import RedisBroker  # noqa: E402
from dramatiq.brokers.stub import StubBroker  # noqa: E402
from dramatiq.rate_limits import backends as rate_limit_backends  # noqa: E402
from dramatiq.results import backends as result_backends_  # noqa: E402

from actors.broker import build_broker, build_middleware  # noqa: E402
from actors.settings import Settings  # noqa: E402
from middleware.storage.database import Database  # noqa: E402

logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s")
logging.getLogger("pika").setLevel(logging.WARNING)
random.seed(1337)  # as Dramatiq's conftest

STOCK = os.environ.get("DRAMATIQ_COMPAT_STACK", "ours") == "stock"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672"
_SESSION_VHOST = f"rjcompat-{os.getpid()}"


# Set-up of the session: services and the list of differences.


def pytest_configure(config: pytest.Config) -> None:
    _create_vhost(_SESSION_VHOST)
    pika.connection.Parameters.DEFAULT_VIRTUAL_HOST = _SESSION_VHOST


def pytest_unconfigure(config: pytest.Config) -> None:
    _delete_vhost(_SESSION_VHOST)
    _empty_redis_database(redis.Redis.from_url(REDIS_URL))
    shutil.rmtree(_STATE_DIR, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before -k and -m deselect: the stale check needs every test
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    listed = os.environ.get("DRAMATIQ_COMPAT_DIFFERENCES")
    if STOCK or not listed:
        return
    differences = read_differences(Path(listed))
    for item in items:
        if item.nodeid in differences:
            item.add_marker(pytest.mark.xfail(reason=differences[item.nodeid], strict=True))
    whole_suite = [Path(arg).resolve() for arg in config.args] == [config.rootpath / "tests"]
    if whole_suite and (stale := sorted(set(differences) - {item.nodeid for item in items})):
        raise pytest.UsageError(
            f"{listed} lists tests this suite does not have; remove them or correct their names:\n  "
            + "\n  ".join(stale)
        )


def read_differences(path: Path) -> dict[str, str]:
    """``node id -> reason`` from lines ``NODE_ID REASON`` (blank lines and ``#`` comments skipped)."""
    differences: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        node_id, _, reason = line.partition(" ")
        if not reason.strip():
            raise pytest.UsageError(f"{path}:{number}: {node_id} has no reason; say why our stack differs there.")
        if node_id in differences:
            raise pytest.UsageError(f"{path}:{number}: {node_id} is listed twice.")
        differences[node_id] = reason.strip()
    return differences


# Our stack: a migrated database of the test's own, and the settings production would read.


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrated once per session, as an operator would; each test gets a copy (milliseconds)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "jobs.sqlite3"
    result = subprocess.run(
        [sys.executable, "-m", "ops", "db", "upgrade"],
        env={**os.environ, "DATABASE_URL": f"sqlite:///{path}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture
def stack_database(sqlite_template: Path, tmp_path: Path) -> Iterator[Database]:
    path = tmp_path / "jobs.sqlite3"
    with closing(sqlite3.connect(sqlite_template)) as source, closing(sqlite3.connect(path)) as target:
        source.backup(target)
    database = Database(f"sqlite:///{path}")
    yield database
    database.dispose()


def _settings(database: Database, state_dir: Path, broker_url: str = "") -> Settings:
    """Production's defaults (namespace ``dramatiq``, as Dramatiq's tests expect), for this test."""
    return Settings.from_env({"BROKER_URL": broker_url, "DATABASE_URL": database.url, "STATE_DIR": str(state_dir)})


def _booted(broker: dramatiq.Broker, *, cleanup: Callable[[], None] = lambda: None) -> Iterator[Any]:
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    broker.flush_all()
    cleanup()
    broker.close()


# Dramatiq's broker and worker fixtures.


@pytest.fixture
def stub_broker(stack_database: Database, tmp_path: Path) -> Iterator[StubBroker]:
    middleware = None if STOCK else build_middleware(_settings(stack_database, tmp_path), stack_database, redis=False)
    yield from _booted(StubBroker(middleware=middleware))


@pytest.fixture
def redis_broker(stack_database: Database, tmp_path: Path) -> Iterator[RedisBroker]:
    if STOCK:
        broker = RedisBroker(url=REDIS_URL)
    else:
        broker = build_broker(_settings(stack_database, tmp_path, REDIS_URL), stack_database)
    assert isinstance(broker, RedisBroker)
    _empty_redis_database(broker.client)
    yield from _booted(broker, cleanup=lambda: _empty_redis_database(broker.client))


@pytest.fixture
def rabbitmq_broker(stack_database: Database, tmp_path: Path) -> Iterator[RabbitmqBroker]:
    """On a virtual host of the test's own, so its queues start empty."""
    vhost = f"rjcompat-{uuid.uuid4().hex[:12]}"
    url = _create_vhost(vhost)
    try:
        if STOCK:
            broker = RabbitmqBroker(url=url, max_priority=10)  # Dramatiq's fixture sets max_priority
        else:
            broker = build_broker(_settings(stack_database, tmp_path, url), stack_database)
        assert isinstance(broker, RabbitmqBroker)
        assert broker.connection  # fail here, not in the test, when RabbitMQ is down
        yield from _booted(broker)
    finally:
        _delete_vhost(vhost)


@pytest.fixture
def stub_worker(stub_broker: StubBroker) -> Iterator[Worker]:
    yield from _started(Worker(stub_broker, worker_timeout=100, worker_threads=32))


@pytest.fixture
def redis_worker(redis_broker: RedisBroker) -> Iterator[Worker]:
    yield from _started(Worker(redis_broker, worker_threads=32))


@pytest.fixture
def rabbitmq_worker(rabbitmq_broker: RabbitmqBroker) -> Iterator[Worker]:
    yield from _started(Worker(rabbitmq_broker, worker_threads=32))


def _started(worker: Worker) -> Iterator[Worker]:
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def start_cli() -> Iterator[Callable[..., subprocess.Popen]]:
    """Starts ``dramatiq BROKER_MODULE`` (from the suite's directory, so ``tests.*`` imports)."""
    process: subprocess.Popen | None = None

    def run(broker_module: str, *, extra_args: list[str] | None = None, **kwargs: Any) -> subprocess.Popen:
        nonlocal process
        kwargs.setdefault("bufsize", 0)
        process = subprocess.Popen([sys.executable, "-m", "dramatiq", broker_module, *(extra_args or [])], **kwargs)
        return process

    yield run
    if process is not None:
        process.terminate()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


# Rate limiter and result backends: Redis on our database; memcached only where it is installed.


@pytest.fixture
def memcached_rate_limiter_backend() -> Any:
    _require_memcached()
    backend = rate_limit_backends.MemcachedBackend(servers=["127.0.0.1"], binary=True)
    with backend.pool.reserve() as client:
        client.flush_all()
    return backend


@pytest.fixture
def redis_rate_limiter_backend() -> rate_limit_backends.RedisBackend:
    backend = rate_limit_backends.RedisBackend(url=REDIS_URL)
    _empty_redis_database(backend.client)
    return backend


@pytest.fixture
def stub_rate_limiter_backend() -> rate_limit_backends.StubBackend:
    return rate_limit_backends.StubBackend()


@pytest.fixture(params=["memcached", "redis", "stub"])
def rate_limiter_backend(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_rate_limiter_backend")


@pytest.fixture
def memcached_result_backend() -> Any:
    _require_memcached()
    backend = result_backends_.MemcachedBackend(servers=["127.0.0.1"], binary=True)
    with backend.pool.reserve() as client:
        client.flush_all()
    return backend


@pytest.fixture
def redis_result_backend() -> result_backends_.RedisBackend:
    backend = result_backends_.RedisBackend(url=REDIS_URL)
    _empty_redis_database(backend.client)
    return backend


@pytest.fixture
def stub_result_backend() -> result_backends_.StubBackend:
    return result_backends_.StubBackend()


@pytest.fixture(params=["memcached", "redis", "stub"])
def result_backend(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_result_backend")


def _require_memcached() -> None:
    """memcached is optional here (no server on this machine): its tests skip, as Dramatiq's do without it."""
    pylibmc = pytest.importorskip("pylibmc", reason="pylibmc (Dramatiq's memcached client) is not installed")
    try:
        pylibmc.Client(["127.0.0.1"], binary=True).get_stats()
    except pylibmc.SomeErrors:
        pytest.skip("No memcached server answers on 127.0.0.1.")


# Services.


def _empty_redis_database(client: redis.Redis) -> None:
    """FLUSHDB, only ever of our database (Dramatiq's fixtures FLUSHALL, which would wipe others')."""
    db = client.connection_pool.connection_kwargs.get("db", 0)
    assert db == REDIS_DB, f"refusing to empty Redis database {db}: this suite owns only {REDIS_DB}"
    client.flushdb()


# tests.harness has the same two helpers, but this file runs as the conftest of Dramatiq's own package
# named ``tests``, which hides ours: importing them would import Dramatiq's tests instead.
def _create_vhost(name: str) -> str:
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], check=True, capture_output=True
    )
    return f"{RABBITMQ_URL}/{name}"


def _delete_vhost(name: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], check=False, capture_output=True)
