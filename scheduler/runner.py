"""The leader's APScheduler: each due tick of an actor entry enqueues its message once.

1. On start, each entry resumes after the last tick recorded in ``schedule_state`` (or from now,
   for a new entry), but never earlier than the misfire grace time: ticks missed while no leader
   ran are caught up by APScheduler's own rules (``SCHEDULER_COALESCE``: one enqueue for a run of
   missed ticks, or one each; ``SCHEDULER_MISFIRE_GRACE_MS``: later than this, a tick is missed).
2. A tick enqueues ``actor.message_with_options(args, kwargs, idempotency_key=schedule:<entry>:<time>)``.
   The key is the tick's identity: a second fire of the same tick (an old leader that has not yet
   noticed it lost the lock, a catch-up of a tick the dead leader enqueued just before dying)
   raises DuplicateJob and is recorded as a duplicate, never enqueued twice. A duplicate whose holder
   has no job status yet may be a send under way, or one whose leader died between claiming the key
   and sending: the tick fires once more when such a claim can be taken over
   (``IDEMPOTENCY_UNSENT_AFTER_MS``), so a leader killed mid-send loses no tick.
3. A tick of a task entry runs the task in this process (``scheduler/tasks.py``).
4. Each tick's outcome (enqueued, duplicate, ran, missed, error) goes to ``schedule_state``, to the
   log as one JSON event, and to ``jobs_scheduler_ticks_total``; a tick whose previous message has
   still not started is also reported (``schedule.not_started``): no worker consumes its queue.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.executors.base import BaseExecutor
from apscheduler.executors.pool import ThreadPoolExecutor as PlainExecutor
from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler

from actors.system import System
from middleware.errors import DuplicateJob
from middleware.idempotency import Idempotency, release_key
from middleware.job_logs import emit_event
from middleware.job_status import QUEUED, get_job
from middleware.storage.schedule_state import (
    DUPLICATE,
    ENQUEUED,
    ERROR,
    MISSED,
    RAN,
    entry_state,
    last_scheduled,
    record_tick,
)
from scheduler.entries import Entry
from scheduler.tasks import TASKS, SchedulerMetrics, TaskContext

logger = logging.getLogger("scheduler.runner.TickRunner")

#: Threads running ticks. A task entry runs one tick at a time (a refresh still running makes the next
#: one pointless); an actor entry up to this many, so one slow enqueue (the first of a new leader's
#: term opens its connections) does not make APScheduler skip the next tick. Overlapping ticks are
#: safe: each has its own idempotency key, and schedule_state keeps the latest.
TICK_THREADS = 4
#: The entries are code, not data: APScheduler's in-memory job store, under its default name.
_JOBSTORE = "default"
#: Runs a tick's second fire with the tick's own time (the default executor passes the run time).
_RECHECK_EXECUTOR = "recheck"
#: After the claim could be taken over, so the second fire finds it takeable.
_RECHECK_MARGIN = timedelta(seconds=1)


class TickRunner:
    """Runs the entries on an APScheduler BackgroundScheduler while this process leads."""

    def __init__(
        self, entries: Sequence[Entry], *, system: System, identity: str, metrics: SchedulerMetrics | None = None
    ) -> None:
        self.entries = list(entries)
        self.system = system
        self.broker = system.broker
        self.database = system.database
        self.identity = identity
        self.misfire_grace = timedelta(milliseconds=system.settings.scheduler_misfire_grace_ms)
        self.coalesce = system.settings.scheduler_coalesce
        self.metrics = metrics or SchedulerMetrics()
        idempotency = [middleware for middleware in self.broker.middleware if isinstance(middleware, Idempotency)]
        self.unsent_after = idempotency[0].unsent_after if idempotency else None
        self._scheduler: BackgroundScheduler | None = None
        self._tasks: TaskContext | None = None

    def start(self, *, now: datetime | None = None) -> None:
        scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": _TickExecutor(max_workers=TICK_THREADS), _RECHECK_EXECUTOR: PlainExecutor(1)},
            job_defaults={"coalesce": self.coalesce, "misfire_grace_time": self.misfire_grace.total_seconds()},
        )
        scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES)
        self._tasks = TaskContext(self.system, self.metrics.begin_term())
        first_ticks = self.resume_points(now=now or datetime.now(UTC))
        for entry in self.entries:
            scheduler.add_job(
                self._tick_job,
                trigger=entry.trigger(),
                args=(entry,),
                id=entry.name,
                name=entry.name,
                next_run_time=first_ticks[entry.name],
                max_instances=1 if entry.task is not None else TICK_THREADS,
            )
        self._scheduler = scheduler  # before start: a catch-up tick runs at once, and may schedule a recheck
        scheduler.start()

    def stop(self) -> None:
        """Stop scheduling; ticks already running finish (each is one enqueue)."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        self.metrics.end_term()

    def resume_points(self, *, now: datetime) -> dict[str, datetime | None]:
        """Each entry's first tick: the one after its last recorded tick, within the misfire grace time.
        A task looks at the system as it is now: missed runs of it are not caught up."""
        last = last_scheduled(self.database)
        points = {}
        for entry in self.entries:
            previous = last.get(entry.name)
            if previous is None or entry.task is not None:
                start = now
            else:
                start = max(previous + timedelta(microseconds=1), now - self.misfire_grace)
            points[entry.name] = entry.trigger().get_next_fire_time(None, start)
        return points

    def _tick_job(self, entry: Entry, **tick: Any) -> str:
        # What APScheduler holds: it checks a job's signature against its arguments when the job is
        # added, before the executor supplies scheduled_for and missed.
        return self.tick(entry, **tick)

    def tick(self, entry: Entry, *, scheduled_for: datetime, missed: bool, recheck: bool = True) -> str:
        """Handle one tick of ``entry``; returns its outcome. ``recheck``: fire once more later if the
        tick's key is held by a message that may never have been sent."""
        scheduled_for = scheduled_for.astimezone(UTC)
        late_ms = max(0, round((datetime.now(UTC) - scheduled_for).total_seconds() * 1000))
        fields: dict[str, Any] = {
            "entry": entry.name,
            "runs": entry.runs,
            "scheduled_for": scheduled_for.isoformat(),
            "late_ms": late_ms,
            "scheduler": self.identity,
        }
        if missed:
            self._record(entry, scheduled_for, MISSED, None, f"missed by {late_ms} ms")
            emit_event("schedule.missed", level=logging.WARNING, **fields)
            return MISSED
        if entry.task is not None:
            return self._run_task(entry, entry.task, scheduled_for, fields)
        assert entry.actor is not None  # an entry has exactly one of actor and task (entries.validate)
        self._report_if_previous_not_started(entry)
        message = self.broker.get_actor(entry.actor).message_with_options(
            args=tuple(entry.args), kwargs=dict(entry.kwargs), idempotency_key=entry.tick_key(scheduled_for)
        )
        try:
            # The message is built first (not send_with_options) so that, if the broker refuses it,
            # its claim on the tick's key can be given back and a later fire of the tick can enqueue.
            self.broker.enqueue(message)
        except DuplicateJob as duplicate:
            self._record(entry, scheduled_for, DUPLICATE, duplicate.existing_message_id, None)
            emit_event("schedule.duplicate", message_id=duplicate.existing_message_id, **fields)
            if recheck and get_job(self.database, duplicate.existing_message_id) is None:
                self._recheck_later(entry, scheduled_for)
            return DUPLICATE
        except Exception as error:
            release_key(self.database, entry.tick_key(scheduled_for), message.message_id)
            detail = f"{type(error).__name__}: {error}"
            self._record(entry, scheduled_for, ERROR, None, detail)
            emit_event("schedule.failed", level=logging.ERROR, error=detail, **fields)
            raise
        self._record(entry, scheduled_for, ENQUEUED, message.message_id, None)
        emit_event("schedule.enqueued", message_id=message.message_id, **fields)
        return ENQUEUED

    def pending_rechecks(self) -> list[str]:
        """The ticks waiting for a second fire, as ``entry@time``."""
        if self._scheduler is None:
            return []
        return [job.id for job in self._scheduler.get_jobs() if job.executor == _RECHECK_EXECUTOR]

    def _recheck_later(self, entry: Entry, scheduled_for: datetime) -> None:
        """Fire this tick once more when a claim whose message was never sent can be taken over. If
        the holder was sent after all, that fire is one more duplicate."""
        if self._scheduler is None or self.unsent_after is None:
            return
        run_at = datetime.now(UTC) + self.unsent_after + _RECHECK_MARGIN
        self._scheduler.add_job(
            self.tick,
            trigger="date",
            run_date=run_at,
            args=(entry,),
            executor=_RECHECK_EXECUTOR,
            kwargs={"scheduled_for": scheduled_for, "missed": False, "recheck": False},
            id=f"{entry.name}@{scheduled_for.isoformat()}",
            replace_existing=True,
            misfire_grace_time=None,
        )
        emit_event(
            "schedule.recheck",
            entry=entry.name,
            scheduled_for=scheduled_for.isoformat(),
            at=run_at.isoformat(),
            scheduler=self.identity,
            reason="the tick's key is held by a message with no job status: a send under way, or one "
            "whose scheduler died before sending",
        )

    def _run_task(self, entry: Entry, task: str, scheduled_for: datetime, fields: dict[str, Any]) -> str:
        assert self._tasks is not None, "tasks run only while the runner is started"
        try:
            result = TASKS[task](self._tasks)
        except Exception as error:
            detail = f"{type(error).__name__}: {error}"
            self._record(entry, scheduled_for, ERROR, None, detail)
            emit_event("schedule.failed", level=logging.ERROR, error=detail, **fields)
            raise
        self._record(entry, scheduled_for, RAN, None, result)
        emit_event("schedule.ran", result=result, **fields)
        return RAN

    def _record(
        self, entry: Entry, scheduled_for: datetime, outcome: str, message_id: str | None, detail: str | None
    ) -> None:
        self.metrics.count_tick(entry.name, outcome)
        record_tick(
            self.database,
            entry.name,
            scheduled_for=scheduled_for,
            outcome=outcome,
            message_id=message_id,
            error=detail,
            fired_by=self.identity,
        )

    def _report_if_previous_not_started(self, entry: Entry) -> None:
        state = entry_state(self.database, entry.name)
        if state is None or state["last_job_status"] != QUEUED:
            return
        emit_event(
            "schedule.not_started",
            level=logging.WARNING,
            entry=entry.name,
            runs=entry.runs,
            previous_message_id=state["last_message_id"],
            previous_scheduled_for=state["last_scheduled_for"].isoformat(),
            reason="the previous tick's job has not started: is a worker consuming its queue?",
        )

    def _skipped(self, event: JobSubmissionEvent) -> None:
        entry = next(entry for entry in self.entries if entry.name == event.job_id)
        for scheduled_for in event.scheduled_run_times:
            reason = "earlier ticks of this entry were still running"
            self._record(entry, scheduled_for.astimezone(UTC), MISSED, None, reason)
            emit_event(
                "schedule.missed",
                level=logging.WARNING,
                entry=entry.name,
                runs=entry.runs,
                scheduled_for=scheduled_for.astimezone(UTC).isoformat(),
                scheduler=self.identity,
                reason=reason,
            )


