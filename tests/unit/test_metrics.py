"""The Metrics middleware on the StubBroker: what each kind of delivery adds to which series.

This process keeps its metrics in memory (prometheus_client's default registry); each test uses
actors of its own, so its series start empty.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from prometheus_client import REGISTRY
from sqlalchemy import select

from middleware.checkpoints import current_checkpoint, job_checkpoints
from middleware.errors import FatalError
from middleware.metrics import ENQUEUED_AT_OPTION, Metrics, initialize_counters
from middleware.routing import RoutedActor
from middleware.storage.database import Database


@pytest.fixture
def broker(stub_broker: StubBroker) -> StubBroker:
    """The stack's own broker: Metrics is in it, before Retries, where actors/broker.py puts it."""
    assert any(isinstance(middleware, Metrics) for middleware in stub_broker.middleware)
    return stub_broker


@pytest.fixture
def worker(broker: StubBroker) -> Iterator[Worker]:
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    yield worker
    worker.stop()


def value(name: str, actor: str, queue: str = "default", **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"queue_name": queue, "actor_name": actor, **labels}) or 0.0


def drain(broker: StubBroker, worker: Worker) -> None:
    broker.join("default", fail_fast=False)
    worker.join()


def test_a_retried_then_completed_job(broker: StubBroker, worker: Worker) -> None:
    failures = iter([ConnectionError("refused")])

    @dramatiq.actor(broker=broker, actor_name="metrics_recovers", max_retries=2, min_backoff=10)
    def recovers() -> None:
        if (failure := next(failures, None)) is not None:
            raise failure

    recovers.send()
    drain(broker, worker)
    assert value("jobs_retries_total", "metrics_recovers") == 1
    assert value("dramatiq_message_retries_total", "metrics_recovers") == 1
    assert value("jobs_completed_total", "metrics_recovers") == 1
    assert value("dramatiq_messages_total", "metrics_recovers") == 2
    assert value("dramatiq_message_errors_total", "metrics_recovers") == 1
    assert value("jobs_duration_seconds_count", "metrics_recovers", outcome="retried") == 1
    assert value("jobs_duration_seconds_count", "metrics_recovers", outcome="completed") == 1
    assert value("jobs_queue_wait_seconds_count", "metrics_recovers") == 2
    assert value("dramatiq_messages_inprogress", "metrics_recovers") == 0
    assert all(value("jobs_failures_total", "metrics_recovers", kind=kind) == 0 for kind in ("fatal", "retryable"))


@pytest.mark.parametrize(
    ("error", "kind", "attempts"), [(FatalError("HTTP 404"), "fatal", 1), (ConnectionError("refused"), "retryable", 3)]
)
def test_a_job_that_fails_for_good_counts_once_by_kind(
    broker: StubBroker, worker: Worker, error: Exception, kind: str, attempts: int
) -> None:
    name = f"metrics_fails_{kind}"

    @dramatiq.actor(broker=broker, actor_name=name, max_retries=2, min_backoff=10)
    def fails() -> None:
        raise error

    fails.send()
    drain(broker, worker)
    assert value("jobs_failures_total", name, kind=kind) == 1
    assert value("dramatiq_message_rejects_total", name) == 1
    assert value("jobs_dead_letters_recorded_total", name, kind=kind) == 1  # the row DeadLetters wrote
    assert value("jobs_retries_total", name) == attempts - 1
    assert value("jobs_duration_seconds_count", name, outcome="failed") == 1


def test_a_checkpointed_job_past_its_time_limit_is_interrupted_and_resumes(
    broker: StubBroker, worker: Worker, database: Database
) -> None:
    @dramatiq.actor(broker=broker, actor_name="metrics_steps", checkpointed=True, notify_shutdown=True, time_limit=250)
    def steps() -> None:
        checkpoint = current_checkpoint()
        for step in range(0 if checkpoint.position is None else checkpoint.position + 1, 6):
            time.sleep(0.1)  # the step's work; the time limit lands between steps
            with checkpoint.saving(step):
                pass

    message = steps.send()
    drain(broker, worker)
    hits = value("jobs_time_limit_hits_total", "metrics_steps")
    assert hits >= 1
    assert value("jobs_interruptions_total", "metrics_steps", reason="TimeLimitExceeded") == hits
    # A delivery resumes when an earlier one saved a step: on a loaded machine the first may be cut
    # off before its first save, so the resumes are checked against the checkpoint row, not the hits.
    with database.engine.connect() as connection:
        query = select(job_checkpoints.c.resumes).where(job_checkpoints.c.key == message.message_id)
        resumes = connection.scalar(query)
    assert 1 <= resumes <= hits
    assert value("jobs_checkpoint_resumes_total", "metrics_steps") == resumes
    assert value("jobs_checkpoints_saved_total", "metrics_steps") == 6
    assert value("jobs_completed_total", "metrics_steps") == 1
    assert value("jobs_duration_seconds_count", "metrics_steps", outcome="interrupted") == hits


def test_routing_decisions_are_counted_where_messages_are_built(broker: StubBroker) -> None:
    @dramatiq.actor(
        broker=broker,
        actor_name="metrics_routed",
        actor_class=RoutedActor,
        estimate_duration_ms=lambda minutes: minutes * 60_000,
    )
    def routed(minutes: int) -> None:
        pass

    before = {
        route: REGISTRY.get_sample_value(
            "jobs_routing_decisions_total", {"actor_name": "metrics_routed", "queue_name": queue, "route": route}
        )
        or 0
        for route, queue in (("regular", "default"), ("large", "default-large"))
    }
    routed.send(1)
    routed.send(90)
    routed.send(120)
    after = {
        route: REGISTRY.get_sample_value(
            "jobs_routing_decisions_total", {"actor_name": "metrics_routed", "queue_name": queue, "route": route}
        )
        for route, queue in (("regular", "default"), ("large", "default-large"))
    }
    assert {route: after[route] - before[route] for route in after} == {"regular": 1, "large": 2}


def test_each_enqueue_stamps_the_start_of_the_wait(broker: StubBroker) -> None:
    @dramatiq.actor(broker=broker, actor_name="metrics_stamped")
    def stamped() -> None:
        pass

    before_ms = int(time.time() * 1000)
    message = stamped.send()
    assert before_ms <= message.options[ENQUEUED_AT_OPTION] <= time.time() * 1000


def test_counters_exist_at_zero_before_the_first_job(broker: StubBroker) -> None:
    @dramatiq.actor(broker=broker, actor_name="metrics_idle", checkpointed=True, notify_shutdown=True)
    def idle() -> None:
        pass

    assert (
        REGISTRY.get_sample_value(
            "jobs_failures_total", {"queue_name": "default", "actor_name": "metrics_idle", "kind": "fatal"}
        )
        is None
    )
    initialize_counters(broker)
    assert value("jobs_failures_total", "metrics_idle", kind="fatal") == 0
    assert (
        REGISTRY.get_sample_value("jobs_completed_total", {"queue_name": "default", "actor_name": "metrics_idle"}) == 0
    )
    assert value("jobs_checkpoints_saved_total", "metrics_idle") == 0
