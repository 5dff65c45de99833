"""Per-actor retry policies: the seed's reference policies, as values and on a real worker."""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from middleware.policies.retry_policies import EMAILS, ORDERS, PAYMENTS, RetryPolicy


@pytest.mark.parametrize(
    ("policy", "delays_ms"),
    [(ORDERS, [2_000, 4_000]), (EMAILS, [1_000, 2_000, 4_000, 8_000]), (PAYMENTS, [5_000, 5_000])],
    ids=["orders", "emails", "payments"],
)
def test_reference_policies_wait_as_specified_between_their_attempts(policy: RetryPolicy, delays_ms: list[int]) -> None:
    retried = [n for n in range(1, policy.attempts + 1) if policy.retries_after(n)]
    assert [policy.delay_ms(n, uniform=lambda low, high: 0.0) for n in retried] == delays_ms
    assert not policy.retries_after(policy.attempts)


def test_jitter_spreads_the_delay_by_at_most_its_fraction() -> None:
    policy = RetryPolicy(attempts=3, base_delay_ms=1_000, jitter=0.2)
    assert policy.delay_ms(1, uniform=lambda low, high: low) == 800
    assert policy.delay_ms(1, uniform=lambda low, high: high) == 1_200


def test_exponential_delays_stop_at_the_maximum() -> None:
    policy = RetryPolicy(attempts=30, base_delay_ms=1_000, max_delay_ms=60_000, jitter=0)
    assert policy.delay_ms(20) == 60_000


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attempts": 0, "base_delay_ms": 1}, "attempts must be at least 1"),
        ({"attempts": 3, "base_delay_ms": 1, "backoff": "linear"}, "backoff must be 'exponential' or 'fixed'"),
        ({"attempts": 3, "base_delay_ms": 1, "jitter": 1.5}, "jitter must be a fraction"),
        ({"attempts": 3, "base_delay_ms": 10, "max_delay_ms": 5}, "max_delay_ms >= base_delay_ms"),
    ],
)
def test_a_bad_policy_fails_when_it_is_declared(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**options)


def test_an_actor_runs_exactly_as_many_attempts_as_its_policy_says(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    runs: list[int] = []

    @dramatiq.actor(broker=stub_broker, retry_policy=RetryPolicy(attempts=3, backoff="fixed", base_delay_ms=10))
    def payment() -> None:
        runs.append(len(runs))
        raise ConnectionResetError("the payment gateway hung up")

    payment.send()
    stub_broker.join(payment.queue_name, fail_fast=False)
    stub_worker.join()

    assert runs == [0, 1, 2]
    assert len(stub_broker.dead_letters) == 1
    assert stub_broker.dead_letters[0].options["retries"] == 3
