"""A message body that is not a message ends in the dead-letter table; the worker goes on."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pika
import pytest

from tests import harness
from tests.harness import WorkerProcess, run_ops, run_python, wait_until

GARBAGE = b"{this is not a dramatiq message"


def publish_garbage(env: dict[str, str]) -> None:
    if env["BROKER_URL"].startswith("redis"):
        namespace, redis_id = env["REDIS_NAMESPACE"], str(uuid.uuid4())
        client = harness.redis_client()
        client.hset(f"{namespace}:chaos.msgs", redis_id, GARBAGE)
        client.rpush(f"{namespace}:chaos", redis_id)
        return
    connection = pika.BlockingConnection(pika.URLParameters(env["BROKER_URL"]))
    # The worker's consumer declares the queue a moment after the worker says it is ready; a body
    # published before that is unroutable and silently dropped.
    wait_until(lambda: _queue_exists(connection, "chaos"), timeout_s=30, what="the worker to declare chaos")
    connection.channel().basic_publish(exchange="", routing_key="chaos", body=GARBAGE)
    connection.close()


def _queue_exists(connection: pika.BlockingConnection, queue: str) -> bool:
    channel = connection.channel()
    try:
        channel.queue_declare(queue=queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker:  # 404: not declared yet (the broker closes the channel)
        return False
    channel.close()
    return True


def dead_letter_queue_depth(env: dict[str, str]) -> int:
    if env["BROKER_URL"].startswith("redis"):
        return harness.redis_client().hlen(f"{env['REDIS_NAMESPACE']}:chaos.XQ.msgs")
    connection = pika.BlockingConnection(pika.URLParameters(env["BROKER_URL"]))
    depth = connection.channel().queue_declare(queue="chaos.XQ", passive=True).method.message_count
    connection.close()
    return depth


@pytest.mark.parametrize(("broker_env", "database_url"), [("redis", "sqlite"), ("rabbitmq", "sqlite")], indirect=True)
def test_a_malformed_body_is_dead_lettered_and_recorded_by_reconcile(
    broker_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    env = {**broker_env, "DATABASE_URL": database_url}
    marker = tmp_path / "served"
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log", modules=("tests.chaos_actors",))
    try:
        worker.wait_ready()
        publish_garbage(env)
        sent = run_python(env, f"from tests.chaos_actors import succeed; succeed.send({str(marker)!r})")
        assert sent.returncode == 0, sent.stderr
        wait_until(marker.exists, timeout_s=30, what="the good job sent after the malformed one")
        assert worker.process.poll() is None, "the worker keeps serving"
        # RabbitMQ's consumer nacks from its I/O loop, a moment later: wait for the dead letter.
        wait_until(lambda: dead_letter_queue_depth(env) == 1, timeout_s=30, what="the malformed body in chaos.XQ")
    finally:
        worker.stop()

    # RabbitMQ cannot list queues: a queue no actor of this process declares is named.
    reconciled = run_ops(env, "dlq", "reconcile", "--queue", "chaos", "--json")
    assert reconciled.returncode == 0, reconciled.stderr
    assert json.loads(reconciled.stdout) == {"recorded": 1}
    [row] = json.loads(run_ops(env, "dlq", "list", "--json").stdout)["dead_letters"]
    assert (row["queue_name"], row["kind"], row["error_type"]) == ("chaos", "fatal", "DecodeError")
    assert row["error_message"].startswith("malformed message body")
    refused = run_ops(env, "dlq", "requeue", str(row["id"]))
    assert refused.returncode == 1 and "holds a malformed message body" in refused.stderr
    assert "Traceback" not in refused.stderr
