"""Prometheus metrics of the workers: Dramatiq's message metrics, plus what long jobs need.

Every metric is defined here, at module level, so all of them reach the worker deployment's one
endpoint (``middleware.serving.metrics_server``) once ``PROMETHEUS_MULTIPROC_DIR`` is set, which
``actors`` does before anything imports this module. Labels are ``queue_name`` (without ``.DQ``)
and ``actor_name`` unless a metric says otherwise. Every Gauge has an explicit multiprocess mode.

1. :class:`Metrics` counts each delivery from Dramatiq's hooks (after Retries has decided, so it
   knows a retry from a final failure) and from the job events of ``middleware.job_logs``
   (checkpoints saved and resumed, dead letters recorded).
2. Code that knows something no hook sees calls a helper: :func:`count_routing` (where a message
   is built), :func:`count_transcribed_segment` (the transcription actor),
   :func:`count_recovery_requeues` (the heartbeat process that hands back dead workers' jobs) and
   :func:`count_hard_limit_kill` (the watcher of hard time limits).
3. With an exporter, the ``dramatiq`` master starts it as a process of its own; each worker
   process first checks that the port is free and stops with exit code 2 if it is not.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.common import current_millis, q_name
from dramatiq.middleware import CurrentMessage, Middleware, TimeLimitExceeded
from prometheus_client import Counter, Gauge, Histogram

from middleware.boot_checks import stop_worker_boot
from middleware.dead_letters import KINDS, kind_of
from middleware.job_logs import add_event_listener
from middleware.policies.failure_decision import current_failure

logger = logging.getLogger("middleware.metrics.Metrics")

ENQUEUED_AT_OPTION = "enqueued_at_ms"

HOUR_S = 3600
#: Up to 6 hours: a transcription of a long recording takes an hour or more, so Dramatiq's
#: histogram (whose last bucket is 15 minutes) would put every one of them in +Inf.
DURATION_BUCKETS_S = (
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    900,
    1200,
    1800,
    2700,
    HOUR_S,
    1.5 * HOUR_S,
    2 * HOUR_S,
    3 * HOUR_S,
    4 * HOUR_S,
    6 * HOUR_S,
    float("inf"),
)
#: Up to a day: a long job can wait behind others for hours.
QUEUE_WAIT_BUCKETS_S = (
    0.01,
    0.05,
    0.1,
    0.5,
    1,
    5,
    10,
    30,
    60,
    300,
    600,
    1800,
    HOUR_S,
    2 * HOUR_S,
    4 * HOUR_S,
    12 * HOUR_S,
    24 * HOUR_S,
    float("inf"),
)

MESSAGE_LABELS = ("queue_name", "actor_name")

# Dramatiq's own names and labels, so dashboards made for its middleware keep working.
messages_total = Counter("dramatiq_messages_total", "Messages processed (every delivery).", MESSAGE_LABELS)
message_errors_total = Counter("dramatiq_message_errors_total", "Deliveries that raised.", MESSAGE_LABELS)
message_retries_total = Counter("dramatiq_message_retries_total", "Failed deliveries to be retried.", MESSAGE_LABELS)
message_rejects_total = Counter("dramatiq_message_rejects_total", "Messages dead-lettered.", MESSAGE_LABELS)
messages_inprogress = Gauge(
    "dramatiq_messages_inprogress", "Messages being processed now.", MESSAGE_LABELS, multiprocess_mode="livesum"
)
delayed_messages_inprogress = Gauge(
    "dramatiq_delayed_messages_inprogress",
    "Delayed messages held in worker memory until their eta.",
    MESSAGE_LABELS,
    multiprocess_mode="livesum",
)

job_duration_seconds = Histogram(
    "jobs_duration_seconds",
    "How long one delivery ran, by outcome: completed, retried, failed, interrupted (handed back), skipped.",
    (*MESSAGE_LABELS, "outcome"),
    buckets=DURATION_BUCKETS_S,
)
queue_wait_seconds = Histogram(
    "jobs_queue_wait_seconds",
    "Time from enqueue (or eta) to the start of a delivery.",
    MESSAGE_LABELS,
    buckets=QUEUE_WAIT_BUCKETS_S,
)
jobs_completed_total = Counter("jobs_completed_total", "Jobs completed.", MESSAGE_LABELS)
jobs_retries_total = Counter("jobs_retries_total", "Failed attempts that will be retried.", MESSAGE_LABELS)
jobs_failures_total = Counter(
    "jobs_failures_total",
    "Jobs failed for good, by error kind: fatal, retryable (retries exhausted), poison.",
    (*MESSAGE_LABELS, "kind"),
)
dead_letters_recorded_total = Counter(
    "jobs_dead_letters_recorded_total", "Rows written to the dead_letters table.", (*MESSAGE_LABELS, "kind")
)
interruptions_total = Counter(
    "jobs_interruptions_total",
    "Deliveries handed back without spending an attempt (Shutdown, TimeLimitExceeded, "
    "HandBack, CheckpointBusy, CheckpointSuperseded).",
    (*MESSAGE_LABELS, "reason"),
)
time_limit_hits_total = Counter("jobs_time_limit_hits_total", "Deliveries stopped by their time limit.", MESSAGE_LABELS)
checkpoints_saved_total = Counter("jobs_checkpoints_saved_total", "Checkpoints committed.", MESSAGE_LABELS)
checkpoint_resumes_total = Counter(
    "jobs_checkpoint_resumes_total", "Deliveries that resumed from a saved checkpoint.", MESSAGE_LABELS
)
routing_decisions_total = Counter(
    "jobs_routing_decisions_total",
    "Messages routed by expected duration, counted where the message is built.",
    ("actor_name", "queue_name", "route"),
)
escalations_total = Counter(
    "jobs_escalations_total",
    "Routed jobs stopped by the regular queue's time limit and moved to the large queue (labelled "
    "with the regular queue).",
    MESSAGE_LABELS,
)
hard_limit_kills_total = Counter(
    "jobs_hard_limit_kills_total",
    "Worker processes killed because a job ran HARD_LIMIT_GRACE_MS past its time limit (counted by the watcher).",
    MESSAGE_LABELS,
)
transcribed_segments_total = Counter(
    "jobs_transcribed_segments_total", "Transcript segments transcribed and stored.", ("queue_name",)
)
transcribed_audio_seconds_total = Counter(
    "jobs_transcribed_audio_seconds_total", "Seconds of audio transcribed and stored.", ("queue_name",)
)
recovery_requeues_total = Counter(
    "jobs_recovery_requeues_total", "Messages of dead workers handed back to their queue.", ("queue_name",)
)

_delivery_started: ContextVar[float | None] = ContextVar("metrics_delivery_started", default=None)

#: The job events counted, by name: the counter and whether the event carries a dead letter's kind.
_EVENT_COUNTERS: Mapping[str, Counter] = {
    "checkpoint.saved": checkpoints_saved_total,
    "checkpoint.resumed": checkpoint_resumes_total,
    "job.escalated": escalations_total,
}


def message_labels(message: dramatiq.MessageProxy) -> tuple[str, str]:
    return q_name(message.queue_name), message.actor_name


@dataclass(frozen=True)
class _DeliveryMetrics:
    """The children every delivery of one (queue, actor) updates, looked up once: ``labels()``
    costs 2 us a call, and a delivery made six of them."""

    inprogress: Any
    queue_wait: Any
    completed: Any
    processed: Any
    completed_duration: Any

    @classmethod
    def of(cls, labels: tuple[str, str]) -> _DeliveryMetrics:
        return cls(
            inprogress=messages_inprogress.labels(*labels),
            queue_wait=queue_wait_seconds.labels(*labels),
            completed=jobs_completed_total.labels(*labels),
            processed=messages_total.labels(*labels),
            completed_duration=job_duration_seconds.labels(*labels, "completed"),
        )


class Metrics(Middleware):
    """Counts deliveries, outcomes and waits. Sits before Retries: its after-hooks run after Retries'.

    Parameters:
      exporter: a module-level function the ``dramatiq`` master runs as a process of its own to
        serve the endpoint; None when this deployment's endpoint is served elsewhere, or not at all.
      bind, port: the exporter's address, checked by every worker process before it takes a message.
    """

    def __init__(self, *, exporter: Callable[[], int] | None = None, bind: str = "127.0.0.1", port: int = 0) -> None:
        self.exporter = exporter
        self.bind = bind
        self.port = port
        self._delayed_lock = threading.Lock()
        self._delayed: set[str] = set()
        self._deliveries: dict[tuple[str, str], _DeliveryMetrics] = {}
        add_event_listener(count_job_event)

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [self.exporter] if self.exporter is not None else []

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        if self.exporter is None:
            return
        from middleware.serving.metrics_server import MetricsPortTaken, check_port_free

        try:
            check_port_free(self.bind, self.port)
        except (MetricsPortTaken, OSError) as error:
            stop_worker_boot(str(error))

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        initialize_counters(broker)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:  # this process's jobs in progress and held messages are nobody's now
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(os.getpid(), directory)

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None) -> None:
        # Options set here are encoded with the message: the start of its wait in its queue. A
        # delayed message moved to its queue at its eta is enqueued again, and stamped again.
        message.options[ENQUEUED_AT_OPTION] = current_millis()

    def before_delay_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        with self._delayed_lock:
            if message.message_id in self._delayed:
                return
            self._delayed.add(message.message_id)
        delayed_messages_inprogress.labels(*message_labels(message)).inc()

    def after_ack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._release_delayed(message)  # a held message is acked when it moves to its queue at its eta

    def after_nack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._release_delayed(message)
        labels = message_labels(message)
        message_rejects_total.labels(*labels).inc()
        jobs_failures_total.labels(*labels, kind_of(getattr(message, "_exception", None))).inc()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        metrics = self._delivery_metrics(message_labels(message))
        now_ms = current_millis()
        _delivery_started.set(time.monotonic())
        metrics.inprogress.inc()
        since_ms = message.options.get(ENQUEUED_AT_OPTION, message.message_timestamp)
        metrics.queue_wait.observe(max(0, now_ms - since_ms) / 1000)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        labels = message_labels(message)
        if exception is None:
            outcome = "completed"
            self._delivery_metrics(labels).completed.inc()
        else:
            message_errors_total.labels(*labels).inc()
            if isinstance(exception, TimeLimitExceeded):
                time_limit_hits_total.labels(*labels).inc()
            decision = current_failure.get()
            if decision is None:  # handed back after an interruption (Retries publishes no decision)
                outcome = "interrupted"
                interruptions_total.labels(*labels, type(exception).__name__).inc()
            elif decision.will_retry:
                outcome = "retried"
                message_retries_total.labels(*labels).inc()
                jobs_retries_total.labels(*labels).inc()
            else:
                outcome = "failed"  # counted by kind in after_nack, which poison messages reach too
        self._finish(labels, outcome)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._finish(message_labels(message), "skipped")

    def _finish(self, labels: tuple[str, str], outcome: str) -> None:
        started = _delivery_started.get()
        _delivery_started.set(None)
        metrics = self._delivery_metrics(labels)
        metrics.processed.inc()
        if started is None:
            return  # skipped before this middleware's before-hook ran
        metrics.inprogress.dec()
        if outcome == "completed":
            metrics.completed_duration.observe(time.monotonic() - started)
        else:
            job_duration_seconds.labels(*labels, outcome).observe(time.monotonic() - started)

    def _delivery_metrics(self, labels: tuple[str, str]) -> _DeliveryMetrics:
        metrics = self._deliveries.get(labels)
        if metrics is None:  # a race here only builds the same children twice
            metrics = self._deliveries[labels] = _DeliveryMetrics.of(labels)
        return metrics

    def _release_delayed(self, message: dramatiq.MessageProxy) -> None:
        with self._delayed_lock:
            if message.message_id not in self._delayed:
                return
            self._delayed.discard(message.message_id)
        delayed_messages_inprogress.labels(*message_labels(message)).dec()


#: Interruption reasons, as the exception names Retries hands back for.
INTERRUPTION_REASONS = ("Shutdown", "TimeLimitExceeded", "HandBack", "CheckpointBusy", "CheckpointSuperseded")


def initialize_counters(broker: dramatiq.Broker) -> None:
    """Create every actor's counters (and main histograms) at 0. Prometheus sees a counter's first
    increase only from a sample before it: a counter born at 1 (the first fatal error) would show
    no rate at all."""
    for actor in broker.actors.values():
        # A routed actor also runs on its large queue (middleware.routing.RoutedActor.queue_names).
        queues = getattr(actor, "queue_names", (actor.queue_name,))
        for labels in ((queue_name, actor.actor_name) for queue_name in queues):
            for counter in (
                messages_total,
                message_errors_total,
                message_retries_total,
                message_rejects_total,
                jobs_completed_total,
                jobs_retries_total,
                time_limit_hits_total,
            ):
                counter.labels(*labels)
            for kind in KINDS:
                jobs_failures_total.labels(*labels, kind)
                dead_letters_recorded_total.labels(*labels, kind)
            for reason in INTERRUPTION_REASONS:
                interruptions_total.labels(*labels, reason)
            queue_wait_seconds.labels(*labels)
            job_duration_seconds.labels(*labels, "completed")  # what the duration quantiles are taken of
            hard_limit_kills_total.labels(*labels)
            if len(queues) > 1:
                escalations_total.labels(*labels)
            if actor.options.get("checkpointed"):
                checkpoints_saved_total.labels(*labels)
                checkpoint_resumes_total.labels(*labels)


def count_job_event(record: Mapping[str, Any]) -> None:
    """Count the job events no Dramatiq hook sees (a listener of ``middleware.job_logs``)."""
    event = record.get("event")
    labels = (record.get("queue", ""), record.get("actor", ""))
    if isinstance(event, str) and event in _EVENT_COUNTERS:
        _EVENT_COUNTERS[event].labels(*labels).inc()
    elif event == "job.dead_lettered" and record.get("dead_letter_id") is not None:
        dead_letters_recorded_total.labels(*labels, record.get("kind", "")).inc()


def count_routing(actor_name: str, queue_name: str, *, large: bool) -> None:
    routing_decisions_total.labels(actor_name, q_name(queue_name), "large" if large else "regular").inc()


def count_transcribed_segment(audio_seconds: float) -> None:
    """One segment stored by the running job (called from the actor, in its worker thread)."""
    message = CurrentMessage.get_current_message()
    queue_name = q_name(message.queue_name) if message is not None else ""
    transcribed_segments_total.labels(queue_name).inc()
    transcribed_audio_seconds_total.labels(queue_name).inc(audio_seconds)


def count_hard_limit_kill(queue_name: str, actor_name: str) -> None:
    """One worker process killed by the hard-time-limit watcher, for the job it was stuck in."""
    hard_limit_kills_total.labels(q_name(queue_name), actor_name).inc()


def count_recovery_requeues(queue_name: str, messages: int) -> None:
    if messages > 0:
        recovery_requeues_total.labels(q_name(queue_name)).inc(messages)
