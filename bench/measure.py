"""Drain rate from the outside: poll how many jobs are left and time the middle of the drain.

The rate is taken between the moments 90 % and 10 % of the jobs are left, so worker boot and
the last stragglers (which depend on prefetch, not on throughput) do not count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

POLL_INTERVAL_S = 0.002
#: Polls that must fall between 90 % and 10 % left for the rate to mean anything.
MIN_SAMPLES_INSIDE = 3


@dataclass(frozen=True)
class Drain:
    jobs: int
    rate: float  # jobs per second over the middle 80 % of the drain
    seconds: float  # from the first finished job to the last


def measure_drain(
    outstanding: Callable[[], int], jobs: int, *, timeout_s: float, check: Callable[[], None] = lambda: None
) -> Drain:
    """Poll from before the workers take their first job (``check`` raises if they died) until none is left."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        left = outstanding()
        now = time.perf_counter()
        samples.append((now, left))
        if left == 0:
            break
        check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{left} of {jobs} jobs were still there after {timeout_s} s")
        time.sleep(POLL_INTERVAL_S)
    high, low = _crossing(samples, jobs * 0.9), _crossing(samples, jobs * 0.1)
    first = _crossing(samples, jobs - 0.5)
    inside = sum(1 for _, left in samples if jobs * 0.1 < left < jobs * 0.9)
    if samples[0][1] < jobs * 0.9 or inside < MIN_SAMPLES_INSIDE:
        raise ValueError(f"{jobs} jobs drained too fast to time from outside: use more jobs")
    rate = (jobs * 0.8) / (low - high)
    return Drain(jobs=jobs, rate=rate, seconds=samples[-1][0] - first)


def _crossing(samples: list[tuple[float, int]], level: float) -> float:
    """The time ``left`` fell to ``level``, interpolated between the two samples around it."""
    previous_time, previous_left = samples[0]
    if previous_left <= level:
        return previous_time
    for sample_time, left in samples[1:]:
        if left <= level:
            fraction = (previous_left - level) / (previous_left - left)
            return previous_time + fraction * (sample_time - previous_time)
        previous_time, previous_left = sample_time, left
    return samples[-1][0]
