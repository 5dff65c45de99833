"""Error reporting to Sentry: one event per job that failed for good, never one per attempt.

Sentry's Dramatiq integration captures every failed attempt, and its logging integration turns
the worker's ERROR line of every failed attempt into an event: a job retried five times pages
five times. Here:

1. :func:`init_error_reporting` runs before the broker is built (``actors`` calls it), without the
   Dramatiq integration and with log records as breadcrumbs only, never events.
2. :class:`ErrorReporting` sends one event from ``after_nack``, which runs exactly once for every
   message that will not run again: a fatal error, retries exhausted, a poison message. It
   carries the final exception and is tagged ``error_kind`` (fatal, retryable, poison),
   ``actor``, ``queue``, ``attempt`` and ``message_id``.
3. A failed attempt that will be retried, and a job handed back after an interruption, leave a
   breadcrumb (in the worker process's trail, which the next event carries).
4. Nothing sensitive leaves: local variables are not sent (a job's arguments would be in them);
   the message is attached with the values of ``SENSITIVE_FIELDS`` keys redacted
   (``middleware.policies.redaction``), and those values are scrubbed from the error text and breadcrumbs.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

import dramatiq
import sentry_sdk
from dramatiq.common import q_name
from dramatiq.middleware import Middleware
from sentry_sdk.integrations.dedupe import DedupeIntegration
from sentry_sdk.integrations.logging import LoggingIntegration, ignore_logger
from sentry_sdk.types import Event

from middleware.dead_letters import kind_of, message_payload
from middleware.job_logs import EVENTS_LOGGER, attempt_of
from middleware.policies.failure_decision import current_failure
from middleware.policies.redaction import (
    positional_parameter_names,
    redact,
    redact_message,
    scrub,
    scrub_deep,
    sensitive_values,
)

logger = logging.getLogger("middleware.error_reporting.ErrorReporting")

FLUSH_TIMEOUT_S = 2.0
WORKER_THREAD_LOGGER = "dramatiq.worker.WorkerThread"


def init_error_reporting(dsn: str, *, environment: str, release: str | None, sensitive_fields: Collection[str]) -> bool:
    """Start the Sentry client for this process; False (and nothing changed) if one is already running."""
    if sentry_sdk.get_client().is_active():
        logger.info("Sentry is already set up in this process; job failures are reported through it.")
        return False
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        # The defaults would add the excepthook, threading and auto-enabled integrations; only these:
        default_integrations=False,
        integrations=[LoggingIntegration(level=logging.WARNING, event_level=None), DedupeIntegration()],
        include_local_variables=False,
        send_default_pii=False,
        before_send=lambda event, hint: redact_event(event, sensitive_fields),
        before_breadcrumb=lambda crumb, hint: _redact_breadcrumb(crumb, sensitive_fields, ()),
    )
    # Job events are breadcrumbs of their own (below); their log lines would only crowd the trail.
    ignore_logger(EVENTS_LOGGER)
    # Dramatiq's worker logs every failed attempt with the message's arguments, unredacted.
    ignore_logger(WORKER_THREAD_LOGGER)
    return True


class ErrorReporting(Middleware):
    """Reports final failures; leaves breadcrumbs for retries. Sits before Retries in the stack,
    so its ``after_process_message`` runs after Retries has decided.

    Parameters:
      sensitive_fields: keys whose values never reach Sentry (``SENSITIVE_FIELDS``).
    """

    def __init__(self, *, sensitive_fields: Collection[str]) -> None:
        self.sensitive_fields = tuple(sensitive_fields)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or not sentry_sdk.get_client().is_active():
            return
        decision = current_failure.get()
        data = {"message_id": message.message_id, "actor": message.actor_name, "queue": q_name(message.queue_name)}
        if decision is None:
            sentry_sdk.add_breadcrumb(
                category="job.interrupted",
                level="info",
                data={**data, "reason": type(exception).__name__},
                message=f"{message.actor_name} {message.message_id} was handed back ({type(exception).__name__}); "
                "no attempt spent",
            )
        elif decision.will_retry:
            # Scrubbed now: the trail goes with whatever event comes next, another job's included.
            values = _sensitive_values_of(broker, message, self.sensitive_fields)
            error = scrub(f"{type(exception).__name__}: {exception}", values)
            sentry_sdk.add_breadcrumb(
                category="job.retry",
                level="warning",
                message=f"{message.actor_name} {message.message_id}: attempt {decision.attempt} of "
                f"{decision.max_attempts} failed ({error}); retrying in {decision.delay_ms} ms",
                data={
                    **data,
                    "attempt": decision.attempt,
                    "max_attempts": decision.max_attempts,
                    "delay_ms": decision.delay_ms,
                    "error": error,
                },
            )

    def after_nack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        if sentry_sdk.get_client().is_active():
            report_final_failure(broker, message, sensitive_fields=self.sensitive_fields)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Worker processes end with os._exit, so the SDK's atexit flush never runs.
        if sentry_sdk.get_client().is_active():
            sentry_sdk.flush(timeout=FLUSH_TIMEOUT_S)


def report_final_failure(
    broker: dramatiq.Broker, message: dramatiq.Message | dramatiq.MessageProxy, *, sensitive_fields: Collection[str]
) -> str | None:
    """Send one event for a message that will not run again; returns the event id."""
    exception = getattr(message, "_exception", None)
    decision = current_failure.get()
    kind = kind_of(exception)
    attempt = decision.attempt if decision is not None else attempt_of(message)
    queue = q_name(message.queue_name)
    parameters = positional_parameter_names(broker, message.actor_name)
    payload = message_payload(message)
    values = sensitive_values(payload, sensitive_fields, parameter_names=parameters)
    with sentry_sdk.new_scope() as scope:
        for name, value in (
            ("error_kind", kind),
            ("actor", message.actor_name),
            ("queue", queue),
            ("attempt", attempt),
            ("message_id", message.message_id),
        ):
            scope.set_tag(name, str(value))
        scope.set_context(
            "job",
            {
                "message_id": message.message_id,
                "actor": message.actor_name,
                "queue": queue,
                "error_kind": kind,
                "attempt": attempt,
                "max_attempts": decision.max_attempts if decision is not None else None,
                "reason": decision.classification.reason if decision is not None else None,
                "message": redact_message(payload, sensitive_fields, parameter_names=parameters),
            },
        )
        scope.add_event_processor(lambda event, hint: redact_event(event, sensitive_fields, values))
        if exception is not None:
            return sentry_sdk.capture_exception(exception)
        return sentry_sdk.capture_message(f"{message.actor_name} {message.message_id} was dead-lettered", "error")


def redact_event(event: Event, sensitive_fields: Collection[str], values: Collection[str] = ()) -> Event:
    """The event with sensitive keys redacted and the known sensitive ``values`` scrubbed from its text.

    Only the parts that carry job data are touched (never ids, timestamps or the SDK's own fields).
    """
    for exception in (event.get("exception") or {}).get("values") or ():
        exception["value"] = scrub(exception.get("value"), values)
    # Each key spelled out: an Event is a TypedDict, indexed by literal keys only.
    if isinstance(event.get("extra"), Mapping):
        event["extra"] = scrub_deep(redact(event["extra"], sensitive_fields), values)
    if isinstance(event.get("contexts"), Mapping):
        event["contexts"] = scrub_deep(redact(event["contexts"], sensitive_fields), values)
    if isinstance(event.get("logentry"), Mapping):
        event["logentry"] = scrub_deep(event["logentry"], values)
    breadcrumbs = event.get("breadcrumbs")
    crumbs = breadcrumbs.get("values") if isinstance(breadcrumbs, Mapping) else breadcrumbs
    if isinstance(crumbs, list):  # not the SDK's AnnotatedValue, which never reaches an event processor
        for index, crumb in enumerate(crumbs):
            crumbs[index] = _redact_breadcrumb(crumb, sensitive_fields, values)
    return event


def _redact_breadcrumb(
    crumb: dict[str, Any], sensitive_fields: Collection[str], values: Collection[str]
) -> dict[str, Any]:
    crumb["message"] = scrub(crumb.get("message"), values)
    if isinstance(crumb.get("data"), Mapping):
        crumb["data"] = scrub_deep(redact(crumb["data"], sensitive_fields), values)
    return crumb


def _sensitive_values_of(
    broker: dramatiq.Broker, message: dramatiq.Message | dramatiq.MessageProxy, fields: Collection[str]
) -> set[str]:
    parameters = positional_parameter_names(broker, message.actor_name)
    return sensitive_values(message_payload(message), fields, parameter_names=parameters)
