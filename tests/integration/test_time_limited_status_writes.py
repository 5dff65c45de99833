"""Many time-limited actors writing status through the whole stack never stall the status writes (issue 18).

Eight worker threads run actors that send jobs in a loop until ``TimeLimit`` interrupts them,
so Dramatiq's asynchronous ``TimeLimitExceeded`` lands at random points of the status writes of
their sends. Before issue 18 this stopped every status write of the process within seconds (two
runs out of three): a ``send()`` from any other thread then never returned.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import TimeLimitExceeded

from actors.broker import build_middleware
from actors.settings import Settings
from middleware.storage.database import Database
from tests.harness import wait_until

RUN_S = 8
SEND_DEADLINE_S = 5


@pytest.fixture
def stack_broker(database_url: str, tmp_path: Path) -> Iterator[StubBroker]:
    database = Database(database_url)
    settings = Settings(broker_url=None, database_url=database_url, state_dir=tmp_path)
    broker = StubBroker(middleware=build_middleware(settings, database, redis=False))
    broker.emit_after("process_boot")  # without it TimeLimit never enforces a limit
    yield broker
    broker.close()
    database.dispose()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_time_limited_actors_sending_in_a_loop_never_stall_a_send(stack_broker: StubBroker) -> None:
    interrupted = 0
    ended = 0
    counts = threading.Lock()

    @dramatiq.actor(broker=stack_broker, queue_name="stress-sink", max_retries=0)
    def sink() -> None:
        pass

    @dramatiq.actor(broker=stack_broker, queue_name="stress-senders", time_limit=1_500, max_retries=0)
    def sender() -> None:
        nonlocal interrupted, ended
        try:
            while True:
                sink.send()
        except TimeLimitExceeded:
            with counts:
                interrupted += 1
            raise
        finally:
            with counts:
                ended += 1

    worker = Worker(stack_broker, worker_threads=8, worker_timeout=100)
    worker.start()
    try:
        for _ in range(8):
            sender.send()
        finished_at_start = 0
        deadline = time.monotonic() + RUN_S
        while time.monotonic() < deadline:
            probe = threading.Thread(target=sender.send, daemon=True)
            probe.start()
            probe.join(timeout=SEND_DEADLINE_S)
            assert not probe.is_alive(), (
                f"a send() from another thread did not return within {SEND_DEADLINE_S} s: the status writes stalled "
                f"({interrupted} interrupts so far)"
            )
            wait_until(lambda: ended > finished_at_start, timeout_s=SEND_DEADLINE_S, what="a sender interrupted")  # noqa: B023
            finished_at_start = ended
        assert interrupted >= 8, f"only {interrupted} interrupts: the test proved little"
    finally:
        worker.stop(timeout=10_000)  # a stalled worker thread must fail the test, not hang it
