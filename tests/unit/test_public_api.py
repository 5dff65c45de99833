"""The contracts an actor author relies on: one import for the public API, interrupts that
``except Exception`` cannot swallow, a checkpointed actor refused at declaration without what it
needs, and the stack order that the middleware reading Retries' decision depend on."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Interrupt

import middleware
from actors.broker import build_middleware
from actors.settings import Settings
from middleware.dead_letters import DeadLetters
from middleware.error_reporting import ErrorReporting
from middleware.errors import ActorDeclarationError, CheckpointSuperseded, HandBack
from middleware.idempotency import Idempotency
from middleware.job_logs import JobLogs
from middleware.job_status import JobStatus
from middleware.metrics import Metrics
from middleware.retries import Retries
from middleware.storage.database import Database
from middleware.worker_health import WorkerHealth

ROOT = Path(__file__).resolve().parents[2]


def test_the_public_api_is_one_import_away() -> None:
    assert middleware.__all__, "middleware exports nothing"
    for name in middleware.__all__:
        exported = getattr(middleware, name)
        module = importlib.import_module(middleware._EXPORTS[name])
        assert exported is getattr(module, name), f"middleware.{name} is not {module.__name__}.{name}"
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        middleware.no_such_name  # noqa: B018


def test_importing_a_middleware_module_imports_nothing_else_of_the_api() -> None:
    """prometheus_client must not be imported before actors sets up the metrics directory."""
    code = "import sys, middleware.storage.database; assert 'prometheus_client' not in sys.modules, 'imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("interrupt", [HandBack("held too long"), CheckpointSuperseded("lost", by_message_id=None)])
def test_interrupts_out_of_user_code_pass_through_except_exception(interrupt: BaseException) -> None:
    assert isinstance(interrupt, Interrupt) and not isinstance(interrupt, Exception)

    def an_actor_loop_that_catches_everything() -> None:
        try:
            raise interrupt
        except Exception:  # what careless actor code does
            pytest.fail(f"{type(interrupt).__name__} was swallowed by except Exception")

    with pytest.raises(type(interrupt)):
        an_actor_loop_that_catches_everything()


def test_a_checkpointed_actor_without_notify_shutdown_is_refused_when_declared(stub_broker: StubBroker) -> None:
    with pytest.raises(ActorDeclarationError, match="Add notify_shutdown=True"):

        @dramatiq.actor(broker=stub_broker, checkpointed=True)
        def forgetful() -> None:
            pass

    assert "forgetful" not in stub_broker.actors


@pytest.mark.parametrize("redis", [True, False], ids=["redis", "rabbitmq"])
def test_the_real_stack_lists_every_reader_of_retries_decision_before_retries(tmp_path: Path, redis: bool) -> None:
    """Retries publishes its decision in after_process_message; after-hooks run bottom to top, so
    each middleware that reads the decision in its own after-hook must be listed above Retries."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    settings = Settings(broker_url=None, database_url=url, state_dir=tmp_path, sentry_dsn="http://public@127.0.0.1:9/1")
    database = Database(url)
    stack = list(build_middleware(settings, database, redis=redis))
    position = {type(middleware): index for index, middleware in enumerate(stack)}
    readers = (JobStatus, JobLogs, DeadLetters, WorkerHealth, Metrics, ErrorReporting)
    assert all(reader in position for reader in readers), "a reader of the decision left the stack"
    assert [reader.__name__ for reader in readers if position[reader] > position[Retries]] == []
    assert position[Idempotency] < position[JobStatus], "Idempotency reads the status as it was before this delivery"
    database.dispose()


def test_the_unit_tiers_broker_is_the_real_stack_in_its_order(stub_broker: StubBroker, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'other.sqlite3'}"
    database = Database(url)
    real = build_middleware(Settings(broker_url=None, database_url=url, state_dir=tmp_path), database, redis=False)
    assert [type(middleware) for middleware in stub_broker.middleware] == [type(middleware) for middleware in real]
    database.dispose()
