"""Settings.from_env(): the only code in the project that reads ``os.environ``.

Every value is checked when it is read, so a worker with a bad setting stops at start with a
message that names the variable, says what is wrong and how to fix it.
"""

from __future__ import annotations

import inspect
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from actors.engines import ENGINE_NAMES

MINUTE_MS = 60_000
DEFAULT_SENSITIVE_FIELDS = ("email", "token", "password", "secret", "api_key", "authorization")
#: A bearer token shorter than this is too easy to guess.
ADMIN_TOKEN_MIN_LENGTH = 16


def setting(
    env: str,
    default: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    read: Callable[[_Environment, str, Any], Any] | None = None,
    shown_default: str | None = None,
) -> Any:
    """A field of :class:`Settings` read from the variable ``env``: its default and its bounds, declared
    once (``Settings.from_env`` reads it, ``configuration_reference`` documents it). ``read`` parses
    a value that is more than a number, a flag or a text."""
    metadata = {"env": env, "minimum": minimum, "maximum": maximum, "read": read, "shown_default": shown_default}
    return field(default=default, metadata=metadata)


def _read(env: _Environment, each: Field) -> Any:
    name, default, metadata = each.metadata["env"], each.default, each.metadata
    if metadata["read"] is not None:
        return metadata["read"](env, name, default)
    if isinstance(default, bool):
        return env.boolean(name, default)
    if isinstance(default, int):
        return env.integer(name, default, minimum=metadata["minimum"], maximum=metadata["maximum"])
    if isinstance(default, float):
        return env.fraction(name, default)
    assert isinstance(default, str)  # a default that is not a number, a flag or a text comes with its read
    return env.text(name, default) or default


def _read_engine_name(env: _Environment, name: str, default: str) -> str:
    return env.choice(name, default, set(ENGINE_NAMES))


