"""A fatal error fails the job at once, whatever its retry budget; others are retried."""

from __future__ import annotations

import dramatiq
import httpx
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from middleware.errors import FatalError


def http_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://127.0.0.1/meetings/42")
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=httpx.Response(status, request=request))


def run_failing(broker: StubBroker, worker: Worker, errors: list[BaseException], **options) -> list[int]:
    """Run an actor that raises ``errors`` one per attempt, then succeeds; returns its attempts."""
    attempts: list[int] = []

    @dramatiq.actor(broker=broker, max_retries=5, **options)
    def job() -> None:
        attempts.append(len(attempts))
        if len(attempts) <= len(errors):
            raise errors[len(attempts) - 1]

    job.send()
    broker.join(job.queue_name, fail_fast=False)
    worker.join()
    return attempts


def test_a_fatal_error_is_not_retried_and_is_dead_lettered(stub_broker: StubBroker, stub_worker: Worker) -> None:
    assert run_failing(stub_broker, stub_worker, [FatalError("meeting 42 was deleted")]) == [0]
    assert len(stub_broker.dead_letters) == 1
    assert "FatalError: meeting 42 was deleted" in stub_broker.dead_letters[0].options["traceback"]


def test_a_404_is_fatal(stub_broker: StubBroker, stub_worker: Worker) -> None:
    assert run_failing(stub_broker, stub_worker, [http_error(404)]) == [0]
    assert len(stub_broker.dead_letters) == 1


def test_a_503_is_retried_until_it_succeeds(stub_broker: StubBroker, stub_worker: Worker) -> None:
    assert run_failing(stub_broker, stub_worker, [http_error(503), http_error(503)]) == [0, 1, 2]
    assert stub_broker.dead_letters == []


def test_an_actor_can_declare_its_own_fatal_errors(stub_broker: StubBroker, stub_worker: Worker) -> None:
    class MeetingDeleted(LookupError):
        pass

    assert run_failing(stub_broker, stub_worker, [MeetingDeleted()], fatal_errors=(MeetingDeleted,)) == [0]
    assert len(stub_broker.dead_letters) == 1


def test_an_actor_can_declare_a_usually_fatal_error_retryable(stub_broker: StubBroker, stub_worker: Worker) -> None:
    attempts = run_failing(stub_broker, stub_worker, [http_error(409)], retryable_errors=(httpx.HTTPStatusError,))
    assert attempts == [0, 1]
