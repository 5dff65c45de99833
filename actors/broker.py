"""Builds the broker and its ordered middleware stack: the one place the stack is assembled."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker as DramatiqRabbitmqBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from actors import hard_limit_fork, heartbeat_fork, metrics_fork
from actors.embedded_redis import ensure_embedded_redis
from actors.observability import package_version, serves_metrics
from actors.redis_broker import RedisBroker
from actors.schema import schema_problem
from actors.settings import Settings
from middleware.boot_checks import BootChecks
from middleware.brokers.hook_dispatch import DispatchesToImplementedHooks
from middleware.checkpoints import Checkpoints
from middleware.dead_letters import DeadLetters
from middleware.error_reporting import ErrorReporting
from middleware.hard_time_limits import HardTimeLimits
from middleware.heartbeats import WorkerHeartbeats
from middleware.idempotency import Idempotency
from middleware.job_logs import JobLogs
from middleware.job_status import JobStatus
from middleware.metrics import Metrics
from middleware.redis_durability import RedisDurability
from middleware.retries import Retries
from middleware.routing import DurationRouting
from middleware.storage.database import Database
from middleware.storage.database_outages import DatabaseOutages
from middleware.worker_health import WorkerHealth
from middleware.worker_recycling import WorkerRecycling


def build_middleware(settings: Settings, database: Database, *, redis: bool) -> list[Middleware]:
    """The stack, in order: ``before_*`` hooks run top to bottom, ``after_*`` bottom to top."""
    # Redis only: heartbeats from a process of their own, so a job holding the GIL never looks
    # dead, and a dead worker's jobs come back within the liveness window, not by chance.
    # (RabbitMQ hands a dead consumer's messages back as soon as its connection drops.)
    heartbeats = [WorkerHeartbeats(fork=heartbeat_fork.run)] if redis else []
    # The deployment's metrics endpoint, from a process of the dramatiq master's own (METRICS_PORT).
    exporter = metrics_fork.run if serves_metrics(settings) else None
    return [
        *heartbeats,
        # Publishes this worker's stats as a heartbeat row for `ops health`, and answers /healthz.
        # Listed early so its after-hooks run after Retries' and see whether a failure was final.
        WorkerHealth(
            database=database,
            version=_version(),
            interval_ms=settings.worker_heartbeat_interval_ms,
            stale_after_ms=settings.worker_stale_after_ms,
            forget_after_ms=settings.worker_forget_after_ms,
            failure_window_ms=settings.health_failure_window_ms,
            probe_port=settings.worker_health_port,
            probe_bind=settings.worker_health_bind,
        ),
        # Replaces a worker process over WORKER_MAX_RSS_MB, or after WORKER_MAX_JOBS jobs, gracefully.
        WorkerRecycling(
            max_rss_mb=settings.worker_max_rss_mb,
            max_jobs=settings.worker_max_jobs,
            requests_dir=settings.replace_requests_dir,
        ),
        # Refuses to start a worker whose database schema is behind, before it takes a message.
        BootChecks(checks=[lambda: schema_problem(database)]),
        # Redis only: warns at boot when Redis would lose the jobs waiting in its queues on a restart.
        *([RedisDurability()] if redis else []),
        # Drops messages past their max_age before any work is spent on them.
        AgeLimit(),
        # Enforces each message's time_limit; routing gives every routed message its queue's limit.
        TimeLimit(),
        # A job still running HARD_LIMIT_GRACE_MS past its time limit (stuck in C code, which TimeLimit
        # cannot interrupt) has its worker process killed and replaced, from a watcher process of the master's.
        HardTimeLimits(
            grace_ms=settings.hard_limit_grace_ms,
            directory=hard_limit_fork.hard_limit_directory(settings.state_dir),
            fork=hard_limit_fork.run,
        ),
        # Raises Shutdown in actors declared notify_shutdown=True, so a deploy interrupts a long
        # job at once (it keeps its checkpoint) instead of waiting out the shutdown timeout.
        ShutdownNotifications(),
        # Dramatiq's composition features (on_success/on_failure callbacks, pipelines).
        Callbacks(),
        Pipelines(),
        # Lets actors read the message they are running (its id, options).
        CurrentMessage(),
        # Prometheus metrics of every delivery; before Retries, so its after-hooks know a retry from a
        # final failure. With METRICS_PORT the master also starts the deployment's endpoint.
        Metrics(exporter=exporter, bind=settings.metrics_bind, port=settings.metrics_port),
        # With SENTRY_DSN: one event per job that failed for good, breadcrumbs for retries.
        *([ErrorReporting(sensitive_fields=settings.sensitive_fields)] if settings.sentry_dsn else []),
        # JSON job events; its after-hooks run after Retries', so job.failed knows the decision.
        JobLogs(),
        # Records every dead-lettered message in SQL (after_nack still holds the final exception).
        DeadLetters(database=database),
        # Refuses a second enqueue per idempotency key; skips redelivered keyed jobs already done.
        # Before JobStatus, so it reads the status as it was before this delivery.
        Idempotency(
            database=database, ttl_ms=settings.idempotency_ttl_ms, unsent_after_ms=settings.idempotency_unsent_after_ms
        ),
        # queued -> processing -> completed | failed, progress; counts deliveries to catch poison.
        # Before Retries, so its after-hook sees whether the failure is final. On Redis the heartbeat
        # keeper marks the messages it hands back, so the other deliveries need not wait for their start.
        JobStatus(database=database, max_deliveries=settings.max_deliveries, start_write_behind=redis),
        # Fatal errors fail at once; others retry by the actor's policy; interruptions (a deploy, a
        # database outage) cost nothing, but a job interrupted again and again without saving a
        # checkpoint is dead-lettered. A routed job stopped by the regular queue's limit moves to the large queue.
        Retries(
            max_retries=5,
            min_backoff=2_000,
            max_backoff=300_000,
            max_hand_backs_without_progress=settings.max_hand_backs_without_progress,
            database_outages=DatabaseOutages(database),
        ),
        # Gives checkpointed actors their saved position and completes it when they succeed. On
        # RabbitMQ a long job hands its message back before the consumer_timeout would redeliver it.
        # It also warns at boot of any actor that is not checkpointed and may outlive that timeout.
        # A checkpoint is leased to one delivery at a time, so two runs of a job never interleave.
        Checkpoints(
            database=database,
            hand_back_after_ms=None if redis else settings.rabbitmq_hand_back_after_ms,
            consumer_timeout_ms=None if redis else settings.rabbitmq_consumer_timeout_ms,
            lease_ms=settings.checkpoint_lease_ms,
        ),
        # Sends long recordings to the large queue with the long time limit, when messages are built.
        DurationRouting(
            large_threshold_ms=settings.large_threshold_ms,
            regular_time_limit_ms=settings.regular_time_limit_ms,
            large_time_limit_ms=settings.large_time_limit_ms,
        ),
    ]


class RabbitmqBroker(DispatchesToImplementedHooks, DramatiqRabbitmqBroker):
    """Dramatiq's RabbitMQ broker, calling each hook only on the middleware that implement it."""


def _version() -> str:
    return package_version() or "unknown"


def build_broker(settings: Settings, database: Database) -> dramatiq.Broker:
    url = settings.broker_url
    if url is not None and url.startswith(("amqp://", "amqps://")):
        return RabbitmqBroker(url=url, middleware=build_middleware(settings, database, redis=False))
    middleware = build_middleware(settings, database, redis=True)
    if url is None:
        url = ensure_embedded_redis(settings.state_dir)
    return RedisBroker(
        url=url,
        middleware=middleware,
        namespace=settings.redis_namespace,
        heartbeat_timeout=settings.redis_heartbeat_timeout_ms,
        maintenance_chance=settings.redis_maintenance_chance,
    )
