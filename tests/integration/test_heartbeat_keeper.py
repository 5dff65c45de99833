"""The heartbeat keeper's bookkeeping, against the real Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from dramatiq.brokers.redis import RedisBroker

from middleware.heartbeats import HeartbeatKeeper, heartbeats_key, registry_key
from tests import harness


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_it_beats_for_its_masters_live_workers_only_and_forgets_dead_ones(redis_namespace: str) -> None:
    broker = RedisBroker(url=harness.REDIS_TEST_URL, namespace=redis_namespace, heartbeat_timeout=3_000)
    host, master = socket.gethostname(), os.getppid()
    broker.client.hset(registry_key(broker), mapping={
        "alive": f"{host}:{os.getpid()}:{master}",
        "dead": f"{host}:{dead_pid()}:{master}",
        "other-master": f"{host}:{os.getpid()}:{master + 1}",
        "other-host": f"elsewhere:{os.getpid()}:{master}",
    })  # fmt: skip
    keeper = HeartbeatKeeper(broker, master_pid=master)
    assert keeper.beat() == 1
    assert [member for member, _ in broker.client.zrange(heartbeats_key(broker), 0, -1, withscores=True)] == [b"alive"]
    assert set(broker.client.hkeys(registry_key(broker))) == {b"alive", b"other-master", b"other-host"}
    broker.close()


def test_a_dead_workers_unacked_messages_go_back_to_their_queue(redis_namespace: str) -> None:
    broker = RedisBroker(url=harness.REDIS_TEST_URL, namespace=redis_namespace, heartbeat_timeout=3_000)
    client, ns = broker.client, redis_namespace
    stale = int(time.time() * 1000) - 10_000
    client.zadd(heartbeats_key(broker), {"gone": stale, "gone-idle": stale})
    client.hset(f"{ns}:orders.msgs", "m-1", b"{}")
    client.sadd(f"{ns}:__acks__.gone.orders", "m-1")

    assert HeartbeatKeeper(broker, master_pid=os.getppid()).hand_back_dead_workers_messages() == 1
    assert client.lrange(f"{ns}:orders", 0, -1) == [b"m-1"]
    assert not client.exists(f"{ns}:__acks__.gone.orders")
    assert client.zscore(heartbeats_key(broker), "gone-idle") is None, "a dead worker holding nothing is forgotten"
    broker.close()
