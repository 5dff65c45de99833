"""Re-enqueueing from inside a worker, without losing the message when the broker blips.

A retry or a hand-back is a new enqueue made just before the worker acks the message it came
from. If that enqueue failed and the hook's error were swallowed (as Dramatiq does with hook
errors), the ack would delete the only copy. So it is tried until the broker accepts it, the
way Dramatiq's own worker retries an ack: the worker thread waits, its message stays unacked.
"""

from __future__ import annotations

import logging
import time

import dramatiq
import redis
from dramatiq.errors import BrokerConnectionError

logger = logging.getLogger("middleware.brokers.reliable_enqueue")

_CONNECTION_ERRORS = (BrokerConnectionError, redis.ConnectionError, redis.TimeoutError)
MAX_PAUSE_S = 5.0


def enqueue_until_accepted(
    broker: dramatiq.Broker, message: dramatiq.Message | dramatiq.MessageProxy, *, delay: int | None
) -> None:
    pause_s = 0.1
    while True:
        try:
            # Dramatiq types enqueue's message as a Message, but its own Retries re-enqueues a MessageProxy.
            broker.enqueue(message, delay=delay)  # type: ignore[arg-type]  # a proxy, as in Dramatiq's Retries
            return
        except _CONNECTION_ERRORS as error:
            logger.warning(
                "Could not re-enqueue message %s (%s); trying again in %.1f s. It stays unacked "
                "until then, so it cannot be lost.",
                message.message_id,
                error,
                pause_s,
            )
            time.sleep(pause_s)  # backing off from a broker that is down: nothing to wait on
            pause_s = min(MAX_PAUSE_S, pause_s * 2)
