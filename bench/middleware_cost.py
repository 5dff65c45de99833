"""CPU per job of each middleware of the full stack, in one thread, without a broker round trip.

    .venv/bin/python -m bench.middleware_cost [--jobs 3000] [--database sqlite|postgresql]

Builds the stack exactly as ``actors/broker.py`` does (on a scratch SQLite file, or a scratch
PostgreSQL database), then for each middleware runs the hooks one no-op delivery passes through
(``after_enqueue``, ``before_process_message``, ``after_process_message``, ``before_ack``,
``after_ack``) on ``--jobs`` messages and prints the process CPU time per job (a group commit's
flusher thread included). One thread of deliveries: a group commit's batching does not help
here, so the database middleware show their unshared cost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="bench-mw-"))
    database_name = None
    os.environ.update(
        {
            "STATE_DIR": str(scratch),
            "BROKER_URL": "redis://127.0.0.1:6379/14",
            "REDIS_NAMESPACE": f"bench-mw-{uuid.uuid4().hex[:8]}",
        }
    )
    if args.database == "postgresql":
        from sqlalchemy import create_engine, text

        database_name = f"bench_mw_{uuid.uuid4().hex[:8]}"
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{database_name}"'))
        os.environ["DATABASE_URL"] = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{database_name}"
    try:
        return _measure(args.jobs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the scratch SQLite file and the embedded state
        if database_name is not None:
            from actors.system import current_system

            current_system().database.dispose()
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE "{database_name}" WITH (FORCE)'))


def _measure(jobs: int) -> int:
    from dramatiq.broker import MessageProxy

    import actors
    from actors.schema import upgrade
    from bench.jobs import noop

    upgrade(actors.system.database)
    broker = actors.broker
    broker.emit_after("process_boot")
    print(f"{jobs} no-op deliveries per middleware, one thread, CPU per job:")
    total = 0.0
    for middleware in broker.middleware:
        messages = [MessageProxy(noop.message()) for _ in range(jobs)]
        started = time.process_time()
        for message in messages:
            middleware.after_enqueue(broker, message, None)
        for message in messages:
            middleware.before_process_message(broker, message)
            middleware.after_process_message(broker, message, result=None, exception=None)
            middleware.before_ack(broker, message)
            middleware.after_ack(broker, message)
        cost_us = (time.process_time() - started) / jobs * 1e6
        total += cost_us
        print(f"  {type(middleware).__name__:<24} {cost_us:8.1f} us")
    print(f"  {'all':<24} {total:8.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