class _TickExecutor(BaseExecutor):
    """Runs each due tick of a job with its scheduled time.

    APScheduler 3 gives an executor the run times of a job but calls the job without them, and a
    tick's identity (its idempotency key) is its scheduled time, so this executor, APScheduler's
    extension point for running jobs, passes it on: ``job.func(*args, scheduled_for=, missed=)``.
    ``missed`` is APScheduler's own misfire rule: later than the job's misfire_grace_time.
    """

    def __init__(self, *, max_workers: int) -> None:
        super().__init__()
        self.max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None

    def start(self, scheduler, alias) -> None:
        super().start(scheduler, alias)
        self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="scheduler-tick")

    def shutdown(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait)

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        assert self._pool is not None, "the executor has not been started"
        future = self._pool.submit(_run_ticks, job, list(run_times))
        future.add_done_callback(_done_callback(self, job.id))


def _run_ticks(job: Job, run_times: list[datetime]) -> list[JobExecutionEvent]:
    events = []
    for run_time in run_times:
        grace = job.misfire_grace_time
        missed = grace is not None and datetime.now(UTC) - run_time > timedelta(seconds=grace)
        try:
            job.func(*job.args, scheduled_for=run_time, missed=missed, **job.kwargs)
        except Exception as error:
            logger.exception("Tick %s of entry %r failed; the next tick is unaffected.", run_time.isoformat(), job.id)
            events.append(
                JobExecutionEvent(
                    EVENT_JOB_ERROR, job.id, _JOBSTORE, run_time, exception=error, traceback=traceback.format_exc()
                )
            )
        else:
            code = EVENT_JOB_MISSED if missed else EVENT_JOB_EXECUTED
            events.append(JobExecutionEvent(code, job.id, _JOBSTORE, run_time))
    return events


def _done_callback(executor: _TickExecutor, job_id: str) -> Callable[[Future], None]:
    def done(future: Future) -> None:
        error = future.exception()
        if error is None:
            executor._run_job_success(job_id, future.result())
        else:
            executor._run_job_error(job_id, error, error.__traceback__)

    return done
