"""Schedule entries: which actor runs when, one line each, checked before the scheduler starts.

    Entry("dead-letter-reconcile", every="1m", actor="reconcile_dead_letters")
    Entry("nightly-report", cron="0 3 * * *", tz="Europe/Paris", actor="send_report", args=("daily",))
    Entry("alert-checks", every="1m", task="check_alerts")

An ``actor`` entry enqueues that actor's message at each tick; a ``task`` entry runs one of the
scheduler's own tasks (``scheduler/tasks.py``) in the leader.

``cron`` is a standard five-field crontab expression (minute hour day month weekday, weekday 0 or 7
is Sunday), evaluated in ``tz`` (default UTC). ``every`` is ``<n>s``, ``<n>m``, ``<n>h`` or ``<n>d``;
its ticks fall on whole multiples of the interval since 1970-01-01 UTC (``every="1h"`` fires on the
hour), so every scheduler replica computes the same ticks and a tick has one identity wherever it
fires. A tick's idempotency key is ``schedule:<entry>:<tick time, ISO 8601 UTC>``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dramatiq
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from dramatiq.errors import ActorNotFound

#: Interval ticks are counted from here, so that they are the same in every process.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_ATTRIBUTE = "SCHEDULE"

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_EVERY = re.compile(r"^(\d+)([smhd])$")
_EVERY_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


class ScheduleError(ValueError):
    """The schedule cannot run as declared; the message names the entry and says what to fix."""


@dataclass(frozen=True)
class Entry:
    name: str
    _: KW_ONLY
    actor: str | None = None
    #: A leader task (scheduler/tasks.py) instead of an actor.
    task: str | None = None
    cron: str | None = None
    every: str | None = None
    #: Time zone of a cron expression (an IANA name, default UTC); interval entries count in UTC.
    tz: str | None = None
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(self.args))  # a list in the declaration is fine too
        object.__setattr__(self, "kwargs", dict(self.kwargs))

    @property
    def runs(self) -> str:
        """What a tick does, for people: the actor's name, or ``task <name>``."""
        return self.actor if self.actor is not None else f"task {self.task}"

    @property
    def when(self) -> str:
        """The schedule as declared, for people: ``cron 0 3 * * * Europe/Paris`` or ``every 1m``."""
        if self.cron is not None:
            return f"cron {self.cron} {self.tz or 'UTC'}"
        return f"every {self.every}"

    def trigger(self) -> BaseTrigger:
        """The APScheduler trigger of this entry; raises ScheduleError when the entry is malformed."""
        if (self.cron is None) == (self.every is None):
            raise self._error("give exactly one of cron= or every=")
        if self.cron is not None:
            timezone = self._timezone()
            try:
                return CronTrigger.from_crontab(_apscheduler_crontab(self.cron), timezone=timezone)
            except ValueError as error:
                raise self._error(f"cron {self.cron!r} is not a valid crontab expression: {error}") from None
        if self.tz is not None:
            raise self._error("tz applies to cron entries only; interval ticks are counted in UTC")
        return IntervalTrigger(seconds=self.interval().total_seconds(), start_date=EPOCH, timezone=UTC)

    def interval(self) -> timedelta:
        match = _EVERY.match(self.every or "")
        if match is None or int(match.group(1)) == 0:
            raise self._error(f"every {self.every!r} is not an interval; write it like 30s, 5m, 1h or 1d")
        return timedelta(**{_EVERY_UNITS[match.group(2)]: int(match.group(1))})

    def tick_key(self, scheduled_for: datetime) -> str:
        """The idempotency key of one tick: two fires of the same tick enqueue one message."""
        return f"schedule:{self.name}:{scheduled_for.astimezone(UTC).isoformat()}"

    def _timezone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.tz or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            raise self._error(f"tz {self.tz!r} is not a known time zone; use an IANA name like Europe/Paris") from None

    def _error(self, problem: str) -> ScheduleError:
        return ScheduleError(f"schedule entry {self.name!r}: {problem}")


