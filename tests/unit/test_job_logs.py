"""The job-log vocabulary, asserted exactly: event names and fields are part of the API."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import insert

from middleware.checkpoints import current_checkpoint
from middleware.errors import FatalError
from middleware.job_logs import EVENTS_LOGGER, JsonEventFormatter
from tests.unit.conftest import outputs

COMMON = {"event", "message_id", "actor", "queue", "timestamp"}


@pytest.fixture
def events() -> Iterator[io.StringIO]:
    """The JSON lines the events logger writes during the test."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonEventFormatter())
    logger = logging.getLogger(EVENTS_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)


def collected(events: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in events.getvalue().splitlines()]


def drain(broker: StubBroker, worker: Worker) -> None:
    broker.join("default", fail_fast=False)
    worker.join()


def test_a_successful_checkpointed_job(stub_broker: StubBroker, stub_worker: Worker, events: io.StringIO) -> None:
    @dramatiq.actor(broker=stub_broker, checkpointed=True, notify_shutdown=True)
    def job() -> None:
        with current_checkpoint().saving(0) as connection:
            connection.execute(insert(outputs).values(job="logs", item=0))

    message = job.send()
    drain(stub_broker, stub_worker)
    lines = collected(events)
    assert [line["event"] for line in lines] == ["job.start", "checkpoint.saved", "job.success"]
    assert all(set(line) >= COMMON for line in lines)
    assert all(line["message_id"] == message.message_id and line["actor"] == "job" for line in lines)
    assert all(line["queue"] == "default" for line in lines)
    assert set(lines[0]) == COMMON | {"attempt"} and lines[0]["attempt"] == 1
    assert set(lines[1]) == COMMON | {"position"} and lines[1]["position"] == 0
    assert set(lines[2]) == COMMON | {"duration_ms", "attempt"} and lines[2]["duration_ms"] >= 0


def test_a_retried_then_dead_lettered_job(stub_broker: StubBroker, stub_worker: Worker, events: io.StringIO) -> None:
    @dramatiq.actor(broker=stub_broker, max_retries=1, min_backoff=10, max_backoff=20)
    def job() -> None:
        raise ConnectionResetError("reset")

    job.send()
    drain(stub_broker, stub_worker)
    lines = collected(events)
    assert [line["event"] for line in lines] == [
        "job.start",
        "job.retry",
        "job.failed",
        "job.start",
        "job.failed",
        "job.dead_lettered",
    ]
    retry, first_failure, last_failure, dead = lines[1], lines[2], lines[4], lines[5]
    assert set(retry) == COMMON | {"delay_ms", "error", "fatal", "attempt"}
    assert retry["fatal"] is False and retry["error"] == "ConnectionResetError: reset" and retry["delay_ms"] >= 0
    assert set(first_failure) == COMMON | {"error", "fatal", "will_retry", "attempt", "max_attempts", "duration_ms"}
    assert (first_failure["will_retry"], first_failure["attempt"], first_failure["max_attempts"]) == (True, 1, 2)
    assert (last_failure["will_retry"], last_failure["attempt"], last_failure["fatal"]) == (False, 2, False)
    assert set(dead) == COMMON | {"kind", "error", "dead_letter_id"} and dead["kind"] == "retryable"


def test_a_fatal_job(stub_broker: StubBroker, stub_worker: Worker, events: io.StringIO) -> None:
    @dramatiq.actor(broker=stub_broker, max_retries=5)
    def job() -> None:
        raise FatalError("record deleted")

    job.send()
    drain(stub_broker, stub_worker)
    lines = collected(events)
    assert [line["event"] for line in lines] == ["job.start", "job.failed", "job.dead_lettered"]
    assert (lines[1]["fatal"], lines[1]["will_retry"], lines[1]["error"]) == (True, False, "FatalError: record deleted")
    assert lines[2]["kind"] == "fatal"
