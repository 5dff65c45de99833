"""Explicit worker heartbeats for the Redis broker, and a deterministic hand-back of dead workers' jobs.

Dramatiq's Redis workers beat only when their consumers poll the broker, and a dead worker's
unacked messages come back only when random "maintenance" runs (0.1 % of commands) after a 60 s
timeout: 111 to 459 s measured here. Lowering the timeout is no fix, because a worker whose job
holds the GIL cannot poll, or beat from any of its threads, and would look dead.

1. Each worker process registers ``broker_id -> host:pid:master_pid`` when it boots.
2. A separate process (a Dramatiq *fork* of the worker's master, so it has its own GIL) beats
   every ``interval_ms`` for every registered worker of its master whose process is alive,
   whatever that process is doing.
3. The same process hands back, every interval, the unacked messages of any worker whose
   heartbeat is older than the liveness window, by running Dramatiq's own maintenance script
   on each declared queue: deterministic, not by chance. It first marks each of those messages
   (the ``handed_back`` option, a count), so that its next delivery counts itself as a delivery
   before it runs (``middleware.job_status``: the poison count of a message whose worker dies).

A SIGKILLed worker stops beating at once, so its job runs again about one window later; a live
worker is never taken for dead, however long its job holds the GIL.

4. The ``dramatiq`` master does not watch its forks: if the heartbeat process dies, nothing
   restarts it, and its live workers would be taken for dead after one window and their jobs
   run twice. So each worker process also watches its own heartbeat: when it goes stale, the
   worker beats for itself (from a thread, so now a long GIL hold could be taken for death) and
   logs a critical error once, until the worker is restarted.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import DecodeError
from dramatiq.middleware import Middleware

from middleware.brokers.redis_keys import bodies_key, unacked_key
from middleware.metrics import count_recovery_requeues
from middleware.policies.poison_messages import HANDED_BACK
from middleware.serving.processes import process_alive

logger = logging.getLogger("middleware.heartbeats.WorkerHeartbeats")

DEFAULT_INTERVAL_MS = 1_000

#: Replaces the bodies of messages still held (field still in the hash), never brings one back.
_REPLACE_HELD_BODIES = """
local replaced = 0
for i = 1, #ARGV, 2 do
    if redis.call("hexists", KEYS[1], ARGV[i]) == 1 then
        redis.call("hset", KEYS[1], ARGV[i], ARGV[i + 1])
        replaced = replaced + 1
    end
end
return replaced
"""


def registry_key(broker: RedisBroker) -> str:
    return f"{broker.namespace}:__worker_processes__"


def heartbeats_key(broker: RedisBroker) -> str:
    return f"{broker.namespace}:__heartbeats__"  # the sorted set Dramatiq's own script reads


class WorkerHeartbeats(Middleware):
    """Registers each worker process, and has the master start ``fork`` (the beating process).

    Parameters:
      fork: a module-level function that runs :class:`HeartbeatKeeper` until stopped; it is
        started by the ``dramatiq`` master as a process of its own.
    """

    def __init__(self, *, fork: Callable[[], int], interval_ms: int = DEFAULT_INTERVAL_MS) -> None:
        self.fork = fork
        self.interval_ms = interval_ms
        self._watchdog: KeeperWatchdog | None = None

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [self.fork]

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if isinstance(broker, RedisBroker):
            register(broker)
            self._watchdog = KeeperWatchdog(broker, interval_ms=self.interval_ms)
            self._watchdog.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if isinstance(broker, RedisBroker):
            if self._watchdog is not None:
                self._watchdog.stop()
            broker.client.hdel(registry_key(broker), broker.broker_id)


def register(broker: RedisBroker) -> None:
    """Make this worker process known to its master's heartbeat process."""
    identity = f"{socket.gethostname()}:{os.getpid()}:{os.getppid()}"
    broker.client.hset(registry_key(broker), broker.broker_id, identity)