def load_schedule(spec: str) -> list[Entry]:
    """The entries named by ``SCHEDULE_MODULE`` (``module`` or ``module:ATTRIBUTE``), not yet validated."""
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or DEFAULT_ATTRIBUTE
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ScheduleError(f"SCHEDULE_MODULE={spec}: cannot import {module_name}: {error}") from None
    entries = getattr(module, attribute, None)
    if not isinstance(entries, list | tuple) or not all(isinstance(entry, Entry) for entry in entries):
        raise ScheduleError(f"SCHEDULE_MODULE={spec}: {module_name}.{attribute} must be a list of Entry(...)")
    return list(entries)


def validate(entries: Sequence[Entry], broker: dramatiq.Broker, *, tasks: Collection[str] | None = None) -> None:
    """Raise ScheduleError for the first entry that could not fire: bad name, trigger, actor, task or arguments."""
    if tasks is None:
        from scheduler.tasks import TASKS

        tasks = TASKS
    seen: set[str] = set()
    for entry in entries:
        if not _NAME.match(entry.name):
            raise ScheduleError(
                f"schedule entry {entry.name!r}: a name is 1 to 100 lowercase letters, digits, '.', '_' or '-'"
            )
        if entry.name in seen:
            raise ScheduleError(f"schedule entry {entry.name!r} is declared twice; names must be unique")
        seen.add(entry.name)
        entry.trigger()
        if (entry.actor is None) == (entry.task is None):
            raise entry._error("give exactly one of actor= or task=")
        if entry.task is not None:
            if entry.task not in tasks:
                raise entry._error(
                    f"task {entry.task!r} is not one of the scheduler's tasks: {', '.join(sorted(tasks))}"
                )
            if entry.args or entry.kwargs:
                raise entry._error("a task takes no args or kwargs")
            continue
        assert entry.actor is not None  # checked above: exactly one of actor and task
        try:
            actor = broker.get_actor(entry.actor)
        except ActorNotFound:
            raise entry._error(
                f"actor {entry.actor!r} is not declared; import its module in the schedule module"
            ) from None
        try:
            inspect.signature(actor.fn).bind(*entry.args, **entry.kwargs)
        except TypeError as error:
            raise entry._error(f"args/kwargs do not fit actor {entry.actor!r}: {error}") from None
        try:
            json.dumps([entry.args, entry.kwargs])
        except TypeError as error:
            raise entry._error(f"args/kwargs must be JSON values (they travel in the message): {error}") from None


def _apscheduler_crontab(expression: str) -> str:
    """The expression with its weekday field in names: APScheduler 3 counts weekdays from Monday = 0,
    crontab from Sunday = 0 (APScheduler issue 286), so ``0 3 * * 0`` would otherwise fire on Mondays."""
    fields = expression.split()
    if len(fields) != 5:
        return expression  # from_crontab says what is wrong with the field count
    if fields[2] != "*" and fields[4] != "*":
        raise ValueError(
            "it restricts both the day of the month and the weekday: crontab fires when either matches, "
            "APScheduler only when both do; declare one entry for each"
        )
    if fields[4] != "*":
        fields[4] = ",".join(_WEEKDAYS[day] for day in sorted(_crontab_weekdays(fields[4])))
    return " ".join(fields)


def _crontab_weekdays(text: str) -> set[int]:
    """Crontab weekday numbers (0 = Sunday) of a field such as ``*``, ``1-5``, ``sat,sun``, ``*/2``, ``0-6/3``."""
    days: set[int] = set()
    for part in text.lower().split(","):
        span, _, step_text = part.partition("/")
        if span == "*":
            first, last = 0, 6
        else:
            start_text, dash, end_text = span.partition("-")
            first = _weekday_number(start_text, text)
            last = _weekday_number(end_text, text) if dash else (6 if step_text else first)
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"weekday step {step_text!r} in {text!r} is not a positive number")
        if last < first:
            raise ValueError(f"weekday range {span!r} in {text!r} runs backwards")
        days.update(day % 7 for day in range(first, last + 1, step or 1))  # 7 is Sunday too
    return days


def _weekday_number(text: str, field_text: str) -> int:
    if text.isdigit() and int(text) <= 7:
        return int(text)
    if text in _WEEKDAYS:
        return _WEEKDAYS.index(text)
    raise ValueError(f"weekday {text!r} in {field_text!r} is not 0-7 or sun-sat")
