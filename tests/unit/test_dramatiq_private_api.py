"""Every use of Dramatiq's private API, guarded: a Dramatiq release that changes one fails here,
naming the file of ours to re-check, before it fails in production.

- ``actors/redis_broker.py`` subclasses ``_RedisConsumer`` (its constructor, ``queued_message_ids``,
  ``ack``, ``close``, ``__next__``), uses ``POST_PROCESS_MESSAGE_RETRY_DELAY_SECS``, and acks many
  messages with a copy of the ``ack`` command of Dramatiq's Redis dispatch script.
- ``middleware/brokers/hook_dispatch.py`` re-makes ``Broker.emit_before`` and ``emit_after``.
- ``middleware/dead_letters.py``, ``error_reporting.py`` and ``metrics.py`` read ``message._exception``,
  which ``MessageProxy.stuff_exception`` sets.
- ``middleware/brokers/redis_keys.py`` names Dramatiq's Redis key layout.

A fingerprint is of Dramatiq's source: when one changes, read the new source, adapt ours if needed,
then record the new fingerprint here.
"""

from __future__ import annotations

import hashlib
import inspect
import uuid
from pathlib import Path

import dramatiq
import dramatiq.brokers.redis
import dramatiq.worker
from dramatiq.broker import Broker, MessageProxy
from dramatiq.brokers.redis import RedisBroker as DramatiqRedisBroker
from dramatiq.brokers.redis import _RedisConsumer

from actors.redis_broker import _ACK_MANY, _Consumer
from middleware.brokers.redis_keys import bodies_key, unacked_key
from tests import harness


def fingerprint(source: str) -> str:
    return hashlib.sha256(" ".join(source.split()).encode()).hexdigest()[:16]


def dispatch_script_command(command: str) -> str:
    script = (Path(dramatiq.brokers.redis.__file__).parent / "redis" / "dispatch.lua").read_text()
    start = script.index(f'elseif command == "{command}" then')
    return script[start : script.index("elseif command", start + 1)]


def test_the_redis_consumer_we_subclass_keeps_its_constructor_state_and_methods() -> None:
    assert list(inspect.signature(_RedisConsumer.__init__).parameters) == [
        "self",
        "broker",
        "queue_name",
        "prefetch",
        "timeout",
    ]
    consumer = _RedisConsumer.__new__(_RedisConsumer)
    _RedisConsumer.__init__(consumer, broker=None, queue_name="q", prefetch=1, timeout=1)
    assert isinstance(consumer.queued_message_ids, set), "our deferred acks discard from it, as Dramatiq's ack does"
    for name in ("ack", "__next__"):
        assert name in vars(_RedisConsumer), f"_RedisConsumer.{name}, which {_Consumer.__qualname__} overrides"
    assert callable(_RedisConsumer.close), "Consumer.close, which our consumer extends to wait for its acks"


def test_the_worker_keeps_its_retry_delay_for_acks() -> None:
    assert isinstance(dramatiq.worker.POST_PROCESS_MESSAGE_RETRY_DELAY_SECS, int | float)


def test_our_bulk_ack_does_what_dramatiqs_dispatch_script_does_for_one_ack() -> None:
    ack = dispatch_script_command("ack")
    assert 'redis.call("srem", queue_acks, message_id) > 0' in ack
    assert 'redis.call("hdel", queue_messages, message_id)' in ack
    assert '"srem", KEYS[1], ARGV[i]) > 0' in _ACK_MANY and '"hdel", KEYS[2], ARGV[i]' in _ACK_MANY
    assert fingerprint(ack) == "afaa95cb4ced8969", "Dramatiq's ack changed: re-check actors/redis_broker.py _ACK_MANY"


def test_the_hooks_we_re_make_are_dramatiqs_as_we_read_them() -> None:
    """hook_dispatch.py calls each hook only on the middleware that implement it, with Dramatiq's own
    error handling: this is the source it was made from."""
    assert {name: fingerprint(inspect.getsource(getattr(Broker, name))) for name in ("emit_before", "emit_after")} == {
        "emit_before": "6e2a4c7ae18a0643",
        "emit_after": "ca1bbbd4f4902e5f",
    }, "Dramatiq changed Broker.emit_*: re-check middleware/brokers/hook_dispatch.py, then update these fingerprints"


def test_a_message_proxy_keeps_the_exception_stuffed_into_it_as_message_exception() -> None:
    proxy = MessageProxy(dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={}))
    error = ValueError("the job failed")
    proxy.stuff_exception(error)
    assert proxy._exception is error


def test_the_redis_key_layout_we_name_is_where_dramatiq_keeps_bodies_and_unacked_ids() -> None:
    namespace = f"rjtest-keys-{uuid.uuid4().hex[:8]}"
    broker = DramatiqRedisBroker(url=harness.REDIS_TEST_URL, namespace=namespace)
    try:
        broker.declare_queue("layout")
        message = broker.enqueue(dramatiq.Message(queue_name="layout", actor_name="a", args=(), kwargs={}, options={}))
        redis_message_id = message.options["redis_message_id"]
        assert broker.client.hexists(bodies_key(broker, "layout"), redis_message_id)
        consumer = broker.consume("layout", prefetch=1, timeout=100)
        assert next(consumer) is not None
        assert broker.client.sismember(unacked_key(broker, broker.broker_id, "layout"), redis_message_id)
        consumer.close()
    finally:
        broker.close()
        harness.delete_redis_namespace(namespace)