class KeeperWatchdog(threading.Thread):
    """In a worker process: beats for the worker itself once its heartbeat process stops beating."""

    def __init__(self, broker: RedisBroker, *, interval_ms: int) -> None:
        super().__init__(name="KeeperWatchdog", daemon=True)
        self.broker = broker
        # The keeper beats every interval: a heartbeat this old, seen twice, means it has stopped,
        # found before the liveness window after which other keepers take this worker for dead.
        self.stale_after_ms = max(3 * interval_ms // 2, broker.heartbeat_timeout // 2)
        self.interval_s = broker.heartbeat_timeout / 10_000
        self.beating_for_itself = False
        self._stale_checks = 0
        self._registered_at = time.monotonic()
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                self.check()
            except (redis.ConnectionError, redis.TimeoutError):
                continue  # Redis is down: nobody can take this worker for dead meanwhile

    def check(self) -> None:
        client, broker_id = self.broker.client, self.broker.broker_id
        now_ms = int(time.time() * 1000)
        last_beat = client.zscore(heartbeats_key(self.broker), broker_id)
        # Never beaten yet: as old as the registration (the keeper beats new workers within a tick).
        age_ms = now_ms - last_beat if last_beat is not None else (time.monotonic() - self._registered_at) * 1000
        if age_ms < self.stale_after_ms:
            self._stale_checks = 0
            return
        if not client.hexists(registry_key(self.broker), broker_id):
            register(self.broker)  # Redis restarted empty: the keeper beats again once it knows us
            self._registered_at = time.monotonic()
            return
        self._stale_checks += 1
        if self._stale_checks < 2 and not self.beating_for_itself:
            return
        if not self.beating_for_itself:
            self.beating_for_itself = True
            logger.critical(
                "The heartbeat process of master %d stopped beating for worker %d; the worker now beats for "
                "itself, so a job holding the GIL longer than %d ms could be taken for dead. Restart this worker.",
                os.getppid(),
                os.getpid(),
                self.broker.heartbeat_timeout,
            )
        client.zadd(heartbeats_key(self.broker), {broker_id: now_ms})


class HeartbeatKeeper:
    """One tick beats for this master's live workers and hands back dead workers' messages."""

    def __init__(self, broker: RedisBroker, *, master_pid: int, host: str | None = None) -> None:
        self.broker = broker
        self.master_pid = master_pid
        self.host = host or socket.gethostname()
        self._hand_back_from = 0.0
        self._replace_held_bodies = broker.client.register_script(_REPLACE_HELD_BODIES)

    def tick(self) -> None:
        try:
            self.beat()
        except (redis.ConnectionError, redis.TimeoutError):
            # After an outage every heartbeat is old, the live workers' too. Wait one window after
            # Redis is back, so every keeper has beaten for its workers before any hands back.
            self._hand_back_from = time.monotonic() + self.broker.heartbeat_timeout / 1000
            raise
        if time.monotonic() >= self._hand_back_from:
            self.hand_back_dead_workers_messages()

    def beat(self) -> int:
        """Refresh the heartbeat of every live worker process of this master; forget dead ones."""
        client = self.broker.client
        now_ms = int(time.time() * 1000)
        alive, dead = {}, []
        for broker_id, identity in client.hgetall(registry_key(self.broker)).items():
            host, pid, master_pid = identity.decode().rsplit(":", 2)
            if host != self.host or int(master_pid) != self.master_pid:
                continue  # another master's worker: its own keeper beats for it
            if process_alive(int(pid)):
                alive[broker_id] = now_ms
            else:
                dead.append(broker_id)
        if alive:
            client.zadd(heartbeats_key(self.broker), alive)
        if dead:
            client.hdel(registry_key(self.broker), *dead)
        return len(alive)

    def hand_back_dead_workers_messages(self) -> int:
        """Run Dramatiq's maintenance on every queue a dead worker holds messages of.

        The queues are read from the dead workers' unacked sets, not from the declared queues:
        this process need not have imported every actor module the workers did.
        """
        client, broker = self.broker.client, self.broker
        now_ms = int(time.time() * 1000)
        dead = client.zrangebyscore(heartbeats_key(broker), 0, now_ms - broker.heartbeat_timeout)
        queues: dict[str, int] = {}  # queue -> messages the dead workers hold (counted for the metrics)
        for worker_id in dead:
            prefix = unacked_key(broker, worker_id.decode(), "")
            held = [key.decode()[len(prefix) :] for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            if not held:
                client.zrem(heartbeats_key(broker), worker_id)  # dead and holding nothing: forget it
            for queue_name in held:
                held_messages = self.mark_handed_back(f"{prefix}{queue_name}", queue_name)
                queues[queue_name] = queues.get(queue_name, 0) + held_messages
        for queue_name, messages in sorted(queues.items()):
            # Dramatiq's dispatch script runs maintenance for the queue a command names; "requeue"
            # with no message ids does nothing else.
            broker.scripts["dispatch"](
                args=[
                    "requeue",
                    now_ms,
                    queue_name,
                    broker.broker_id,
                    broker.heartbeat_timeout,
                    broker.dead_message_ttl,
                    1,
                    broker._max_unpack_size(),
                ],
                keys=[broker.namespace],
            )
            logger.info("Handed back a dead worker's messages on %r (%d).", queue_name, messages)
            count_recovery_requeues(queue_name, messages)
        return len(queues)

    def mark_handed_back(self, acks_key: str, queue_name: str) -> int:
        """Count one more hand-back in the options of each message of a dead worker's unacked set;
        returns how many it holds. A body that cannot be decoded is left as it is."""
        client = self.broker.client
        redis_message_ids = list(client.smembers(acks_key))
        if not redis_message_ids:
            return 0
        bodies = bodies_key(self.broker, queue_name)
        replacements: list[bytes] = []
        for redis_message_id, body in zip(redis_message_ids, client.hmget(bodies, redis_message_ids), strict=True):
            if body is None:
                continue  # acked meanwhile: the worker was alive after all
            try:
                message = dramatiq.Message.decode(body)
            except DecodeError:
                continue  # dead-lettered by the next consumer that fetches it (actors/redis_broker.py)
            options = {**message.options, HANDED_BACK: message.options.get(HANDED_BACK, 0) + 1}
            replacements += [redis_message_id, message.copy(options=options).encode()]
        if replacements:
            self._replace_held_bodies(keys=[bodies], args=replacements)
        return len(redis_message_ids)


def run_keeper(broker: RedisBroker, *, interval_ms: int = DEFAULT_INTERVAL_MS, stop: Callable[[], bool]) -> None:
    keeper = HeartbeatKeeper(broker, master_pid=os.getppid())
    logger.info(
        "Beating for the workers of master %d every %d ms; liveness window %d ms.",
        keeper.master_pid,
        interval_ms,
        broker.heartbeat_timeout,
    )
    while not stop():
        started = time.monotonic()
        try:
            keeper.tick()
        except Exception:
            logger.exception("Heartbeat tick failed; trying again in %d ms.", interval_ms)
        time.sleep(max(0.0, interval_ms / 1000 - (time.monotonic() - started)))  # the beat's own cadence
