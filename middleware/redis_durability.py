"""Say at worker boot when the Redis broker keeps too little to survive a restart with its jobs.

Job status, checkpoints and dead letters live in SQL, and the stalled-job sweep hands back a
running checkpointed job whose message Redis lost. A job still waiting in a queue lives only in
Redis, though: a Redis without an append-only file loses it when it restarts (with snapshots
only, every job sent since the last one). Dramatiq cannot tell, so each worker process checks
Redis's own settings once at boot and logs a WARNING naming the fix. The embedded default
(``actors/embedded_redis.py``) runs with its append-only file on.
"""

from __future__ import annotations

import logging

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

logger = logging.getLogger("middleware.redis_durability.RedisDurability")

FIX = "set appendonly yes (appendfsync everysec, or always to lose nothing) in its configuration"


class RedisDurability(Middleware):
    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        if not isinstance(broker, RedisBroker):
            return
        try:
            problem = durability_problem(broker.client)
        except redis.ResponseError as error:  # managed services often refuse or rename CONFIG
            logger.info(
                "Could not read the Redis broker's persistence settings (%s); make sure it keeps "
                "an append-only file, or a Redis restart loses the jobs waiting in its queues.",
                error,
            )
            return
        except redis.RedisError as error:  # unreachable: the worker's consumers report it soon enough
            logger.info("Could not check the Redis broker's persistence settings: %s", error)
            return
        if problem is not None:
            logger.warning("The Redis broker %s: a Redis restart loses %s. To keep them, %s.", *problem, FIX)


def durability_problem(client: redis.Redis) -> tuple[str, str] | None:
    """None if Redis keeps an append-only file; otherwise (what it keeps, which jobs a restart loses)."""
    if client.config_get("appendonly").get("appendonly") == "yes":
        return None
    snapshots = client.config_get("save").get("save", "")
    if snapshots:
        return (
            f"keeps no append-only file, only snapshots (save {snapshots!r})",
            "every job sent since the last snapshot",
        )
    return "persists nothing (no append-only file, no snapshots)", "every job waiting in its queues"
