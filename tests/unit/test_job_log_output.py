"""Where the JSON job lines go in a worker: straight to file descriptor 2, one write a line, no lock."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from hypothesis import given
from hypothesis import strategies as st

from middleware.job_logs import (
    EVENTS_LOGGER,
    JsonEventFormatter,
    StandardErrorHandler,
    configure_job_logs,
    log_event,
    render_event,
)


@pytest.fixture
def standard_error_logs() -> Iterator[StandardErrorHandler]:
    """The events logger as a worker has it (``configure_job_logs()``), restored afterwards."""
    logger = logging.getLogger(EVENTS_LOGGER)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers = []
    configure_job_logs()
    (handler,) = logger.handlers
    assert isinstance(handler, StandardErrorHandler)
    yield handler
    logger.handlers, logger.level, logger.propagate = saved


@pytest.fixture
def message() -> dramatiq.Message:
    broker = StubBroker()

    @dramatiq.actor(broker=broker, queue_name="audio")
    def transcribe() -> None:
        pass

    return transcribe.message()


def test_an_event_is_one_json_line_on_standard_error(standard_error_logs, message, capfd) -> None:
    log_event("job.start", message, attempt=1)
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event == {
        "event": "job.start",
        "message_id": message.message_id,
        "actor": "transcribe",
        "queue": "audio",
        "attempt": 1,
        "timestamp": event["timestamp"],
    }
    assert event["timestamp"].endswith("+00:00") and len(event["timestamp"]) == len("2026-01-01T00:00:00.000+00:00")


def test_a_thread_holding_the_handler_lock_does_not_stop_other_threads_logging(
    standard_error_logs, message, capfd
) -> None:
    finished = threading.Event()

    def log_in_another_thread() -> None:
        log_event("job.success", message, duration_ms=3, attempt=1)
        finished.set()

    with standard_error_logs.lock:  # logging.Handler.handle would wait for this lock
        thread = threading.Thread(target=log_in_another_thread)
        thread.start()
        assert finished.wait(timeout=10), "the event waited for the handler's lock"
    thread.join()
    assert json.loads(capfd.readouterr().err)["event"] == "job.success"


def test_another_handler_on_the_events_logger_sees_every_event_too(standard_error_logs, message, capfd) -> None:
    stream = io.StringIO()
    extra = logging.StreamHandler(stream)
    extra.setFormatter(JsonEventFormatter())
    logging.getLogger(EVENTS_LOGGER).addHandler(extra)
    log_event("checkpoint.saved", message, position=4)
    from_stderr, from_extra = json.loads(capfd.readouterr().err), json.loads(stream.getvalue())
    assert from_stderr == from_extra and from_extra["position"] == 4


_values = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False) | st.lists(st.integers())


@given(
    event=st.dictionaries(st.text(min_size=1), _values, max_size=6),
    extra=st.sampled_from([{}, {"timestamp": "the event's own"}]),
    created=st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False),
)
def test_an_event_line_is_exactly_what_the_json_encoder_and_datetime_would_write(event, extra, created: float) -> None:
    """The line is built by hand for speed; its text must stay the encoder's, timestamp included."""
    event = {**event, **extra}
    expected = json.dumps(
        {**event, "timestamp": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")},
        default=str,
        separators=(",", ":"),
    )
    assert render_event(event, created) == expected


@pytest.mark.parametrize("created", [1_700_000_000.9995, 1_700_000_000.9999996, 1_700_000_001.0004999, 0.0])
def test_a_timestamp_rounds_to_the_microsecond_then_cuts_to_the_millisecond_as_datetime_does(created: float) -> None:
    line = json.loads(render_event({"event": "x"}, created))
    assert line["timestamp"] == datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
