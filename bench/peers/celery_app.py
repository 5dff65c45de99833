"""Celery doing the benchmark's work (runs in bench/.venv-peers, imports nothing from the project).

    celery -A bench.peers.celery_app -b redis://127.0.0.1:6379/14 worker -P threads -c 8 -Q bench

Late acks, as Dramatiq does (a message is acknowledged after its job ran), and no result backend.
"""

import time

from celery import Celery

#: Every key Celery writes starts with this, so the benchmark can delete them afterwards.
KEY_PREFIX = "bench-celery:"

app = Celery("bench")
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    task_default_queue="bench",
    broker_transport_options={"global_keyprefix": KEY_PREFIX},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop() -> None:
    pass


@app.task(name="sleep_ms")
def sleep_ms(duration_ms: int) -> None:
    time.sleep(duration_ms / 1000)
