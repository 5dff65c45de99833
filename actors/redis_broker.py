"""Dramatiq's Redis broker, acking each message once its job status is saved, and moving malformed
message bodies to the dead-letter queue.

A worker thread hands its message's ack to ``JobStatus.when_saved`` and goes on to its next
message: the ack is sent by the thread that commits the status, right after the commit. Dramatiq
would ack in the worker thread, which would first have to wait for the commit (a quarter of a
no-op drain's rate, measured in bench/README.md). An ack refused by Redis is tried again until
Redis is back, as Dramatiq's worker does; a consumer closes only once its deferred acks are sent.

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
from dramatiq.brokers.redis import RedisBroker as DramatiqRedisBroker
from dramatiq.brokers.redis import _RedisConsumer
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.worker import POST_PROCESS_MESSAGE_RETRY_DELAY_SECS

from middleware.idempotency import settle_refused_sends
from middleware.job_status import JobStatus

logger = logging.getLogger("actors.redis_broker.RedisBroker")


class RedisBroker(DramatiqRedisBroker):
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


class _Consumer(_RedisConsumer):
    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._status = next((each for each in broker.middleware if isinstance(each, JobStatus)), None)
        if self._status is not None:
            self._status.acks_follow_saves()
        self._deferred_acks = 0
        self._acks_sent = threading.Condition()

    def ack(self, message: dramatiq.broker.MessageProxy) -> None:
        if self._status is None:
            super().ack(message)
            return
        with self._acks_sent:
            self._deferred_acks += 1
        self._status.when_saved(message, lambda: self._ack_until_sent(message))

    def _ack_until_sent(self, message: dramatiq.broker.MessageProxy) -> None:
        try:
            while True:
                try:
                    super().ack(message)
                    return
                except ConnectionClosed as error:
                    logger.warning("Could not ack message %s (%s); trying again in %d s.", message.message_id,
                                   error, POST_PROCESS_MESSAGE_RETRY_DELAY_SECS)  # fmt: skip
                    time.sleep(POST_PROCESS_MESSAGE_RETRY_DELAY_SECS)  # Redis is down: nothing to wait on
        finally:
            with self._acks_sent:
                self._deferred_acks -= 1
                self._acks_sent.notify_all()

    def close(self) -> None:
        with self._acks_sent:
            if not self._acks_sent.wait_for(lambda: self._deferred_acks == 0, timeout=CLOSE_TIMEOUT_S):
                logger.error("%d acks on %r were not sent within %.0f s; their messages will run again.",
                             self._deferred_acks, self.queue_name, CLOSE_TIMEOUT_S)  # fmt: skip
        super().close()

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
