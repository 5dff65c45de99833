"""Idempotency keys: at most one enqueue per key while its job is alive; duplicates skipped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import insert, update

from middleware.errors import DuplicateJob
from middleware.idempotency import idempotency_keys
from middleware.job_status import get_job
from middleware.storage.database import Database


@pytest.fixture
def emails(stub_broker: StubBroker):
    sent: list[str] = []
    failures: list[bool] = []

    @dramatiq.actor(broker=stub_broker, max_retries=1, min_backoff=10, max_backoff=20)
    def send_email(address: str) -> None:
        if failures and failures.pop(0):
            raise ConnectionResetError("the mail server hung up")
        sent.append(address)

    return send_email, sent, failures


def drain(broker: StubBroker, worker: Worker) -> None:
    broker.join("default", fail_fast=False)
    worker.join()


def test_a_second_send_with_the_same_key_is_refused_and_the_email_goes_once(
    stub_broker: StubBroker, stub_worker: Worker, emails
) -> None:
    send_email, sent, _ = emails
    first = send_email.send_with_options(args=("a@example.com",), idempotency_key="welcome:a")
    with pytest.raises(DuplicateJob, match="welcome:a") as refused:
        send_email.send_with_options(args=("a@example.com",), idempotency_key="welcome:a")
    assert refused.value.existing_message_id == first.message_id
    drain(stub_broker, stub_worker)
    with pytest.raises(DuplicateJob):  # completed within the TTL: still refused
        send_email.send_with_options(args=("a@example.com",), idempotency_key="welcome:a")
    assert sent == ["a@example.com"]


def test_a_retry_keeps_its_key(stub_broker: StubBroker, stub_worker: Worker, emails) -> None:
    send_email, sent, failures = emails
    failures.append(True)
    send_email.send_with_options(args=("b@example.com",), idempotency_key="welcome:b")
    drain(stub_broker, stub_worker)
    assert sent == ["b@example.com"], "the retry re-enqueued the same message under the same key"


def test_after_a_failure_or_expiry_the_key_can_be_used_again(
    stub_broker: StubBroker, stub_worker: Worker, database: Database, emails
) -> None:
    send_email, sent, failures = emails
    failures.extend([True, True])  # both attempts fail: the job fails for good
    failed = send_email.send_with_options(args=("c@example.com",), idempotency_key="welcome:c")
    drain(stub_broker, stub_worker)
    assert get_job(database, failed.message_id)["status"] == "failed"

    send_email.send_with_options(args=("c@example.com",), idempotency_key="welcome:c")
    drain(stub_broker, stub_worker)
    assert sent == ["c@example.com"]

    with database.transaction() as connection:
        connection.execute(update(idempotency_keys).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    send_email.send_with_options(args=("c@example.com",), idempotency_key="welcome:c")
    drain(stub_broker, stub_worker)
    assert sent == ["c@example.com", "c@example.com"]


def test_a_redelivered_keyed_job_that_already_completed_is_skipped(
    stub_broker: StubBroker, stub_worker: Worker, emails
) -> None:
    send_email, sent, _ = emails
    message = send_email.send_with_options(args=("d@example.com",), idempotency_key="welcome:d")
    drain(stub_broker, stub_worker)
    stub_broker.enqueue(message)  # the broker delivers it again, as after a lost ack
    drain(stub_broker, stub_worker)
    assert sent == ["d@example.com"]


def test_where_the_broker_cannot_be_searched_a_claim_never_sent_is_held_until_it_expires(
    stub_broker: StubBroker, database: Database, emails
) -> None:
    send_email, _, _ = emails
    now = datetime.now(UTC)
    with database.transaction() as connection:  # a sender that died after its claim: no job, an hour old
        connection.execute(
            insert(idempotency_keys).values(
                key="welcome:e",
                message_id="never-sent",
                actor_name="send_email",
                created_at=now - timedelta(hours=1),
                expires_at=now + timedelta(hours=1),
            )
        )
    with pytest.raises(DuplicateJob, match="never-sent"):  # as on RabbitMQ: nowhere to look for the message
        send_email.send_with_options(args=("e@example.com",), idempotency_key="welcome:e")
