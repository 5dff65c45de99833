"""The heartbeat keeper's bookkeeping, against the real Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from middleware.heartbeats import HeartbeatKeeper, KeeperWatchdog, heartbeats_key, register, registry_key
from middleware.policies.poison_messages import HANDED_BACK
from tests import harness


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_it_beats_for_its_masters_live_workers_only_and_forgets_dead_ones(redis_namespace: str) -> None:
    broker = RedisBroker(url=harness.REDIS_TEST_URL, namespace=redis_namespace, heartbeat_timeout=3_000)
    host, master = socket.gethostname(), os.getppid()
    broker.client.hset(
        registry_key(broker),
        mapping={
            "alive": f"{host}:{os.getpid()}:{master}",
            "dead": f"{host}:{dead_pid()}:{master}",
            "other-master": f"{host}:{os.getpid()}:{master + 1}",
            "other-host": f"elsewhere:{os.getpid()}:{master}",
        },
    )
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


def test_the_messages_it_hands_back_are_marked_so_their_next_delivery_counts_itself(redis_namespace: str) -> None:
    broker = RedisBroker(url=harness.REDIS_TEST_URL, namespace=redis_namespace, heartbeat_timeout=3_000)
    client, ns = broker.client, redis_namespace
    keeper = HeartbeatKeeper(broker, master_pid=os.getppid())
    message = dramatiq.Message(
        queue_name="orders", actor_name="transcribe", args=(7,), kwargs={}, options={"redis_message_id": "m-1"}
    )
    client.hset(f"{ns}:orders.msgs", mapping={"m-1": message.encode(), "m-bad": b"not a message"})

    for death in (1, 2):  # the worker that got it back dies too
        client.zadd(heartbeats_key(broker), {f"gone-{death}": int(time.time() * 1000) - 10_000})
        client.sadd(f"{ns}:__acks__.gone-{death}.orders", "m-1", "m-bad", "m-acked")
        client.delete(f"{ns}:orders")
        assert keeper.hand_back_dead_workers_messages() == 1
        handed_back = dramatiq.Message.decode(client.hget(f"{ns}:orders.msgs", "m-1"))
        assert handed_back.options[HANDED_BACK] == death
        assert (handed_back.message_id, handed_back.args) == (message.message_id, message.args)

    assert client.hget(f"{ns}:orders.msgs", "m-bad") == b"not a message", "a malformed body is left for the consumer"
    assert not client.hexists(f"{ns}:orders.msgs", "m-acked"), "an acked message's body is not brought back"
    broker.close()


def test_a_worker_whose_heartbeat_process_died_beats_for_itself_and_says_so(
    redis_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = RedisBroker(url=harness.REDIS_TEST_URL, namespace=redis_namespace, heartbeat_timeout=3_000)
    register(broker)
    keeper = HeartbeatKeeper(broker, master_pid=os.getppid())
    watchdog = KeeperWatchdog(broker, interval_ms=1_000)

    keeper.beat()
    watchdog.check()
    watchdog.check()
    assert not watchdog.beating_for_itself, "a keeper that beats is trusted"

    # The keeper dies: its last beat ages past the watchdog's threshold, well inside the window.
    stale = int(time.time() * 1000) - watchdog.stale_after_ms - 1
    broker.client.zadd(heartbeats_key(broker), {broker.broker_id: stale})
    watchdog.check()
    assert not watchdog.beating_for_itself, "one stale reading is not enough"
    watchdog.check()
    assert watchdog.beating_for_itself
    assert broker.client.zscore(heartbeats_key(broker), broker.broker_id) > stale
    assert watchdog.stale_after_ms + 2 * watchdog.interval_s * 1000 < broker.heartbeat_timeout
    assert "stopped beating for worker" in caplog.text
    broker.close()


def test_after_redis_restarts_empty_the_worker_registers_again_instead_of_alarming(redis_namespace: str) -> None:
    broker = RedisBroker(url=harness.REDIS_TEST_URL, namespace=redis_namespace, heartbeat_timeout=3_000)
    watchdog = KeeperWatchdog(broker, interval_ms=1_000)
    watchdog._registered_at -= 60  # registered long ago, then Redis lost everything
    watchdog.check()
    watchdog.check()
    assert broker.client.hexists(registry_key(broker), broker.broker_id)
    assert not watchdog.beating_for_itself
    assert HeartbeatKeeper(broker, master_pid=os.getppid()).beat() == 1, "the keeper knows it again"
    broker.close()
