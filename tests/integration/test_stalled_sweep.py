"""The stalled-job sweep against a real Redis and SQLite, in process: which rows it leaves, hands
back and marks lost, and that it reads each queue's messages once per sweep, not once per row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import insert, select

from middleware.checkpoints import job_checkpoints
from middleware.database import Database
from middleware.dead_letters import message_payload
from middleware.job_status import PROCESSING, job_status
from middleware.stalled_jobs import sweep_stalled_jobs
from tests import harness

QUEUE = "sweep"


def test_one_read_of_the_queue_judges_every_stale_row_on_it(sqlite_url: str, redis_namespace: str) -> None:
    broker = RedisBroker(url=harness.REDIS_TEST_URL, namespace=redis_namespace)
    database = Database(sqlite_url)
    try:
        waiting = broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="work", args=(), kwargs={}, options={}))
        lost = [dramatiq.Message(queue_name=QUEUE, actor_name="work", args=(n,), kwargs={}, options={})
                for n in range(2)]  # fmt: skip
        resumable = dramatiq.Message(queue_name=QUEUE, actor_name="work", args=(9,), kwargs={}, options={})
        # A checkpointed job lost before its first save: its delivery's lease claim saved the message.
        claimed = dramatiq.Message(queue_name=QUEUE, actor_name="work", args=(10,), kwargs={}, options={})
        stale = datetime.now(UTC) - timedelta(minutes=5)
        with database.transaction() as connection:
            for message in (waiting, *lost, resumable, claimed):
                connection.execute(insert(job_status).values(
                    message_id=message.message_id, actor_name="work", queue_name=QUEUE, status=PROCESSING,
                    attempts=1, unfinished_deliveries=1, started_at=stale, updated_at=stale,
                ))  # fmt: skip
            connection.execute(insert(job_checkpoints).values(
                key=resumable.message_id, actor_name="work", message_id=resumable.message_id, position=3, saves=4,
                resumes=0, created_at=stale, updated_at=stale, message=message_payload(resumable),
            ))  # fmt: skip
            connection.execute(insert(job_checkpoints).values(
                key=claimed.message_id, actor_name="work", message_id=claimed.message_id, saves=0, resumes=0,
                created_at=stale, updated_at=stale, message=message_payload(claimed), lease_token="dead-delivery",
            ))  # fmt: skip

        reads = []
        pipeline = broker.client.pipeline
        broker.client.pipeline = lambda *args, **kwargs: reads.append(args or kwargs) or pipeline(*args, **kwargs)
        report = sweep_stalled_jobs(broker, database, stalled_after=timedelta(minutes=1))
        broker.client.pipeline = pipeline

        assert report.examined == 5
        assert sorted(report.lost) == sorted(message.message_id for message in lost)
        assert sorted(report.handed_back) == sorted([resumable.message_id, claimed.message_id])
        assert len(reads) == 1  # one snapshot of the queue's hashes for the five rows
        with database.engine.connect() as connection:
            statuses = dict(connection.execute(select(job_status.c.message_id, job_status.c.status)).all())
        assert statuses[waiting.message_id] == PROCESSING  # its message still waits: left alone
        assert {statuses[message.message_id] for message in lost} == {"failed"}
        requeued = broker.client.hkeys(f"{redis_namespace}:{QUEUE}.msgs")
        assert len(requeued) == 3  # the waiting message, and the two with checkpoints enqueued again
    finally:
        broker.close()
        database.dispose()
