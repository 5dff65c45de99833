"""Sentry from a real worker: one event per job that failed for good, none for a job that retried and succeeded.

The Sentry SDK in the worker sends its envelopes to a real HTTP server on loopback (the DSN
points at it), which keeps them; the test reads them as Sentry would.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from middleware.job_status import job_status
from tests.harness import REDIS_TEST_URL, WorkerProcess, run_python, wait_until
from tests.http_sink import HttpSink, RecordedRequest

SECRET_PASSWORD = "hunter2-correct-horse"
SECRET_EMAIL = "ada@example.com"


@pytest.fixture
def sentry() -> Iterator[HttpSink]:
    with HttpSink() as sink:
        yield sink


@pytest.fixture
def env(redis_namespace: str, sqlite_url: str, tmp_path: Path, sentry: HttpSink) -> dict[str, str]:
    return {
        "BROKER_URL": REDIS_TEST_URL,
        "REDIS_NAMESPACE": redis_namespace,
        "DATABASE_URL": sqlite_url,
        "STATE_DIR": str(tmp_path),
        "SENTRY_DSN": f"http://public@127.0.0.1:{sentry.port}/1",
        "SENTRY_ENVIRONMENT": "test",
    }


def envelope_items(request: RecordedRequest) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(item header, item payload) of each item of one envelope, as Sentry's ingestion reads them."""
    body = request.body
    encoding = request.headers.get("content-encoding", "")
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding == "deflate":
        body = zlib.decompress(body)
    _envelope_header, *lines = body.decode().splitlines()
    return [(json.loads(header), json.loads(payload)) for header, payload in zip(lines[::2], lines[1::2], strict=True)]


def sentry_events(sentry: HttpSink) -> list[dict[str, Any]]:
    return [
        payload
        for request in sentry.requests
        if request.path.endswith("/envelope/")
        for header, payload in envelope_items(request)
        if header.get("type") == "event"
    ]


def send(env: dict[str, str], calls: str) -> list[str]:
    """Send from an app process: ``calls`` is Python that prints one message id per line."""
    result = run_python(env, f"from tests import observed_actors as a\n{calls}")
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def status_of(database_url: str, message_id: str) -> str | None:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        status = connection.scalar(select(job_status.c.status).where(job_status.c.message_id == message_id))
    engine.dispose()
    return status


def test_only_final_failures_reach_sentry_tagged_and_redacted(
    env: dict[str, str], sentry: HttpSink, tmp_path: Path
) -> None:
    worker = WorkerProcess(
        env, queues=["observed"], threads=1, log_path=tmp_path / "worker.log", modules=("tests.observed_actors",)
    )
    try:
        worker.wait_ready()
        [recovered] = send(env, f"print(a.flaky.send({str(tmp_path / 'flaky')!r}, 2).message_id)")
        wait_until(
            lambda: status_of(env["DATABASE_URL"], recovered) == "completed",
            timeout_s=30,
            what="the job that fails twice, then succeeds",
        )
        exhausted, fatal = send(
            env,
            (
                f"print(a.always_fails.send({str(tmp_path / 'exhausted')!r}, {{'email': {SECRET_EMAIL!r}}}, "
                f"{SECRET_PASSWORD!r}).message_id)\n"
                f"print(a.fails_fatally.send({str(tmp_path / 'fatal')!r}, 'https://api.example/meetings/7').message_id)\n"
            ),
        )
        # The SDK sends from one queue, in order: events of the recovered job's attempts, had
        # there been any, would have arrived before these two.
        wait_until(lambda: len(sentry_events(sentry)) >= 2, timeout_s=30, what="two events in Sentry")
    finally:
        worker.stop()
    events = sentry_events(sentry)  # after the worker's shutdown flush: nothing else was on its way

    assert sorted(event["tags"]["message_id"] for event in events) == sorted([exhausted, fatal]), "one event each"
    by_message = {event["tags"]["message_id"]: event for event in events}
    retried, fatal_event = by_message[exhausted], by_message[fatal]
    assert {name: retried["tags"][name] for name in ("error_kind", "actor", "queue", "attempt")} == {
        "error_kind": "retryable",
        "actor": "always_fails",
        "queue": "observed",
        "attempt": "3",
    }
    assert {name: fatal_event["tags"][name] for name in ("error_kind", "actor", "queue", "attempt")} == {
        "error_kind": "fatal",
        "actor": "fails_fatally",
        "queue": "observed",
        "attempt": "1",
    }
    assert [value["type"] for value in retried["exception"]["values"]] == ["ConnectionError"]
    assert fatal_event["exception"]["values"][-1]["type"] == "FatalError"
    assert "answered HTTP 404" in fatal_event["exception"]["values"][-1]["value"]
    assert fatal_event["environment"] == "test"

    # Retries leave breadcrumbs, on the event that follows them.
    retry_crumbs = [
        crumb["data"]["attempt"]
        for crumb in retried["breadcrumbs"]["values"]
        if crumb["category"] == "job.retry" and crumb["data"]["message_id"] == exhausted
    ]
    assert retry_crumbs == [1, 2]
    recovered_crumbs = [
        crumb for crumb in retried["breadcrumbs"]["values"] if crumb.get("data", {}).get("message_id") == recovered
    ]
    assert [crumb["category"] for crumb in recovered_crumbs] == ["job.retry", "job.retry"]

    # The job's arguments travel with the event, the sensitive ones redacted, here and in the error text.
    job = retried["contexts"]["job"]
    assert job["message"]["args"][1:] == [{"email": "[redacted]"}, "[redacted]"]
    assert job["max_attempts"] == 3
    for event in events:
        raw = json.dumps(event)
        assert SECRET_PASSWORD not in raw and SECRET_EMAIL not in raw
    assert "[redacted]" in retried["exception"]["values"][0]["value"]
