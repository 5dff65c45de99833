"""A re-enqueue made while the broker is down is tried again until it is accepted."""

from __future__ import annotations

import dramatiq
import redis

from middleware.brokers.reliable_enqueue import enqueue_until_accepted


class FlakyBroker:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.enqueued: list[tuple[str, int | None]] = []

    def enqueue(self, message: dramatiq.Message, *, delay: int | None = None) -> dramatiq.Message:
        if self.failures:
            self.failures -= 1
            raise redis.ConnectionError("Connection refused")
        self.enqueued.append((message.message_id, delay))
        return message


def test_the_message_is_enqueued_once_the_broker_answers_again() -> None:
    broker = FlakyBroker(failures=2)
    message = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    enqueue_until_accepted(broker, message, delay=100)
    assert broker.enqueued == [(message.message_id, 100)]
