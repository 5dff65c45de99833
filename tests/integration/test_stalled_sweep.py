"""The stalled-job sweep against a real Redis and SQLite, in process: which rows it leaves, hands
back and marks lost; that it scans each queue's messages once per sweep, not once per row, in an
order that a message moving on meanwhile cannot escape; and that Redis sends ids, not bodies."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, xq_name
from dramatiq.encoder import JSONEncoder, PickleEncoder
from dramatiq.middleware import CurrentMessage
from sqlalchemy import insert, select

from middleware.checkpoints import job_checkpoints
from middleware.dead_letters import message_payload
from middleware.job_status import COMPLETED, PROCESSING, JobStatus, count_jobs, get_job, job_status
from middleware.operations.stalled_jobs import sweep_stalled_jobs
from middleware.policies.poison_messages import HANDED_BACK
from middleware.retries import Retries
from middleware.storage.database import Database
from tests import harness

QUEUE = "sweep"


@pytest.fixture
def broker(redis_namespace: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=harness.REDIS_TEST_URL, namespace=redis_namespace)
    yield broker
    broker.close()


def test_one_read_of_the_queue_judges_every_stale_row_on_it(
    broker: RedisBroker, database: Database, redis_namespace: str
) -> None:
    waiting = broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="work", args=(), kwargs={}, options={}))
    lost = [dramatiq.Message(queue_name=QUEUE, actor_name="work", args=(n,), kwargs={}, options={}) for n in range(2)]
    resumable = dramatiq.Message(queue_name=QUEUE, actor_name="work", args=(9,), kwargs={}, options={})
    # A checkpointed job lost before its first save: its delivery's lease claim saved the message.
    claimed = dramatiq.Message(queue_name=QUEUE, actor_name="work", args=(10,), kwargs={}, options={})
    for message in (waiting, *lost, resumable, claimed):
        insert_stale_processing_row(database, message.message_id)
    stale = datetime.now(UTC) - timedelta(minutes=5)
    with database.transaction() as connection:
        connection.execute(
            insert(job_checkpoints).values(
                key=resumable.message_id,
                actor_name="work",
                message_id=resumable.message_id,
                position=3,
                saves=4,
                resumes=0,
                created_at=stale,
                updated_at=stale,
                message=message_payload(resumable),
            )
        )
        connection.execute(
            insert(job_checkpoints).values(
                key=claimed.message_id,
                actor_name="work",
                message_id=claimed.message_id,
                saves=0,
                resumes=0,
                created_at=stale,
                updated_at=stale,
                message=message_payload(claimed),
                lease_token="dead-delivery",
            )
        )

    scanned = record_scans(broker)
    report = sweep_stalled_jobs(broker, database, stalled_after=timedelta(minutes=1))

    assert report.examined == 5
    assert sorted(report.lost) == sorted(message.message_id for message in lost)
    assert sorted(report.handed_back) == sorted([resumable.message_id, claimed.message_id])
    # One scan of the queue's hashes for the five rows, the delay queue first; the waiting message
    # was found in the queue, so its dead letters were searched for the four others only.
    assert scanned == [
        (f"{redis_namespace}:{name}.msgs", ids) for name, ids in ((dq_name(QUEUE), 5), (QUEUE, 5), (xq_name(QUEUE), 4))
    ]
    with database.engine.connect() as connection:
        statuses = dict(connection.execute(select(job_status.c.message_id, job_status.c.status)).all())
    assert statuses[waiting.message_id] == PROCESSING  # its message still waits: left alone
    assert {statuses[message.message_id] for message in lost} == {"failed"}
    requeued = broker.client.hkeys(f"{redis_namespace}:{QUEUE}.msgs")
    assert len(requeued) == 3  # the waiting message, and the two with checkpoints enqueued again
    bodies = [dramatiq.Message.decode(body) for body in broker.client.hvals(f"{redis_namespace}:{QUEUE}.msgs")]
    assert {message.message_id: message.options.get(HANDED_BACK) for message in bodies} == {
        waiting.message_id: None,
        resumable.message_id: 1,
        claimed.message_id: 1,
    }, "a job handed back counts its next delivery before it runs"


def test_a_delayed_message_that_reaches_its_queue_during_the_sweep_is_not_taken_for_lost(
    broker: RedisBroker, database: Database, redis_namespace: str
) -> None:
    # A retry waiting in the delay queue for longer than the sweep's threshold.
    delayed = broker.enqueue(
        dramatiq.Message(queue_name=QUEUE, actor_name="work", args=(), kwargs={}, options={}), delay=600_000
    )
    insert_stale_processing_row(database, delayed.message_id)
    delay_hash, queue_hash = (f"{redis_namespace}:{name}.msgs" for name in (dq_name(QUEUE), QUEUE))
    [(redis_message_id, body)] = broker.client.hgetall(delay_hash).items()

    def its_time_comes() -> None:  # as Dramatiq's worker moves it: into the queue, then out of the delay queue
        broker.client.hset(queue_hash, redis_message_id, body)
        broker.client.hdel(delay_hash, redis_message_id)

    scanned = record_scans(broker, after_first=its_time_comes)
    report = sweep_stalled_jobs(broker, database, stalled_after=timedelta(minutes=1))

    assert (report.examined, report.lost, report.handed_back) == (1, [], [])
    assert get_job(database, delayed.message_id)["status"] == PROCESSING
    assert scanned[0][0] == delay_hash, "it moved right after the sweep's first look"


def test_on_rabbitmq_stale_rows_are_reported_and_left_to_the_broker(
    rabbitmq_url: str, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    broker = RabbitmqBroker(url=rabbitmq_url)
    message = dramatiq.Message(queue_name=QUEUE, actor_name="work", args=(), kwargs={}, options={})
    insert_stale_processing_row(database, message.message_id)
    try:
        with caplog.at_level(logging.INFO, logger="middleware.operations.stalled_jobs"):
            report = sweep_stalled_jobs(broker, database, stalled_after=timedelta(minutes=1))
    finally:
        broker.close()
    assert report.to_dict() == {"examined": 1, "handed_back": [], "lost": [], "unverified": [message.message_id]}
    assert get_job(database, message.message_id)["status"] == PROCESSING
    assert "the broker cannot be asked whether it holds their messages" in caplog.text


def test_bodies_of_another_encoder_are_searched_for_the_ids_themselves(broker: RedisBroker, database: Database) -> None:
    dramatiq.set_encoder(PickleEncoder())
    try:
        waiting = broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="work", args=(), kwargs={}, options={}))
        lost = dramatiq.Message(queue_name=QUEUE, actor_name="work", args=(), kwargs={}, options={})
        for message in (waiting, lost):
            insert_stale_processing_row(database, message.message_id)
        report = sweep_stalled_jobs(broker, database, stalled_after=timedelta(minutes=1))
    finally:
        dramatiq.set_encoder(JSONEncoder())
    assert (report.examined, report.lost) == (2, [lost.message_id])
    assert get_job(database, waiting.message_id)["status"] == PROCESSING


def test_a_long_queue_is_searched_in_redis_and_only_the_ids_found_come_back(
    broker: RedisBroker, database: Database, redis_namespace: str
) -> None:
    padding = "x" * 5_000
    pipeline = broker.client.pipeline(transaction=False)
    waiting = [
        dramatiq.Message(
            queue_name=QUEUE, actor_name="work", args=(padding,), kwargs={}, options={"redis_message_id": f"r{n}"}
        )
        for n in range(2_500)
    ]
    for message in waiting:
        pipeline.hset(f"{redis_namespace}:{QUEUE}.msgs", message.options["redis_message_id"], message.encode())
    pipeline.execute()
    held, lost = waiting[1_777], dramatiq.Message(queue_name=QUEUE, actor_name="work", args=(), kwargs={}, options={})
    for message in (held, lost):
        insert_stale_processing_row(database, message.message_id)

    sent_before = broker.client.info("stats")["total_net_output_bytes"]
    report = sweep_stalled_jobs(broker, database, stalled_after=timedelta(minutes=1))
    sent = broker.client.info("stats")["total_net_output_bytes"] - sent_before

    assert (report.examined, report.lost) == (2, [lost.message_id])
    assert get_job(database, held.message_id)["status"] == PROCESSING
    # The queue holds 12.5 MB of bodies; reading them, as the sweep once did, would send them all.
    assert sent < 200_000, f"Redis sent {sent} bytes for a sweep of two rows"


def insert_stale_processing_row(database: Database, message_id: str) -> None:
    stale = datetime.now(UTC) - timedelta(minutes=5)
    with database.transaction() as connection:
        connection.execute(
            insert(job_status).values(
                message_id=message_id,
                actor_name="work",
                queue_name=QUEUE,
                status=PROCESSING,
                attempts=1,
                unfinished_deliveries=1,
                started_at=stale,
                updated_at=stale,
            )
        )


def record_scans(broker: RedisBroker, *, after_first: Callable[[], None] | None = None) -> list[tuple[str, int]]:
    """The sweep's scans, as (hash, how many ids it looked for); ``after_first`` runs after the first."""
    scanned: list[tuple[str, int]] = []
    evalsha = broker.client.evalsha

    def recording(sha: str, numkeys: int, key: str, *args: Any) -> Any:
        reply = evalsha(sha, numkeys, key, *args)
        if not key.endswith(".msgs"):  # the broker's own scripts (the hand-back's enqueue)
            return reply
        scanned.append((key, len(args) - 2))  # the cursor, how bodies are encoded, then the ids
        if after_first is not None and len(scanned) == 1:
            after_first()
        return reply

    broker.client.evalsha = recording
    return scanned


