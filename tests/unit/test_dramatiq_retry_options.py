"""Dramatiq's own retry options behave on our Retries as on Dramatiq's (issue 18): on_retry_exhausted,
max_backoff below min_backoff, requeue_timestamp, and the log level of an actor's throws."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from actors.broker import build_middleware
from actors.settings import Settings
from middleware.errors import FatalError
from middleware.retries import Retries
from middleware.storage.database import Database


def test_a_message_out_of_retries_is_sent_to_its_on_retry_exhausted_actor(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    exhausted: list[tuple[dict, dict]] = []

    @dramatiq.actor(broker=stub_broker)
    def retries_exhausted(message_data: dict, retry_info: dict) -> None:
        exhausted.append((message_data, retry_info))

    @dramatiq.actor(broker=stub_broker, max_retries=2, on_retry_exhausted="retries_exhausted")
    def always_fails(order_id: int) -> None:
        raise ConnectionError("the gateway is down")

    message = always_fails.send(7)
    stub_broker.join(always_fails.queue_name, fail_fast=False)
    stub_broker.join(retries_exhausted.queue_name, fail_fast=False)
    stub_worker.join()

    [(message_data, retry_info)] = exhausted
    assert retry_info == {"retries": 2, "max_retries": 2}, "the same arguments as Dramatiq's Retries sends"
    assert message_data["message_id"] == message.message_id and message_data["args"] == [7]
    assert message_data["options"]["retries"] == 3


def test_on_retry_exhausted_as_a_message_option_and_never_for_a_fatal_error(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    exhausted: list[str] = []

    @dramatiq.actor(broker=stub_broker)
    def note_exhausted(message_data: dict, retry_info: dict) -> None:
        exhausted.append(message_data["args"][0])

    @dramatiq.actor(broker=stub_broker, max_retries=0)
    def fails(kind: str) -> None:
        raise FatalError("a bad request") if kind == "fatal" else ConnectionError("down")

    fails.send_with_options(args=("retryable",), on_retry_exhausted="note_exhausted")
    fails.send_with_options(args=("fatal",), on_retry_exhausted="note_exhausted")
    stub_broker.join(fails.queue_name, fail_fast=False)
    stub_broker.join(note_exhausted.queue_name, fail_fast=False)
    stub_worker.join()

    assert exhausted == ["retryable"], "a fatal error was never to be retried: its retries did not run out"
    assert len(stub_broker.dead_letters) == 2


def test_an_undeclared_on_retry_exhausted_actor_is_logged_and_the_message_still_dead_lettered(
    stub_broker: StubBroker, stub_worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    @dramatiq.actor(broker=stub_broker, max_retries=0, on_retry_exhausted="no_such_actor")
    def fails() -> None:
        raise ConnectionError("down")

    fails.send()
    stub_broker.join(fails.queue_name, fail_fast=False)
    stub_worker.join()

    assert len(stub_broker.dead_letters) == 1
    assert any("on_retry_exhausted actor 'no_such_actor' is not declared" in r.getMessage() for r in caplog.records)


def test_every_failure_stamps_requeue_timestamp_as_dramatiq_does(stub_broker: StubBroker, stub_worker: Worker) -> None:
    @dramatiq.actor(broker=stub_broker, max_retries=1)
    def fails() -> None:
        raise ConnectionError("down")

    before_ms = int(time.time() * 1000)
    fails.send()
    stub_broker.join(fails.queue_name, fail_fast=False)
    stub_worker.join()

    [dead] = stub_broker.dead_letters
    assert before_ms <= dead.options["requeue_timestamp"] <= int(time.time() * 1000)


def test_the_stacks_retries_never_wait_longer_than_an_actors_max_backoff(tmp_path: Path) -> None:
    """The stack's min_backoff is 2 s: an actor's max_backoff=0 still retries at once, as in Dramatiq."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    database = Database(url)
    stack = build_middleware(Settings(broker_url=None, database_url=url, state_dir=tmp_path), database, redis=False)
    [retries] = [middleware for middleware in stack if isinstance(middleware, Retries)]
    broker = StubBroker(middleware=stack)

    @dramatiq.actor(broker=broker, max_retries=3, max_backoff=0)
    def at_once() -> None:
        pass

    @dramatiq.actor(broker=broker, max_retries=3, max_backoff=500)
    def soon() -> None:
        pass

    message = at_once.message()
    assert [retries.policy_of(at_once, message).delay_ms(n) for n in (1, 2, 3)] == [0, 0, 0]
    assert all(0 < retries.policy_of(soon, soon.message()).delay_ms(n) <= 500 for n in (1, 2, 3, 10))
    broker.close()
    database.dispose()


def test_an_error_in_throws_is_logged_at_info_and_a_classified_fatal_error_at_warning(
    stub_broker: StubBroker, stub_worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    @dramatiq.actor(broker=stub_broker, throws=(LookupError,))
    def expected() -> None:
        raise LookupError("no such meeting")

    @dramatiq.actor(broker=stub_broker)
    def classified() -> None:
        raise FatalError("a bad request")

    caplog.set_level(logging.INFO, logger="middleware.retries.Retries")
    expected.send()
    stub_broker.join(expected.queue_name, fail_fast=False)
    stub_worker.join()
    classified.send()
    stub_broker.join(classified.queue_name, fail_fast=False)
    stub_worker.join()

    ours = [record for record in caplog.records if record.name == "middleware.retries.Retries"]
    levels = {
        reason: [record.levelno for record in ours if reason in record.getMessage()]
        for reason in ("in the actor's throws", "FatalError")
    }
    assert levels == {"in the actor's throws": [logging.INFO], "FatalError": [logging.WARNING]}
