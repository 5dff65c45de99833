from __future__ import annotations

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from middleware.routing import RoutedActor


def declare(broker: StubBroker) -> dramatiq.Actor:
    @dramatiq.actor(
        broker=broker,
        actor_class=RoutedActor,
        queue_name="work",
        estimate_duration_ms=lambda *, minutes: minutes * 60_000,
    )
    def work(*, minutes: int) -> None:
        pass

    return work


def test_short_jobs_stay_on_the_regular_queue_with_its_time_limit(stub_broker: StubBroker) -> None:
    message = declare(stub_broker).send(minutes=1)
    assert message.queue_name == "work"
    assert message.options["time_limit"] == 5_000
    assert message.options["expected_duration_ms"] == 60_000
    assert stub_broker.queues["work"].qsize() == 1


def test_long_jobs_go_to_the_large_queue_with_the_long_time_limit(stub_broker: StubBroker) -> None:
    message = declare(stub_broker).send(minutes=2)
    assert message.queue_name == "work-large"
    assert message.options["time_limit"] == 50_000
    assert stub_broker.queues["work-large"].qsize() == 1
    assert stub_broker.queues["work"].qsize() == 0


def test_the_large_queue_is_declared_with_the_actor(stub_broker: StubBroker) -> None:
    declare(stub_broker)
    assert {"work", "work-large"} <= stub_broker.get_declared_queues()


def test_a_duration_given_by_the_caller_wins_over_the_estimate(stub_broker: StubBroker) -> None:
    work = declare(stub_broker)
    message = work.send_with_options(kwargs={"minutes": 1}, expected_duration_ms=3_600_000)
    assert message.queue_name == "work-large"


def test_a_time_limit_given_by_the_caller_is_kept(stub_broker: StubBroker) -> None:
    message = declare(stub_broker).send_with_options(kwargs={"minutes": 2}, time_limit=7)
    assert message.queue_name == "work-large" and message.options["time_limit"] == 7


def test_a_routed_actor_without_the_routing_middleware_says_what_is_missing() -> None:
    broker = StubBroker(middleware=[])

    @dramatiq.actor(broker=broker, actor_class=RoutedActor)
    def work() -> None:
        pass

    with pytest.raises(RuntimeError, match="DurationRouting"):
        work.send()