def _read_tokens(env: _Environment, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    tokens = tuple(token.strip() for token in env.text(name, "").split(",") if token.strip())
    for position, token in enumerate(tokens, start=1):
        # Printable ASCII without spaces: a token travels in an HTTP header and is compared as bytes.
        if len(token) < ADMIN_TOKEN_MIN_LENGTH or not (token.isascii() and token.isprintable()) or " " in token:
            raise SettingsError(
                f"{name}: token {position} is not a usable bearer token; use at least "
                f"{ADMIN_TOKEN_MIN_LENGTH} printable ASCII characters without spaces, "
                "e.g. from python -c 'import secrets; print(secrets.token_urlsafe())'."
            )
    return tokens


def _read_sensitive_fields(env: _Environment, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.environ.get(name)
    if raw is None:
        return default
    keys = tuple(dict.fromkeys(key.strip().lower() for key in raw.split(",") if key.strip()))
    if not keys:
        raise SettingsError(f"{name} is empty; list the keys to redact (default {','.join(default)}).")
    return keys


_SCHEDULE_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?$")


def _read_schedule_module(env: _Environment, name: str, default: str) -> str:
    value = env.text(name, default)
    if not _SCHEDULE_MODULE.match(value):
        raise SettingsError(
            f"SCHEDULE_MODULE={value!r} is not a module path; write it like scheduler.schedule or "
            "myapp.schedules:NIGHTLY (module, then optionally the name of its list of entries)."
        )
    return value


def _read_optional_path(env: _Environment, name: str, default: None) -> Path | None:
    value = env.text(name, "")
    return Path(value).expanduser().resolve() if value else None


def _read_bind_address(env: _Environment, name: str, default: str) -> str:
    value = env.text(name, default) or default
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise SettingsError(
            f"{name}={value!r} is not an IP address; use 127.0.0.1 (this host only) or 0.0.0.0 (every interface)."
        ) from None
    return value


def _read_sentry_dsn(env: _Environment, name: str, default: None) -> str | None:
    value = env.text(name, "")
    if not value:
        return None
    from sentry_sdk.utils import BadDsn, Dsn

    try:
        Dsn(value)
    except BadDsn as error:
        raise SettingsError(
            f"SENTRY_DSN is not a Sentry DSN ({error}); copy it from the project's Client Keys, like "
            "https://PUBLIC_KEY@o0.ingest.sentry.io/PROJECT_ID, or unset it."
        ) from None
    return value


class SettingsError(ValueError):
    """A setting from the environment is invalid; the message says how to fix it."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    #: ``redis://``, ``rediss://``, ``unix://`` or ``amqp://``; None means the embedded Redis.
    broker_url: str | None = setting("BROKER_URL", MISSING, shown_default="the embedded Redis")
    #: Any SQLAlchemy URL; PostgreSQL URLs are normalised to the psycopg 3 driver.
    database_url: str = setting("DATABASE_URL", MISSING, shown_default="sqlite:///STATE_DIR/jobs.sqlite3")
    #: Where the embedded Redis keeps its socket and data, and SQLite its file.
    state_dir: Path = setting("STATE_DIR", MISSING, shown_default="./var")
    #: Key prefix of every Redis key the broker writes, so several systems can share one Redis.
    redis_namespace: str = setting("REDIS_NAMESPACE", "dramatiq")
    #: The liveness window: a Redis worker whose heartbeat is older than this is dead, and its
    #: unacked messages are handed back (explicit heartbeats come from a process of their own).
    redis_heartbeat_timeout_ms: int = setting("REDIS_HEARTBEAT_TIMEOUT_MS", 4_000, minimum=2_000)
    #: Out of a million broker commands, how many also run Dramatiq's hand-back by chance; the
    #: heartbeat process already runs it every second, so 0 by default.
    redis_maintenance_chance: int = setting("REDIS_MAINTENANCE_CHANCE", 0, minimum=0, maximum=1_000_000)
    #: The speech-to-text engine (``echo`` is a fast stand-in for tests), and the length of the
    #: segments a recording is cut into (saved with each job's checkpoint).
    transcription_engine: str = setting("TRANSCRIPTION_ENGINE", "pocketsphinx", read=_read_engine_name)
    transcription_segment_ms: int = setting("TRANSCRIPTION_SEGMENT_MS", 30_000, minimum=1_000)
    #: Routing by duration: recordings longer than LARGE_THRESHOLD_MS go to ``transcription-large``;
    #: the messages of each queue get its time limit.
    large_threshold_ms: int = setting("LARGE_THRESHOLD_MS", 40 * MINUTE_MS, minimum=1)
    regular_time_limit_ms: int = setting("REGULAR_TIME_LIMIT_MS", 20 * MINUTE_MS, minimum=1_000)
    large_time_limit_ms: int = setting("LARGE_TIME_LIMIT_MS", 180 * MINUTE_MS, minimum=1_000)
    #: Interruptions in a row (time limits, deploys) without a checkpoint saved, after which a job is
    #: dead-lettered (kind ``time_limit`` or ``no_progress``) instead of handed back again.
    max_hand_backs_without_progress: int = setting("MAX_HAND_BACKS_WITHOUT_PROGRESS", 3, minimum=1)
    #: How long a job may run past its time limit (inside C code, which the limit cannot interrupt)
    #: before its worker process is killed and replaced; 0 kills at once. Its message runs again.
    hard_limit_grace_ms: int = setting("HARD_LIMIT_GRACE_MS", 30_000, minimum=0)
    #: A worker process over this resident memory (MB) stops after its current jobs (checkpointed
    #: ones hand back at once) and is replaced; 0: no cap.
    worker_max_rss_mb: int = setting("WORKER_MAX_RSS_MB", 0, minimum=0)
    #: A worker process is replaced after this many jobs, like Celery's max_tasks_per_child; 0: never.
    worker_max_jobs: int = setting("WORKER_MAX_JOBS", 0, minimum=0)
    #: Set by ``python -m ops workers`` for its workers, not by hand: where a worker process to be
    #: replaced (recycled, or stuck past its hard time limit) asks its supervisor to restart its slot.
    replace_requests_dir: Path | None = setting("REPLACE_REQUESTS_DIR", None, read=_read_optional_path)
    #: Deliveries whose worker died, after which a message is dead-lettered as poison.
    max_deliveries: int = setting("MAX_DELIVERIES", 5, minimum=1)
    #: How long a completed job keeps its idempotency key.
    idempotency_ttl_ms: int = setting("IDEMPOTENCY_TTL_MS", 24 * 60 * MINUTE_MS, minimum=1_000)
    #: How old a key's claim must be, with no job and no message on Redis, to count as never sent.
    idempotency_unsent_after_ms: int = setting("IDEMPOTENCY_UNSENT_AFTER_MS", MINUTE_MS, minimum=1_000)
    #: Bearer tokens of the admin API: read-write, and read-only (these can read but change nothing).
    admin_tokens: tuple[str, ...] = setting("ADMIN_TOKENS", (), read=_read_tokens)
    admin_readonly_tokens: tuple[str, ...] = setting("ADMIN_READONLY_TOKENS", (), read=_read_tokens)
    #: Where ``python -m ops serve`` listens.
    admin_bind: str = setting("ADMIN_BIND", "127.0.0.1")
    admin_port: int = setting("ADMIN_PORT", 8080, minimum=1, maximum=65_535)
    #: Requeues through the admin API: at most this many messages per call, and per token per minute.
    admin_requeue_max_per_call: int = setting("ADMIN_REQUEUE_MAX_PER_CALL", 100, minimum=1, maximum=10_000)
    admin_requeue_per_minute: int = setting("ADMIN_REQUEUE_PER_MINUTE", 300, minimum=1)
    #: Keys whose values are redacted wherever a job's payload is shown (case-insensitive, substrings).
    sensitive_fields: tuple[str, ...] = setting(
        "SENSITIVE_FIELDS", DEFAULT_SENSITIVE_FIELDS, read=_read_sensitive_fields
    )
    #: RabbitMQ's ``consumer_timeout`` (its default: 30 min). A checkpointed job hands its message
    #: back at its first checkpoint after 80 % of it, before RabbitMQ would redeliver it mid-run.
    rabbitmq_consumer_timeout_ms: int = setting("RABBITMQ_CONSUMER_TIMEOUT_MS", 30 * MINUTE_MS, minimum=1_000)
    #: A checkpoint's lease (middleware/checkpoints.py) holds this long without a save against a
    #: delivery of another message for the same work, which waits meanwhile.
    checkpoint_lease_ms: int = setting("CHECKPOINT_LEASE_MS", 10 * MINUTE_MS, minimum=1_000)
    #: Worker health (middleware/worker_health.py, ops/health.py): each worker process writes its
    #: heartbeat row this often; one older than the stale limit is a dead or hung worker; rows of
    #: workers silent for the forget limit are deleted.
    worker_heartbeat_interval_ms: int = setting("WORKER_HEARTBEAT_INTERVAL_MS", 5_000, minimum=100)
    worker_stale_after_ms: int = setting("WORKER_STALE_AFTER_MS", 30_000, minimum=200)
    worker_forget_after_ms: int = setting("WORKER_FORGET_AFTER_MS", 10 * MINUTE_MS, minimum=1_000)
    #: ``python -m ops workers``: a worker slot whose worker exits unexpectedly this many times within
    #: the window is stopped (a crash loop) instead of restarted again; the other slots keep running.
    worker_max_crashes: int = setting("WORKER_MAX_CRASHES", 5, minimum=1)
    worker_crash_window_ms: int = setting("WORKER_CRASH_WINDOW_MS", 5 * MINUTE_MS, minimum=1_000)
    #: A worker is unhealthy when more than this fraction of its jobs failed over the window,
    #: judged once it has finished at least health_failure_min_jobs jobs in it.
    health_failure_rate: float = setting("HEALTH_FAILURE_RATE", 0.05)
    health_failure_window_ms: int = setting("HEALTH_FAILURE_WINDOW_MS", 10 * MINUTE_MS, minimum=1_000)
    health_failure_min_jobs: int = setting("HEALTH_FAILURE_MIN_JOBS", 20, minimum=1)
    #: ... or when none of its jobs has succeeded for this long while messages wait on its queues
    #: and more than health_idle_min_errors jobs failed since its last success.
    health_idle_after_ms: int = setting("HEALTH_IDLE_AFTER_MS", 5 * MINUTE_MS, minimum=1_000)
    health_idle_min_errors: int = setting("HEALTH_IDLE_MIN_ERRORS", 5, minimum=0)
    #: Liveness probe (GET /healthz) of each worker process: 0 is off; process k of a dramatiq
    #: master listens on port + k.
    worker_health_port: int = setting("WORKER_HEALTH_PORT", 0, minimum=0, maximum=65_535)
    worker_health_bind: str = setting("WORKER_HEALTH_BIND", "127.0.0.1")
    #: The scheduler (python -m scheduler): where its entries are declared ("module" or "module:ATTRIBUTE",
    #: default attribute SCHEDULE); how late a tick may still be enqueued; whether ticks missed in a row
    #: are enqueued once (coalesce) or each; how often a standby tries to become leader.
    schedule_module: str = setting("SCHEDULE_MODULE", "scheduler.schedule", read=_read_schedule_module)
    scheduler_misfire_grace_ms: int = setting("SCHEDULER_MISFIRE_GRACE_MS", MINUTE_MS, minimum=1_000)
    scheduler_coalesce: bool = setting("SCHEDULER_COALESCE", True)
    scheduler_leader_retry_ms: int = setting("SCHEDULER_LEADER_RETRY_MS", 1_000, minimum=100, maximum=60_000)
    #: Each scheduler replica serves its metrics (leader or not, ticks, and on the leader the system
    #: gauges and alerts of its tasks) on METRICS_BIND:SCHEDULER_METRICS_PORT; 0 serves none.
    scheduler_metrics_port: int = setting("SCHEDULER_METRICS_PORT", 0, minimum=0, maximum=65_535)
    #: Maintenance (actors/maintenance.py): resolved dead letters and finished jobs' status rows older
    #: than this are deleted; a job processing this long with its message in no queue is stalled.
    dead_letter_retention_days: int = setting("DEAD_LETTER_RETENTION_DAYS", 30, minimum=1)
    job_status_retention_days: int = setting("JOB_STATUS_RETENTION_DAYS", 7, minimum=1)
    stalled_job_after_ms: int = setting("STALLED_JOB_AFTER_MS", 10 * MINUTE_MS, minimum=1_000)
    #: Alert checks: more failed jobs than the threshold within the window raises an alert.
    alert_failed_jobs_threshold: int = setting("ALERT_FAILED_JOBS_THRESHOLD", 10, minimum=0)
    alert_failed_jobs_window_ms: int = setting("ALERT_FAILED_JOBS_WINDOW_MS", 60 * MINUTE_MS, minimum=1_000)
    #: Prometheus metrics of a worker deployment (one endpoint per dramatiq master, or per
    #: python -m ops workers): 0 serves none. metrics_dir is the multiprocess directory its
    #: processes share; None picks one per instance under STATE_DIR/metrics.
    metrics_port: int = setting("METRICS_PORT", 0, minimum=0, maximum=65_535)
    metrics_bind: str = setting("METRICS_BIND", "127.0.0.1", read=_read_bind_address)
    metrics_dir: Path | None = setting("METRICS_DIR", None, read=_read_optional_path)
    #: python -m ops exporter: queue depths, dead letters, worker heartbeats, for the whole system.
    ops_metrics_port: int = setting("OPS_METRICS_PORT", 9192, minimum=1, maximum=65_535)
    #: Sentry: events only for a job's final failure (fatal errors included); None is off.
    sentry_dsn: str | None = setting("SENTRY_DSN", None, read=_read_sentry_dsn)
    sentry_environment: str = setting("SENTRY_ENVIRONMENT", "production")

    @property
    def rabbitmq_hand_back_after_ms(self) -> int:
        return self.rabbitmq_consumer_timeout_ms * 4 // 5

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = _Environment(os.environ if environ is None else environ)
        # The three the others depend on; every other setting is read as its field declares it.
        state_dir = Path(env.text("STATE_DIR", "./var")).expanduser().resolve()
        values: dict[str, Any] = {
            "state_dir": state_dir,
            "broker_url": _broker_url(env.text("BROKER_URL", "") or None),
            "database_url": _database_url(env.text("DATABASE_URL", "") or f"sqlite:///{state_dir / 'jobs.sqlite3'}"),
        }
        for each in fields(cls):
            if each.name not in values:
                values[each.name] = _read(env, each)
        settings = cls(**values)
        if shared := set(settings.admin_tokens) & set(settings.admin_readonly_tokens):
            raise SettingsError(
                f"{len(shared)} token(s) are in both ADMIN_TOKENS and ADMIN_READONLY_TOKENS; a token is either "
                "read-write or read-only, so remove it from one of them."
            )
        _check_worker_health_windows(settings)
        if settings.large_time_limit_ms < settings.regular_time_limit_ms:
            raise SettingsError(
                f"LARGE_TIME_LIMIT_MS ({settings.large_time_limit_ms}) is shorter than "
                f"REGULAR_TIME_LIMIT_MS ({settings.regular_time_limit_ms}); the large queue holds the "
                "long recordings, so give it the longer limit."
            )
        return settings


class _Environment:
    """Typed, validated reads of environment variables."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def text(self, name: str, default: str) -> str:
        return self.environ.get(name, default).strip()

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        raw = self.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw.replace("_", ""))
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a whole number; set it like {name}={default}.") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise SettingsError(f"{name}={value} is out of range; it must be {bounds} (default {default}).")
        return value

    def fraction(self, name: str, default: float) -> float:
        raw = self.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a number; set it like {name}={default}.") from None
        if not 0 <= value <= 1:
            raise SettingsError(
                f"{name}={value} is out of range; it is a fraction between 0 and 1 (default {default})."
            )
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.environ.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise SettingsError(
            f"{name}={raw!r} is not a boolean; set it to true or false (default {str(default).lower()})."
        )

    def choice(self, name: str, default: str, choices: set[str]) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise SettingsError(f"{name}={value!r} is not one of: {', '.join(sorted(choices))}.")
        return value


def _check_worker_health_windows(settings: Settings) -> None:
    if settings.worker_stale_after_ms <= settings.worker_heartbeat_interval_ms:
        raise SettingsError(
            f"WORKER_STALE_AFTER_MS ({settings.worker_stale_after_ms}) must be longer than "
            f"WORKER_HEARTBEAT_INTERVAL_MS ({settings.worker_heartbeat_interval_ms}), or every worker looks dead "
            "between two heartbeats; make it at least three intervals."
        )
    if settings.worker_forget_after_ms < settings.worker_stale_after_ms:
        raise SettingsError(
            f"WORKER_FORGET_AFTER_MS ({settings.worker_forget_after_ms}) is shorter than WORKER_STALE_AFTER_MS "
            f"({settings.worker_stale_after_ms}); a dead worker must be reported stale before it is forgotten."
        )


_BROKER_SCHEMES = ("redis://", "rediss://", "unix://", "amqp://", "amqps://")


def _broker_url(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith(_BROKER_SCHEMES):
        raise SettingsError(
            f"BROKER_URL={value!r} is not a broker URL. Use redis://HOST:6379/DB or "
            "amqp://USER:PASSWORD@HOST:5672/VHOST, or unset it to use the embedded Redis."
        )
    return value


def _database_url(value: str) -> str:
    try:
        url = make_url(value)
    except ArgumentError:
        raise SettingsError(
            f"DATABASE_URL={value!r} is not a SQLAlchemy URL. Use "
            "postgresql+psycopg://USER@HOST:5432/DB or sqlite:///PATH, or unset it for SQLite in STATE_DIR."
        ) from None
    # Plain postgresql:// would pick psycopg2, which is not installed: psycopg 3 is the driver.
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("postgresql", "sqlite"):
        raise SettingsError(
            f"DATABASE_URL uses {url.get_backend_name()!r}; supported databases are PostgreSQL and SQLite."
        )
    return url.render_as_string(hide_password=False)


def variable_names() -> tuple[str, ...]:
    """Every environment variable :meth:`Settings.from_env` reads, in declaration order."""
    return tuple(each.metadata["env"] for each in fields(Settings))


def configuration_reference() -> str:
    """``docs/pages/configuration.md``: every setting, from its one declaration (a test keeps the file equal)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `actors/settings.py`, where each setting is declared once: its variable, default",
        "and bounds. `tests/unit/test_settings_declared_once.py` fails when this page and the code differ",
        "(`UPDATE_DOCS=1` on that test rewrites the page). Every variable is checked when a process",
        "starts: a bad value stops it with exit code 2 and a message naming the variable. Durations are",
        "in milliseconds (`_MS`).",
    ]
    for description, group in _documented_groups():
        lines += ["", description, "", "| variable | default | allowed |", "| --- | --- | --- |"]
        for each in group:
            lines.append(f"| `{each.metadata['env']}` | {_shown_default(each)} | {_allowed(each)} |")
    return "\n".join(lines) + "\n"


def _documented_groups() -> list[tuple[str, list[Field]]]:
    """The fields in declaration order, grouped under the ``#:`` comment that precedes them."""
    by_name = {each.name: each for each in fields(Settings)}
    groups: list[tuple[str, list[Field]]] = []
    comment: list[str] = []
    for line in inspect.getsource(Settings).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            comment.append(stripped[2:].strip())
            continue
        name = stripped.split(":", 1)[0]
        if name in by_name:
            if comment or not groups:
                description = " ".join(comment).replace("``", "`")
                groups.append((description or "The broker, the database and the state directory.", []))
                comment = []
            groups[-1][1].append(by_name[name])
        elif stripped.startswith(("def ", "@property", "@classmethod")):
            break
    return groups


def _shown_default(each: Field) -> str:
    if each.metadata["shown_default"] is not None:
        return each.metadata["shown_default"]
    default = each.default
    if default is None or default == ():
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, tuple):
        return f"`{','.join(default)}`"
    return f"`{default}`"


def _allowed(each: Field) -> str:
    minimum, maximum = each.metadata["minimum"], each.metadata["maximum"]
    if minimum is not None:
        return f"{minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
    if isinstance(each.default, bool):
        return "true or false"
    if isinstance(each.default, float):
        return "a fraction from 0 to 1"
    if each.metadata["read"] is _read_engine_name:
        return " or ".join(f"`{name}`" for name in sorted(ENGINE_NAMES))
    return "see the description"
