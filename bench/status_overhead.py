"""What job status costs: drain rate of no-op jobs with and without the JobStatus middleware.

    .venv/bin/python -m bench.status_overhead [--jobs 2000] [--rounds 3] [--database sqlite|postgresql]

Runs both variants alternately (A B A B ...) in one process against the real Redis on loopback
(its own key prefix, deleted afterwards), with an in-process worker of 8 threads, and prints the
median jobs/s of each and their ratio. Everything else in the stack is the same in both.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import dramatiq
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AgeLimit, Callbacks, CurrentMessage, Pipelines, ShutdownNotifications, TimeLimit
from sqlalchemy import create_engine, text

from middleware.dead_letters import DeadLetters
from middleware.idempotency import Idempotency
from middleware.job_logs import JobLogs
from middleware.job_status import JobStatus
from middleware.retries import Retries
from middleware.storage.database import Database, metadata

REDIS_URL = "redis://127.0.0.1:6379/14"
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def stack(database: Database, *, with_status: bool) -> list:
    middleware = [
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        CurrentMessage(),
        JobLogs(),
        DeadLetters(database=database),
        Idempotency(database=database),
    ]
    if with_status:
        middleware.append(JobStatus(database=database))
    return [*middleware, Retries(max_retries=0)]


def drain_rate(database: Database, *, with_status: bool, jobs: int) -> float:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    broker = RedisBroker(url=REDIS_URL, namespace=namespace, middleware=stack(database, with_status=with_status))

    @dramatiq.actor(broker=broker, queue_name="bench")
    def noop() -> None:
        pass

    try:
        for _ in range(jobs):
            noop.send()
        broker.emit_after("process_boot")
        worker = Worker(broker, worker_threads=8, worker_timeout=100)
        started = time.perf_counter()
        worker.start()
        broker.join("bench")
        worker.join()
        elapsed = time.perf_counter() - started
        worker.stop()
        return jobs / elapsed
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{namespace}*"))
        if keys:
            client.delete(*keys)
        broker.close()


def database_for(kind: str, scratch: Path) -> tuple[Database, callable]:
    if kind == "sqlite":
        return Database(f"sqlite:///{scratch / 'bench.sqlite3'}"), lambda: None
    name = f"rj_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        database.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    database = Database(POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    return database, drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        database, cleanup = database_for(args.database, Path(scratch))
        metadata.create_all(database.engine)
        rates: dict[bool, list[float]] = {False: [], True: []}
        try:
            for _ in range(args.rounds):
                for with_status in (False, True):
                    rates[with_status].append(drain_rate(database, with_status=with_status, jobs=args.jobs))
        finally:
            cleanup()
    without, with_ = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"{args.jobs} no-op jobs x {args.rounds} rounds, Redis, {args.database}, 1 process x 8 threads")
    for label, values in (("without JobStatus", rates[False]), ("with JobStatus", rates[True])):
        print(
            f"  {label:<18} median {statistics.median(values):7.0f} jobs/s  (min {min(values):.0f}, "
            f"max {max(values):.0f})"
        )
    print(f"  ratio with/without: {with_ / without:.2f}")


if __name__ == "__main__":
    main()
