"""Bare Dramatiq plus one middleware that spends ``BENCH_BURN_US`` of pure Python CPU per job.

    BENCH_BURN_US=50 dramatiq bench.burn_actors --queues bench

Half the time in ``before_process_message``, half in ``after_process_message``, in the worker
thread, as a middleware's own work would be. ``bench.cpu_budget`` drains it at several costs.
"""

import os
import time
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from bench.bare_actors import broker, hold, noop, sleep_ms


class CpuBurn(Middleware):
    def __init__(self, per_job_us: int) -> None:
        self.per_hook_s = per_job_us / 2e6

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        self._burn()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._burn()

    def _burn(self) -> None:
        until = time.perf_counter() + self.per_hook_s
        while time.perf_counter() < until:  # busy on purpose: CPU, holding the GIL, as Python code does
            pass


# Bare Dramatiq's broker and jobs, with the burn added last (it touches no message).
broker.add_middleware(CpuBurn(int(os.environ.get("BENCH_BURN_US", "0"))))

__all__ = ["broker", "hold", "noop", "sleep_ms"]
