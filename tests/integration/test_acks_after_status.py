"""On Redis a worker thread does not wait for its job's status commit: the ack follows the commit."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator

import dramatiq
import pytest
from sqlalchemy.engine import make_url

from actors import redis_broker
from actors.redis_broker import RedisBroker, _Consumer
from middleware.job_status import COMPLETED, JobStatus, get_job
from middleware.storage.database import Database
from middleware.storage.group_commit import Write
from middleware.storage.status_writer import FINISH, RUN, StatusWriter
from tests import harness
from tests.tcp_proxy import TcpProxy

QUEUE = "acks"


@pytest.fixture
def broker(redis_namespace: str, database: Database) -> Iterator[RedisBroker]:
    broker = RedisBroker(
        url=harness.REDIS_TEST_URL,
        namespace=redis_namespace,
        middleware=[JobStatus(database=database, start_write_behind=True)],
    )
    yield broker
    broker.close()


def hold_status_commits(database: Database) -> sqlite3.Connection:
    """A transaction holding SQLite's write lock: every status commit waits until it ends."""
    holder = sqlite3.connect(make_url(database.url).database)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def start_worker(broker: RedisBroker) -> dramatiq.Worker:
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    return worker


def unacked_key(broker: RedisBroker, namespace: str) -> str:
    return f"{namespace}:__acks__.{broker.broker_id}.{QUEUE}"


def send_one_job(broker: RedisBroker) -> tuple[dramatiq.Message, list[int]]:
    """A job sent, and the list its runs append to."""
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def job() -> None:
        ran.append(1)

    return job.send(), ran


def test_the_worker_thread_goes_on_while_the_status_commit_waits_and_the_acks_follow_the_commit(
    broker: RedisBroker, database: Database, redis_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[int] = []
    ack_round_trips: list[list[str]] = []
    finished_per_commit: list[list[str]] = []  # the messages whose last status write each commit made
    ack_all, apply = _Consumer._ack_all, StatusWriter.apply

    def record_ack_all(consumer: _Consumer, messages: list) -> None:
        ack_round_trips.append([message.message_id for message in messages])
        ack_all(consumer, messages)

    def record_apply(writer: StatusWriter, cursor: object, writes: list[Write]) -> None:
        apply(writer, cursor, writes)
        finished = [
            write.params[0] if write.kind == RUN else write.params[-1]
            for write in writes
            if write.kind in (RUN, FINISH)
        ]
        if finished:
            finished_per_commit.append(finished)

    monkeypatch.setattr(_Consumer, "_ack_all", record_ack_all)
    monkeypatch.setattr(StatusWriter, "apply", record_apply)

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def job(n: int) -> None:
        ran.append(n)

    first, second = job.send(1), job.send(2)
    holder = hold_status_commits(database)
    worker = start_worker(broker)
    unacked = unacked_key(broker, redis_namespace)
    try:
        harness.wait_until(lambda: sorted(ran) == [1, 2], timeout_s=10, what="both jobs run by the one worker thread")
        assert broker.client.scard(unacked) == 2, "neither message is acked before its status is saved"
        statuses = holder.execute(
            "SELECT status FROM job_status WHERE message_id IN (?, ?)", (first.message_id, second.message_id)
        ).fetchall()
        assert statuses == [("queued",), ("queued",)]
        holder.rollback()
        harness.wait_until(lambda: broker.client.scard(unacked) == 0, timeout_s=10, what="both acks sent")
        assert ack_round_trips == finished_per_commit, "one round trip per commit, for the messages it finished"
        acked = sorted(message_id for trip in ack_round_trips for message_id in trip)
        assert acked == sorted([first.message_id, second.message_id])
        rows = [get_job(database, message.message_id) for message in (first, second)]
        assert [(row["status"], row["attempts"], row["unfinished_deliveries"]) for row in rows] == [
            (COMPLETED, 1, 0),
            (COMPLETED, 1, 0),
        ]
        assert all(row["started_at"] is not None and row["finished_at"] >= row["started_at"] for row in rows)
    finally:
        holder.close()
        worker.stop()


def test_a_stopping_worker_sends_its_deferred_acks_before_its_consumer_closes(
    broker: RedisBroker, database: Database, redis_namespace: str
) -> None:
    message, ran = send_one_job(broker)
    holder = hold_status_commits(database)
    worker = start_worker(broker)
    unacked = unacked_key(broker, redis_namespace)
    try:
        harness.wait_until(lambda: ran == [1], timeout_s=10, what="the job run")
        stopping = threading.Thread(target=worker.stop)
        stopping.start()
        threads = [*worker.workers, *worker.consumers.values()]
        harness.wait_until(
            lambda: not any(thread.is_alive() for thread in threads),
            timeout_s=10,
            what="the worker and consumer threads stopped",
        )
        stopping.join(timeout=1.0)  # what must not happen: closing the consumer with its ack unsent
        assert stopping.is_alive() and broker.client.sismember(unacked, message.options["redis_message_id"])
    finally:
        holder.rollback()
        holder.close()
    stopping.join(timeout=10)
    assert not stopping.is_alive()
    assert broker.client.scard(unacked) == 0 and broker.client.hlen(f"{redis_namespace}:{QUEUE}.msgs") == 0
    assert get_job(database, message.message_id)["status"] == COMPLETED


def test_an_ack_that_redis_refuses_is_sent_once_redis_is_back(
    database: Database, redis_namespace: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(redis_broker, "ACK_RETRY_DELAY_S", 0.2)
    proxy = TcpProxy(("127.0.0.1", 6379))
    url = harness.REDIS_TEST_URL.replace(":6379/", f":{proxy.port}/")
    broker = RedisBroker(
        url=url, namespace=redis_namespace, middleware=[JobStatus(database=database, start_write_behind=True)]
    )
    message, ran = send_one_job(broker)
    holder = hold_status_commits(database)
    worker = start_worker(broker)
    unacked = unacked_key(broker, redis_namespace)
    client = harness.redis_client()
    try:
        harness.wait_until(lambda: ran == [1], timeout_s=10, what="the job run")
        proxy.cut()
        holder.rollback()  # the status is committed; its ack finds Redis unreachable
        harness.wait_until(lambda: "Could not ack 1 messages" in caplog.text, timeout_s=10, what="a refused ack")
        assert client.sismember(unacked, message.options["redis_message_id"])
        proxy.restore()
        harness.wait_until(lambda: client.scard(unacked) == 0, timeout_s=10, what="the ack sent again")
        assert client.hlen(f"{redis_namespace}:{QUEUE}.msgs") == 0
        assert get_job(database, message.message_id)["status"] == COMPLETED
    finally:
        holder.close()
        proxy.restore()
        worker.stop()
        broker.close()
        proxy.close()
        client.close()
