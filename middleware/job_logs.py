"""Structured job logs: one JSON line per job event, on the worker's standard error.

The vocabulary is part of the API (tests assert it exactly):

    job.start          attempt
    job.success        duration_ms, attempt
    job.retry          delay_ms, error, fatal (false), attempt
    job.failed         error, fatal, will_retry, attempt, max_attempts, duration_ms
    job.interrupted    reason (Shutdown, TimeLimitExceeded, HandBack, CheckpointBusy, CheckpointSuperseded,
                       DatabaseUnavailable): handed back (or, superseded by its own redelivery, ended), no attempt
    job.dead_lettered  kind (fatal, retryable or poison), error, dead_letter_id
    checkpoint.saved   position
    checkpoint.resumed position
    checkpoint.busy    held_by, retry_in_ms: another message's delivery holds the checkpoint's lease
    checkpoint.superseded  position, by_message_id: this delivery lost the lease; that save rolled back

Every line also has ``event``, ``message_id``, ``actor``, ``queue`` and ``timestamp`` (UTC,
ISO 8601). Any module emits with :func:`log_event`; :class:`JobLogs` emits the job lifecycle.
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import sys
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import IO, Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import Middleware

from middleware.policies.failure_decision import current_failure

EVENTS_LOGGER = "jobs.events"
events_logger = logging.getLogger(EVENTS_LOGGER)

_started_at: ContextVar[float | None] = ContextVar("job_started_at", default=None)

#: Called with every job event's record (metrics, error reporting): the same vocabulary as the logs.
EventListener = Callable[[Mapping[str, Any]], None]
_listeners: list[EventListener] = []


def add_event_listener(listener: EventListener) -> None:
    """Have ``listener`` called with each job event's record, in the thread that emits it (once per listener)."""
    if listener not in _listeners:
        _listeners.append(listener)


def log_event(event: str, message: dramatiq.Message | dramatiq.MessageProxy, **fields: Any) -> None:
    """Emit one job event (a log record whose ``job_event`` extra the JSON formatter writes)."""
    record = {
        "event": event,
        "message_id": message.message_id,
        "actor": message.actor_name,
        "queue": q_name(message.queue_name),
        **fields,
    }
    direct = _direct_handler()
    if direct is not None:
        direct.write_event(record, time.time())
    else:
        events_logger.info("%s %s", event, message.message_id, extra={"job_event": record})
    for listener in tuple(_listeners):
        try:
            listener(record)
        except Exception:  # a listener must never break the job that emitted the event
            logging.getLogger("middleware.job_logs").exception("Job event listener %r failed; going on.", listener)


def _direct_handler() -> StandardErrorHandler | None:
    """The events logger's handler when it is only ours, unfiltered and at INFO: then a job event is
    written without building a ``LogRecord`` (the same line, at a fifth of the cost: 37 us a line
    through ``logging`` in a worker thread, most of it the record and its caller lookup)."""
    handlers = events_logger.handlers
    if len(handlers) != 1 or type(handlers[0]) is not StandardErrorHandler:
        return None
    handler = handlers[0]
    if events_logger.filters or handler.filters or handler.level > logging.INFO:
        return None
    return handler if events_logger.isEnabledFor(logging.INFO) else None


