"""Dramatiq's Redis broker, acking each message once its job status is saved, and moving malformed
message bodies to the dead-letter queue.

A worker thread hands its message's ack to ``JobStatus.when_saved`` and goes on to its next
message: the thread that commits the status then acks every message of that commit in one round
trip. Dramatiq would ack in the worker thread, one round trip per message, after waiting for the
commit (measured in bench/README.md). An ack refused by Redis is tried again until Redis is back,
as Dramatiq's worker does; a consumer closes only once its deferred acks are sent.

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
import threading
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker as DramatiqRedisBroker
from dramatiq.brokers.redis import _RedisConsumer
from dramatiq.errors import DecodeError
from dramatiq.worker import POST_PROCESS_MESSAGE_RETRY_DELAY_SECS

from middleware.brokers.hook_dispatch import DispatchesToImplementedHooks
from middleware.brokers.redis_keys import bodies_key, unacked_key
from middleware.idempotency import settle_refused_sends
from middleware.job_status import JobStatus

logger = logging.getLogger("actors.redis_broker.RedisBroker")


class RedisBroker(DispatchesToImplementedHooks, DramatiqRedisBroker):
    @property
    def consumer_class(self):
        return _Consumer

    def enqueue(self, message: dramatiq.Message, *, delay: int | None = None) -> dramatiq.Message:
        try:
            return super().enqueue(message, delay=delay)
        except Exception as error:
            settle_refused_sends(self, [message], error)
            raise


#: How long a closing consumer waits for its deferred acks (each waits for a status commit).
CLOSE_TIMEOUT_S = 30.0

#: Between tries of an ack Redis refused: Dramatiq's own delay for its worker threads' acks.
ACK_RETRY_DELAY_S: float = POST_PROCESS_MESSAGE_RETRY_DELAY_SECS

#: Dramatiq's ack (its dispatch script's "ack"), for many messages at once.
_ACK_MANY = """
for i = 1, #ARGV do
    if redis.call("srem", KEYS[1], ARGV[i]) > 0 then
        redis.call("hdel", KEYS[2], ARGV[i])
    end
end
"""


class _Consumer(_RedisConsumer):
    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._status = next((each for each in broker.middleware if isinstance(each, JobStatus)), None)
        if self._status is not None:
            self._status.acks_follow_saves()
        self._deferred_acks = 0
        self._acks_sent = threading.Condition()
        self._ack_many = broker.client.register_script(_ACK_MANY)

    def ack(self, message: dramatiq.broker.MessageProxy) -> None:
        if self._status is None:
            super().ack(message)
            return
        with self._acks_sent:
            self._deferred_acks += 1
        self._status.when_saved(message, self._ack_all)

    def _ack_all(self, messages: list[dramatiq.broker.MessageProxy]) -> None:
        """Ack the messages whose status one commit saved, in one round trip."""
        acks = unacked_key(self.broker, self.broker.broker_id, self.queue_name)
        bodies = bodies_key(self.broker, self.queue_name)
        redis_message_ids = [message.options["redis_message_id"] for message in messages]
        try:
            while True:
                try:
                    self._ack_many(keys=[acks, bodies], args=redis_message_ids)
                    return
                except redis.ConnectionError as error:
                    logger.warning(
                        "Could not ack %d messages on %r (%s); trying again in %s s.",
                        len(messages),
                        self.queue_name,
                        error,
                        ACK_RETRY_DELAY_S,
                    )
                    time.sleep(ACK_RETRY_DELAY_S)  # Redis is down: nothing to wait on
        finally:
            with self._acks_sent:
                for message in messages:
                    self.queued_message_ids.discard(message.message_id)  # as Dramatiq's ack does
                self._deferred_acks -= len(messages)
                self._acks_sent.notify_all()

    def close(self) -> None:
        with self._acks_sent:
            if not self._acks_sent.wait_for(lambda: self._deferred_acks == 0, timeout=CLOSE_TIMEOUT_S):
                logger.error(
                    "%d acks on %r were not sent within %.0f s; their messages will run again.",
                    self._deferred_acks,
                    self.queue_name,
                    CLOSE_TIMEOUT_S,
                )
        super().close()

    def __next__(self):
        while True:
            try:
                return super().__next__()
            except DecodeError as error:
                self._dead_letter(error.data)

    def _dead_letter(self, data: bytes) -> None:
        broker = self.broker
        acks = unacked_key(broker, broker.broker_id, self.queue_name)
        unacked = list(broker.client.smembers(acks))
        bodies = broker.client.hmget(bodies_key(broker, self.queue_name), unacked) if unacked else []
        for redis_message_id, body in zip(unacked, bodies, strict=True):
            if body == data:
                broker.do_nack(self.queue_name, redis_message_id.decode())
                logger.error(
                    "Moved malformed message %s on %r to its dead-letter queue.",
                    redis_message_id.decode(),
                    self.queue_name,
                )
                return
        logger.error(
            "A malformed message on %r could not be found among the unacked ones; it will come back "
            "when this worker stops.",
            self.queue_name,
        )
