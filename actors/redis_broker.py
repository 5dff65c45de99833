"""Dramatiq's Redis broker, with malformed message bodies moved to the dead-letter queue.

Dramatiq's RabbitMQ consumer dead-letters a body it cannot decode; its Redis consumer raises,
restarts, and leaves the message stranded in its unacked set, to come back after every worker
restart. This consumer finds the stranded message among its unacked ones (at most ``prefetch`` of
them) and nacks it, so on both brokers a malformed body ends up in the broker's dead-letter
queue, where ``python -m ops dlq reconcile`` records it in the ``dead_letters`` table.

A send whose connection Redis refused gives back the idempotency key it claimed
(``middleware.idempotency.settle_refused_sends``), so the sender's retry is enqueued.
"""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.brokers.redis import RedisBroker as DramatiqRedisBroker
from dramatiq.brokers.redis import _RedisConsumer
from dramatiq.errors import DecodeError

from middleware.idempotency import settle_refused_sends

logger = logging.getLogger("actors.redis_broker.RedisBroker")


class RedisBroker(DramatiqRedisBroker):
    @property
    def consumer_class(self):
        return _DeadLetteringConsumer

    def enqueue(self, message: dramatiq.Message, *, delay: int | None = None) -> dramatiq.Message:
        try:
            return super().enqueue(message, delay=delay)
        except Exception as error:
            settle_refused_sends(self, [message], error)
            raise


class _DeadLetteringConsumer(_RedisConsumer):
    def __next__(self):
        while True:
            try:
                return super().__next__()
            except DecodeError as error:
                self._dead_letter(error.data)

    def _dead_letter(self, data: bytes) -> None:
        broker = self.broker
        acks = f"{broker.namespace}:__acks__.{broker.broker_id}.{self.queue_name}"
        unacked = list(broker.client.smembers(acks))
        bodies = broker.client.hmget(f"{broker.namespace}:{self.queue_name}.msgs", unacked) if unacked else []
        for redis_message_id, body in zip(unacked, bodies, strict=True):
            if body == data:
                broker.do_nack(self.queue_name, redis_message_id.decode())
                logger.error("Moved malformed message %s on %r to its dead-letter queue.",
                             redis_message_id.decode(), self.queue_name)  # fmt: skip
                return
        logger.error("A malformed message on %r could not be found among the unacked ones; it will come back "
                     "when this worker stops.", self.queue_name)  # fmt: skip
