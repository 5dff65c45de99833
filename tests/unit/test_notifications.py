"""send_webhook against a real loopback HTTP server: what it sends, and how its failures classify."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import dramatiq
import httpx
import pytest
from dramatiq.middleware import CurrentMessage

from actors.notifications import WEBHOOKS, idempotency_key_for, notify_transcript_ready, send_webhook
from middleware.errors import FatalError
from middleware.policies.error_classification import ErrorKind, classify_error
from tests.http_sink import HttpSink, refused_url

PAYLOAD = {"event": "transcript.ready", "meeting_id": "meeting-42"}


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with HttpSink() as sink:
        yield sink


@contextmanager
def running(message: dramatiq.Message) -> Iterator[None]:
    """Make ``message`` the current message, as the CurrentMessage middleware does in a worker."""
    middleware = CurrentMessage()
    middleware.before_process_message(None, message)
    try:
        yield
    finally:
        middleware.after_process_message(None, message)


def test_a_200_posts_the_payload_as_json_with_its_headers(sink: HttpSink) -> None:
    send_webhook.fn(sink.url("/hooks/meetings"), PAYLOAD, idempotency_key="key-1")

    [request] = sink.wait_for_requests(1)
    assert (request.method, request.path, request.json) == ("POST", "/hooks/meetings", PAYLOAD)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == "key-1"
    assert request.headers["user-agent"].startswith("resilient-jobs")


def test_without_a_message_or_key_the_key_is_derived_from_url_and_payload(sink: HttpSink) -> None:
    send_webhook.fn(sink.url(), PAYLOAD)
    send_webhook.fn(sink.url(), dict(reversed(PAYLOAD.items())))  # same notification, other key order
    send_webhook.fn(sink.url(), {**PAYLOAD, "meeting_id": "meeting-43"})

    first, again, other = (request.headers["idempotency-key"] for request in sink.wait_for_requests(3))
    assert first == again != other
    assert first.startswith("webhook:")


def test_in_a_worker_the_key_is_the_message_option_else_the_message_id(sink: HttpSink) -> None:
    with_option = send_webhook.message_with_options(args=(sink.url(), PAYLOAD), idempotency_key="option-key")
    plain = send_webhook.message(sink.url(), PAYLOAD)
    with running(with_option):
        send_webhook.fn(sink.url(), PAYLOAD)
    with running(plain):
        send_webhook.fn(sink.url(), PAYLOAD)
    with running(plain):
        send_webhook.fn(sink.url(), PAYLOAD, idempotency_key="argument-key")  # the argument wins

    keys = [request.headers["idempotency-key"] for request in sink.wait_for_requests(3)]
    assert keys == ["option-key", plain.message_id, "argument-key"]


@pytest.mark.parametrize("status", [301, 400, 404, 405, 413, 422])
def test_a_4xx_or_a_redirect_is_fatal(sink: HttpSink, status: int) -> None:
    sink.respond_with(status)
    with pytest.raises(FatalError, match=f"answered HTTP {status}") as raised:
        send_webhook.fn(sink.url(), PAYLOAD)
    assert classify_error(raised.value).kind is ErrorKind.FATAL


@pytest.mark.parametrize("status", [408, 429])
def test_a_4xx_that_asks_for_a_later_try_is_retryable(sink: HttpSink, status: int) -> None:
    sink.respond_with(status)
    with pytest.raises(httpx.HTTPStatusError) as raised:
        send_webhook.fn(sink.url(), PAYLOAD)
    assert classify_error(raised.value).kind is ErrorKind.RETRYABLE


def test_a_503_raises_an_error_classified_retryable_and_the_next_attempt_succeeds(sink: HttpSink) -> None:
    sink.respond_with(503)
    with pytest.raises(httpx.HTTPStatusError) as raised:
        send_webhook.fn(sink.url(), PAYLOAD, idempotency_key="key-1")
    assert classify_error(raised.value).kind is ErrorKind.RETRYABLE

    send_webhook.fn(sink.url(), PAYLOAD, idempotency_key="key-1")
    assert [request.headers["idempotency-key"] for request in sink.wait_for_requests(2)] == ["key-1", "key-1"]


def test_a_refused_connection_raises_an_error_classified_retryable() -> None:
    with pytest.raises(httpx.ConnectError) as raised:
        send_webhook.fn(refused_url(), PAYLOAD)
    assert classify_error(raised.value).kind is ErrorKind.RETRYABLE


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/hook", "file:///etc/passwd", "/hook", "127.0.0.1/hook", "http://", "", None]
)
def test_a_url_that_is_not_http_is_fatal_before_any_request(sink: HttpSink, url: object) -> None:
    with pytest.raises(FatalError, match="webhook URL"):
        send_webhook.fn(url, PAYLOAD)
    assert sink.requests == []


@pytest.mark.parametrize(
    "payload", [{"when": object()}, {"ratio": float("nan")}, {1: "a", "b": 2}, ["not", "an", "object"]]
)
def test_a_payload_that_is_not_a_json_object_is_fatal_before_any_request(sink: HttpSink, payload: object) -> None:
    with pytest.raises(FatalError, match="payload"):
        send_webhook.fn(sink.url(), payload)
    assert sink.requests == []


@pytest.mark.parametrize("key", ["", "line\r\nInjected: header", "réunion-42", 42])
def test_an_idempotency_key_that_cannot_be_a_header_is_fatal(sink: HttpSink, key: object) -> None:
    with pytest.raises(FatalError, match="idempotency key"):
        send_webhook.fn(sink.url(), PAYLOAD, idempotency_key=key)
    assert sink.requests == []


def test_the_fallback_key_is_a_pure_function_of_url_and_body() -> None:
    assert idempotency_key_for("http://a/", b"{}") == idempotency_key_for("http://a/", b"{}")
    assert idempotency_key_for("http://a/", b"{}") != idempotency_key_for("http://b/", b"{}")


def test_notify_transcript_ready_sends_one_keyed_message_per_meeting() -> None:
    # A meeting of this run's own: the idempotency middleware refuses a key already claimed.
    meeting_id = f"meeting-{uuid.uuid4().hex[:12]}"
    message = notify_transcript_ready(meeting_id, "https://apps.example/hooks/transcripts")

    key = f"transcript.ready:{meeting_id}"
    assert message.queue_name == "notifications"
    assert message.actor_name == "send_webhook"
    assert message.args == (
        "https://apps.example/hooks/transcripts",
        {"event": "transcript.ready", "meeting_id": meeting_id},
    )
    assert message.kwargs == {"idempotency_key": key}
    assert message.options["idempotency_key"] == key


def test_the_actor_declares_the_webhook_policy() -> None:
    assert send_webhook.options["retry_policy"] is WEBHOOKS
    assert (WEBHOOKS.attempts, WEBHOOKS.backoff, WEBHOOKS.base_delay_ms, WEBHOOKS.max_delay_ms) == (
        8,
        "exponential",
        2_000,
        60_000,
    )
