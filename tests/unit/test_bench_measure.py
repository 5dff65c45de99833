"""The benchmark's drain rate, from polled counts of the jobs left (bench/measure.py)."""

from __future__ import annotations

import pytest

from bench import measure


def test_the_rate_is_timed_between_ninety_and_ten_percent_left(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter(float(n) / 100 for n in range(1000))  # each poll is 10 ms after the last
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(ticks))
    monkeypatch.setattr(measure.time, "sleep", lambda _seconds: None)
    left = iter([1000, 1000, 1000, 900, 700, 500, 300, 100, 0])  # boot first, then 200 jobs per 10 ms

    drain = measure.measure_drain(lambda: next(left), 1000, timeout_s=60)

    assert drain.rate == pytest.approx(800 / 0.04), "900 left at 30 ms, 100 left at 70 ms"
    assert drain.seconds == pytest.approx(0.08 - 0.02005), "from the first finished job, interpolated, to the last"


def test_a_drain_that_ends_within_a_few_polls_is_refused_rather_than_reported_as_a_guess(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(measure.time, "sleep", lambda _seconds: None)
    left = iter([1000, 950, 500, 50, 0])  # one poll inside the middle 80 %: too few to time it

    with pytest.raises(ValueError, match="1000 jobs drained too fast to time from outside: use more jobs"):
        measure.measure_drain(lambda: next(left), 1000, timeout_s=60)


def test_a_drain_already_past_ninety_percent_at_the_first_poll_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measure.time, "sleep", lambda _seconds: None)
    left = iter([500, 400, 300, 200, 100, 0])

    with pytest.raises(ValueError, match="drained too fast"):
        measure.measure_drain(lambda: next(left), 1000, timeout_s=60)


def test_workers_that_die_mid_drain_stop_the_measurement_with_their_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measure.time, "sleep", lambda _seconds: None)

    def check() -> None:
        raise RuntimeError("a worker command exited with 1")

    with pytest.raises(RuntimeError, match="exited with 1"):
        measure.measure_drain(lambda: 1000, 1000, timeout_s=60, check=check)
