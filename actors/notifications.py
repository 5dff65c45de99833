"""send_webhook: a JSON POST to a subscriber's URL, retried on outages, never on bad input.

1. ``send_webhook.send(url, payload)`` (or a helper such as :func:`notify_transcript_ready`)
   enqueues the notification on the ``notifications`` queue.
2. The worker validates the input first: a URL that is not http(s) or a payload that is not
   JSON raises :class:`FatalError` before any request, so bad input fails at once.
3. It POSTs the payload with an ``Idempotency-Key`` header that is the same on every delivery of
   the message (see :func:`idempotency_key_for`): delivery is at least once, so a receiver that
   honours the key sees each notification once even when a retry follows a lost response.
4. ``raise_for_status()`` turns a non-2xx answer into ``httpx.HTTPStatusError``; the project's
   classifier (``middleware.policies.error_classification``) makes 4xx such as 404 fatal and 5xx, 429,
   timeouts and refused connections retryable, so this actor has no retry logic of its own: the
   ``Retries`` middleware applies :data:`WEBHOOKS`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import dramatiq
import httpx
from dramatiq.middleware import CurrentMessage

from middleware.errors import FatalError
from middleware.policies.error_classification import RETRYABLE_HTTP_STATUSES
from middleware.policies.retry_policies import RetryPolicy

logger = logging.getLogger(__name__)

QUEUE = "notifications"
USER_AGENT = "resilient-jobs-webhooks/1"
CONNECT_TIMEOUT_MS = 5_000
READ_TIMEOUT_MS = 10_000
# The read timeout bounds each read, not the whole exchange: a receiver that drips bytes could
# hold the worker thread indefinitely, so the message also gets a time limit (a retryable failure).
TIME_LIMIT_MS = 60_000
TRANSCRIPT_READY = "transcript.ready"

#: Waits of about 2, 4, 8, 16, 32, 60 and 60 s: a receiver may be down for three minutes (a deploy)
#: before the webhook is dead-lettered.
WEBHOOKS = RetryPolicy(attempts=8, backoff="exponential", base_delay_ms=2_000, max_delay_ms=60_000)


@dramatiq.actor(queue_name=QUEUE, retry_policy=WEBHOOKS, time_limit=TIME_LIMIT_MS)
def send_webhook(url: str, payload: dict, *, idempotency_key: str | None = None) -> None:
    body = _validated_body(url, payload)
    key = idempotency_key_for(url, body, explicit=idempotency_key)
    headers = {"Content-Type": "application/json", "Idempotency-Key": key, "User-Agent": USER_AGENT}
    # One client per call: a module-level client's connection pool does not survive a worker fork.
    with httpx.Client(timeout=_timeout(), follow_redirects=False) as client:
        response = client.post(url, content=body, headers=headers)
    status = response.status_code
    # Any other answer below 500 (a 4xx, a redirect) means the URL or the request is wrong: retrying
    # will not help. 408, 425 and 429 ask for a later try; 5xx are the receiver's trouble.
    if 300 <= status < 500 and status not in RETRYABLE_HTTP_STATUSES:
        raise FatalError(f"webhook {url} answered HTTP {status}: {response.text[:200]!r}")
    response.raise_for_status()
    logger.info("Webhook to %s answered %d (Idempotency-Key %s).", url, response.status_code, key)


def notify_transcript_ready(meeting_id: str, callback_url: str) -> dramatiq.Message:
    """Tell ``callback_url`` that the transcript of ``meeting_id`` is complete; one key per meeting."""
    key = f"{TRANSCRIPT_READY}:{meeting_id}"
    payload = {"event": TRANSCRIPT_READY, "meeting_id": meeting_id}
    # The key goes both to the actor (the header) and into the message options, where the
    # idempotency middleware reads it without decoding the arguments.
    return send_webhook.send_with_options(
        args=(callback_url, payload), kwargs={"idempotency_key": key}, idempotency_key=key
    )


def idempotency_key_for(url: str, body: bytes, *, explicit: str | None = None) -> str:
    """The ``Idempotency-Key`` header: stable across every delivery of the same notification.

    In order: ``explicit`` (the actor argument); the running message's ``idempotency_key``
    option; the running message's id (redeliveries and retries keep it). With no running message
    (the function called directly, as in tests or a script), a digest of the URL and the body:
    calling again with the same notification repeats the key, as a retry should; a caller who
    means two distinct notifications with identical payloads must pass ``idempotency_key``.
    """
    if explicit is not None:
        return _checked_key(explicit)
    message = CurrentMessage.get_current_message()
    if message is not None:
        option = message.options.get("idempotency_key")
        return _checked_key(option) if option is not None else message.message_id
    digest = hashlib.sha256(url.encode() + b"\n" + body).hexdigest()
    return f"webhook:{digest}"


def _validated_body(url: str, payload: dict) -> bytes:
    _check_url(url)
    if not isinstance(payload, dict):
        raise FatalError(f"webhook payload must be a JSON object (a dict), got {type(payload).__name__}")
    try:
        # Serialised here, not by httpx, so what is validated is byte for byte what is sent (NaN and
        # Infinity are not JSON: a receiver's parser would reject them); sorted keys make the
        # fallback idempotency key independent of the dict's insertion order.
        text = json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False)
        return text.encode()
    except (TypeError, ValueError) as error:
        raise FatalError(f"webhook payload is not JSON-serialisable: {error}") from error


def _check_url(url: str) -> None:
    if not isinstance(url, str):
        raise FatalError(f"webhook URL must be a string, got {type(url).__name__}")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise FatalError(f"webhook URL {url!r} is not a valid URL: {error}") from error
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise FatalError(f"webhook URL {url!r} must be an absolute http:// or https:// URL")


def _checked_key(key: Any) -> str:
    # HTTP header values must be visible ASCII; a bad key would fail the same way on every retry.
    if not isinstance(key, str) or not key or not key.isascii() or not key.isprintable():
        raise FatalError(f"idempotency key must be a non-empty printable ASCII string, got {key!r}")
    return key


def _timeout() -> httpx.Timeout:
    # Writing the small body and waiting for a pooled connection get the read timeout too.
    return httpx.Timeout(READ_TIMEOUT_MS / 1000, connect=CONNECT_TIMEOUT_MS / 1000)
