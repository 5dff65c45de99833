"""The benchmark's markdown: medians with min-max, ratios to bare Dramatiq, and the targets as pass or short."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.run import Results, Sizes
    from bench.systems import WorkerSettings

BARE, SQLITE, POSTGRESQL, CELERY, RQ = "bare Dramatiq", "stack, SQLite", "stack, PostgreSQL", "Celery", "RQ"
STACKS = (SQLITE, POSTGRESQL)

#: (target, metric, systems, comparison) for the pass/short lines.
DRAIN_RATIO_MIN = 0.8
CELERY_RATIO_MIN = 3.0
CHECKPOINT_P99_MAX_MS = 5.0
RSS_RATIO_MAX = 1.5
DEFAULT_SETTINGS_MIN_RATE = 6_000


def render(
    results: Results,
    *,
    settings: WorkerSettings,
    sizes: Sizes,
    machine: str,
    load: tuple[tuple[float, float, float], tuple[float, float, float]],
    peer_versions: dict[str, str],
    stack: list[str],
    seconds: float,
    command: str,
) -> str:
    systems = [name for name in (BARE, SQLITE, POSTGRESQL, CELERY, RQ) if results.median("noop.drain", name)]
    lines = [
        f"`{command}` on {machine}; {seconds / 60:.1f} min, load average {load[0][0]:.2f} at the start and "
        f"{load[1][0]:.2f} at the end (1 min).",
        "",
        f"Workers: {settings.processes} processes x {settings.threads} threads, prefetch {settings.prefetch} "
        f"(Dramatiq); Celery: {settings.processes} processes of its threads pool x {settings.threads}; RQ: "
        f"{settings.processes * settings.threads} SimpleWorker processes. Same Redis for all. {sizes.rounds} rounds, "
        "alternating; median (min-max) per round.",
        "",
        f"Full stack (`actors/broker.py` as built for this run, in order): {', '.join(stack)}.",
        "",
        "| system | no-op enqueue, send() | no-op enqueue, bulk | no-op drain | vs bare | 10 ms I/O drain | vs bare "
        "| peak RSS per worker | vs bare |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in systems:
        cells = [
            _cell(results, "noop.enqueue", name, "/s"),
            _cell(results, "noop.bulk_enqueue", name, "/s"),
            _cell(results, "noop.drain", name, "/s"),
            _ratio(results, "noop.drain", name),
            _cell(results, "io.drain", name, "/s"),
            _ratio(results, "io.drain", name),
            _cell(results, "noop.rss", name, " MiB"),
            _ratio(results, "noop.rss", name),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| checkpoint write (one segment row + the checkpoint, one transaction) | p50 | p99 |",
        "| --- | --- | --- |",
    ]
    for name in STACKS:
        lines.append(
            f"| {name.removeprefix('stack, ')} | {_cell(results, 'checkpoint.p50', name, ' ms', 2)} "
            f"| {_cell(results, 'checkpoint.p99', name, ' ms', 2)} |"
        )
    recovery = results.values.get("recovery_s", {}).get(SQLITE)
    if recovery:
        took = _cell(results, "recovery_s", SQLITE, " s", 1)
        lines += [
            "",
            f"Crash recovery (Redis, SIGKILL of the worker running a job, another worker idle, the default "
            f"liveness window, REDIS_HEARTBEAT_TIMEOUT_MS): the job started again after {took} "
            f"({len(recovery)} runs).",
        ]
    if peer_versions:
        lines += ["", "Peers: " + ", ".join(f"{name} {version}" for name, version in sorted(peer_versions.items()))]
    lines += ["", "| target | result | |", "| --- | --- | --- |", *_targets(results, settings)]
    return "\n".join(lines) + "\n"


def _targets(results: Results, settings: WorkerSettings) -> list[str]:
    rows = []
    bare = results.median("noop.drain", BARE)
    celery = results.median("noop.drain", CELERY)
    bare_rss = results.median("noop.rss", BARE)
    for name in STACKS:
        drain = results.median("noop.drain", name)
        if drain and bare:
            rows.append(
                _target(
                    f"{name}: no-op drain >= {DRAIN_RATIO_MIN} x bare Dramatiq",
                    f"{drain / bare:.2f} x",
                    drain / bare >= DRAIN_RATIO_MIN,
                )
            )
        if drain and celery:
            rows.append(
                _target(
                    f"{name}: no-op drain >= {CELERY_RATIO_MIN:.0f} x Celery",
                    f"{drain / celery:.1f} x",
                    drain / celery >= CELERY_RATIO_MIN,
                )
            )
        p99 = results.median("checkpoint.p99", name)
        if p99 is not None:
            rows.append(
                _target(
                    f"{name}: checkpoint write p99 < {CHECKPOINT_P99_MAX_MS:.0f} ms",
                    f"{p99:.2f} ms",
                    p99 < CHECKPOINT_P99_MAX_MS,
                )
            )
        rss = results.median("noop.rss", name)
        if rss and bare_rss:
            rows.append(
                _target(
                    f"{name}: worker RSS <= {RSS_RATIO_MAX} x bare Dramatiq's",
                    f"{rss / bare_rss:.2f} x",
                    rss / bare_rss <= RSS_RATIO_MAX,
                )
            )
        if drain:
            rows.append(
                _target(
                    f"{name}: default settings ({settings.processes} x {settings.threads}, "
                    f"prefetch {settings.prefetch}) "
                    f">= {DEFAULT_SETTINGS_MIN_RATE:,} no-op jobs/s",
                    f"{drain:,.0f}/s",
                    drain >= DEFAULT_SETTINGS_MIN_RATE,
                )
            )
    return rows


def _target(what: str, value: str, passed: bool) -> str:
    return f"| {what} | {value} | {'pass' if passed else 'short'} |"


def _cell(results: Results, metric: str, system: str, unit: str, digits: int = 0) -> str:
    values = results.values.get(metric, {}).get(system)
    if not values:
        return "-"
    median = results.median(metric, system)
    if len(values) == 1:
        return f"{median:,.{digits}f}{unit}"
    return f"{median:,.{digits}f}{unit} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def _ratio(results: Results, metric: str, system: str) -> str:
    value, bare = results.median(metric, system), results.median(metric, BARE)
    if value is None or not bare:
        return "-"
    return f"{value / bare:.2f}"