def emit_event(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Emit an event about no single message (the scheduler's, alerts) in the same JSON format."""
    events_logger.log(level, "%s", event, extra={"job_event": {"event": event, **fields}})


def attempt_of(message: dramatiq.Message | dramatiq.MessageProxy) -> int:
    """The attempt being run (1 for the first): failed attempts so far, plus this one."""
    return message.options.get("retries", 0) + 1


# Built once: json.dumps with options builds an encoder per call.
_encode_json = json.JSONEncoder(default=str, separators=(",", ":")).encode


def render_event(event: Mapping[str, Any], created: float) -> str:
    """One event as its JSON line (without the newline), stamped with ``created`` (a ``time.time()``).

    The same text as ``_encode_json`` of the event plus its timestamp, built by hand: the encoder
    builds a C encoder object per call, and with the timestamp's ``datetime`` that was 3.4 us a
    line (now 1.8), a tenth of a no-op job's worker CPU in a drain (two lines per job, 16 threads).
    """
    if "timestamp" in event:  # an event's own timestamp field takes the stamp, in its place, as the encoder had it
        return _encode_json({**event, "timestamp": _timestamp(created)})
    parts = []
    for key, value in event.items():  # inlined: a function call per key and value was a third of the cost
        encoded_key = _encoded_keys.get(key) or _encode_key(key)
        kind = type(value)
        if kind is str:
            parts.append(encoded_key + encode_basestring_ascii(value))
        elif kind is int:
            parts.append(encoded_key + int.__repr__(value))
        else:  # None, bools, floats, containers: the encoder's own text
            parts.append(encoded_key + _encode_json(value))
    parts.append('"timestamp":"' + _timestamp(created) + '"')
    return "{" + ",".join(parts) + "}"


_encoded_keys: dict[str, str] = {}


def _encode_key(key: str) -> str:
    encoded = _encoded_keys[key] = _encode_json(key) + ":"
    return encoded


_second_text: tuple[int, str] = (0, "1970-01-01T00:00:00")


def _timestamp(created: float) -> str:
    """``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")``, the date and time
    formatted once per second: rounded to the microsecond half to even, then cut to milliseconds."""
    global _second_text
    second = math.floor(created)
    microseconds = round((created - second) * 1e6)
    if microseconds >= 1_000_000:
        second, microseconds = second + 1, microseconds - 1_000_000
    cached_second, text = _second_text
    if cached_second != second:
        text = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")[:-6]  # without "+00:00"
        _second_text = (second, text)  # a race only formats the same second twice
    return f"{text}.{microseconds // 1000:03d}+00:00"


class JsonEventFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "job_event", None) or {"event": "log", "message": record.getMessage()}
        return render_event(event, record.created)


class StandardErrorHandler(logging.Handler):
    """Writes each record to file descriptor 2 in one ``write``, without going through ``sys.stderr``.

    In a ``dramatiq`` worker process ``sys.stderr`` is a pipe to the master, which copies every
    line to its own standard error (the same place fd 2 of the worker points to): for two lines
    per job that copy cost the master about 36 us of CPU per line, a third of a core at 5,000
    jobs/s. A line up to ``PIPE_BUF`` bytes is written atomically, so lines of several worker
    processes never interleave; a longer one still goes through ``sys.stderr``.

    For the same reason the handler takes no lock: ``logging.Handler.handle`` holds one around
    ``emit``, and with eight worker threads logging two lines per job, a thread that lost the GIL
    while holding it stalled the others (a tenth of a worker's thread time in a no-op drain).
    """

    def handle(self, record: logging.LogRecord) -> bool:
        result = self.filter(record)
        if result:
            if isinstance(result, logging.LogRecord):
                record = result
            self.emit(record)
        return result

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self.format(record))
        except Exception:
            self.handleError(record)

    def write_event(self, event: Mapping[str, Any], created: float) -> None:
        """``log_event``'s direct path: the line the formatter would write, with no ``LogRecord``."""
        try:
            self._write(render_event(event, created))
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": event.get("event"), "job_event": event}))

    def _write(self, text: str) -> None:
        line = (text + "\n").encode("utf-8", errors="replace")
        if len(line) <= select.PIPE_BUF:
            os.write(2, line)
        else:
            assert self.lock is not None  # made by logging.Handler.__init__ (createLock)
            with self.lock:  # to the master's pipe, possibly in several writes: one long line at a time
                sys.stderr.write(line.decode("utf-8"))
                sys.stderr.flush()


def configure_job_logs(stream: IO[str] | None = None) -> None:
    """Write job events as JSON lines to ``stream``, or else to the process's standard error, and only there."""
    if any(isinstance(handler.formatter, JsonEventFormatter) for handler in events_logger.handlers):
        return
    handler = logging.StreamHandler(stream) if stream is not None else StandardErrorHandler()
    handler.setFormatter(JsonEventFormatter())
    events_logger.addHandler(handler)
    events_logger.setLevel(logging.INFO)
    events_logger.propagate = False  # the JSON line is the record; no second, plain-text copy


class JobLogs(Middleware):
    """Emits job.start, job.success and job.failed around every message.

    Sits before Retries in the stack, so its ``after_process_message`` runs after Retries has
    decided whether the job will run again.
    """

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        _started_at.set(time.monotonic())
        log_event("job.start", message, attempt=attempt_of(message))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        started = _started_at.get()
        duration_ms = round((time.monotonic() - started) * 1000) if started is not None else None
        _started_at.set(None)
        if exception is None:
            log_event("job.success", message, duration_ms=duration_ms, attempt=attempt_of(message))
            return
        decision = current_failure.get()
        if decision is None:  # handed back (an interruption): logged as job.interrupted by Retries
            return
        log_event(
            "job.failed",
            message,
            error=f"{type(exception).__name__}: {exception}",
            fatal=decision.fatal,
            will_retry=decision.will_retry,
            attempt=decision.attempt,
            max_attempts=decision.max_attempts,
            duration_ms=duration_ms,
        )

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        _started_at.set(None)