def test_jobs_retrying_through_the_delay_queue_are_never_taken_for_lost_by_a_sweep_running_all_along(
    sqlite_url: str, redis_namespace: str
) -> None:
    """Real Dramatiq moves (retries into the delay queue, delayed messages back into the queue)
    under a sweep that judges every processing row, over and over. The sweep's scan order relies on
    the order of Dramatiq's own moves, which this checks against the installed Dramatiq: the scan in
    the wrong order (the queue before the delay queue) marked live jobs lost in 5 of 5 such runs."""
    database = Database(sqlite_url)
    middleware = [CurrentMessage(), JobStatus(database=database), Retries(min_backoff=20, max_backoff=150)]
    broker = RedisBroker(url=harness.REDIS_TEST_URL, namespace=redis_namespace, middleware=middleware)
    chance = random.Random(7)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=50)
    def flaky(n: int) -> None:
        time.sleep(chance.random() / 100)  # a few ms of work, so that deliveries overlap the sweeps
        if chance.random() < 0.6:
            raise RuntimeError(f"job {n} fails this time")

    broker.emit_after("process_boot")
    worker = Worker(broker, worker_timeout=50, worker_threads=8)
    worker.start()
    sent = [flaky.send(n) for n in range(1_000)]
    lost: list[str] = []
    sweeps = 0
    sweeper_broker = RedisBroker(url=harness.REDIS_TEST_URL, namespace=redis_namespace)
    try:

        def all_finished() -> bool:
            nonlocal sweeps
            lost.extend(sweep_stalled_jobs(sweeper_broker, database, stalled_after=timedelta(0)).lost)
            sweeps += 1
            return count_jobs(database, status=COMPLETED) == len(sent)

        harness.wait_until(all_finished, timeout_s=300, interval_s=0.001, what="every job to complete")
    finally:
        worker.stop()
        broker.close()
        sweeper_broker.close()
        database.dispose()
    assert sweeps >= 50 and lost == []
