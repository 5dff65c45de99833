"""RQ doing the benchmark's work (runs in bench/.venv-peers, imports nothing from the project).

rq worker -w rq.worker.SimpleWorker --url redis://127.0.0.1:6379/14 bench
"""

import time


def noop() -> None:
    pass


def sleep_ms(duration_ms: int) -> None:
    time.sleep(duration_ms / 1000)
