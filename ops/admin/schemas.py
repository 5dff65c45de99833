"""The admin API's request and response bodies: they are its OpenAPI document."""

from __future__ import annotations

from argparse import ArgumentTypeError
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema

from middleware.dead_letters import KINDS
from middleware.job_status import STATUSES
from middleware.storage.database import as_utc
from middleware.storage.worker_slots import STATES
from ops.durations import moment


def _storable(text: str) -> str:
    # Both databases refuse NUL characters and lone surrogates; say so instead of failing there.
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return text


_NO_NUL = r"^[^\x00]*$"
#: A name as stored (queue, actor, person): 1..255 characters, no NUL.
Name = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=_NO_NUL), AfterValidator(_storable)]
MessageId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_NO_NUL), AfterValidator(_storable)]
Notes = Annotated[str, StringConstraints(max_length=10_000, pattern=_NO_NUL), AfterValidator(_storable)]
Utc = Annotated[datetime, AfterValidator(as_utc)]
Kind = Literal[KINDS]  # type: ignore[valid-type]
Status = Literal[STATUSES]  # type: ignore[valid-type]
SlotState = Literal[STATES]  # type: ignore[valid-type]
#: Row ids are 64-bit in PostgreSQL.
RowId = Annotated[int, Field(ge=1, le=2**63 - 1)]


def _since(text: str) -> datetime:
    """A duration ago (``24h``, ``7d``) or an ISO date or time (UTC unless it says otherwise), in UTC."""
    try:
        since = moment(text)
    except ArgumentTypeError as error:
        raise ValueError(str(error)) from None
    except OverflowError:  # a duration reaching back before year 1: everything is since then
        return datetime.min.replace(tzinfo=UTC)
    try:
        return since.astimezone(UTC)
    except OverflowError:  # within hours of year 1 or 9999, with an offset that crosses it
        return (datetime.min if since.year == 1 else datetime.max).replace(tzinfo=UTC)


#: ``24h``, ``7d``, ``90m`` ago, or an ISO date or time; validated into a UTC datetime.
Since = Annotated[
    str,
    AfterValidator(_since),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d{1,12}[smhdw]$"},
                {"type": "string", "format": "date"},
                {"type": "string", "format": "date-time"},
            ],
            "description": "failed since: a duration ago (24h, 7d) or an ISO date or time (UTC unless it says)",
        }
    ),
]


class Session(BaseModel):
    role: Literal["read-write", "read-only"]
    dev_mode: bool
    #: The most dead letters one bulk requeue takes.
    requeue_max_per_call: int


class Job(BaseModel):
    message_id: str
    actor_name: str
    queue_name: str
    status: Status
    attempts: int
    unfinished_deliveries: int
    progress: float | None
    error: str | None
    enqueued_at: Utc | None
    started_at: Utc | None
    finished_at: Utc | None
    updated_at: Utc


class JobPage(BaseModel):
    total: int
    page: int
    limit: int
    jobs: list[Job]


class DeadLetterSummary(BaseModel):
    id: int
    queue_name: str
    actor_name: str
    message_id: str
    error_type: str
    error_message: str
    attempts: int
    kind: str
    failed_at: Utc
    resolved: bool
    resolved_at: Utc | None
    resolved_by: str | None
    notes: str | None
    requeued_as: str | None
    requeued_at: Utc | None


class DeadLetter(DeadLetterSummary):
    #: The original message (args, kwargs, options), sensitive fields redacted.
    message: dict[str, Any]
    traceback: str | None


class QueueDeadLetterStats(BaseModel):
    queue: str
    total: int
    resolved: int
    unresolved: int


class DeadLetterPage(BaseModel):
    total: int
    page: int
    limit: int
    dead_letters: list[DeadLetterSummary]
    #: Per queue, over every dead letter (not only this page's filter).
    stats: list[QueueDeadLetterStats]


def _json_boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _json_integer(value: Any) -> Any:
    # JSON has one number type, so 5.0 is the integer 5; but true and "5" are not numbers.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    return value


#: Request body fields are taken as JSON types: pydantic alone would take true for 1, "5" for 5 and
#: 1 for true, none of which the OpenAPI document allows. Last in an ``Annotated``, after any
#: ``Field`` constraints (nested, they would drop out of the document).
JSON_BOOLEAN = BeforeValidator(_json_boolean)
JSON_INTEGER = BeforeValidator(_json_integer)


class ResolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Resolving is the one change a dead letter takes; it can be repeated to amend the notes.
    resolved: Annotated[Literal[True], JSON_BOOLEAN] = True
    by: Name
    notes: Notes | None = None


class Requeued(BaseModel):
    id: int
    requeued_as: str


class BulkRequeueResult(BaseModel):
    #: Unresolved dead letters matching the filter.
    matched: int
    dry_run: bool
    requeued: list[Requeued]


class CurrentJob(BaseModel):
    model_config = ConfigDict(extra="allow")
    message_id: str
    actor_name: str
    progress: float | None


class WorkerHealth(BaseModel):
    model_config = ConfigDict(extra="allow")
    worker_id: str
    host: str
    pid: int
    version: str | None
    queues: list[str]
    processed: int
    failed: int
    in_progress: int
    current_job: CurrentJob | None
    last_job_finished_at: str | None
    heartbeat_at: str | None
    heartbeat_age_s: float | None
    healthy: bool
    reason: str


class WorkerSlotHealth(BaseModel):
    """A slot of a ``python -m ops workers`` supervisor (the ``worker_slots`` table)."""

    model_config = ConfigDict(extra="allow")
    host: str
    supervisor_pid: int
    slot: int
    queues: list[str]
    pid: int | None
    started_at: str | None
    restarts: int
    last_exit_code: int | None
    last_exit_reason: str | None
    state: SlotState
    updated_at: str
    healthy: bool
    reason: str


class QueueHealth(BaseModel):
    model_config = ConfigDict(extra="allow")
    queue_name: str
    waiting: int
    delayed: int
    in_progress: int
    dead: int
    oldest_waiting_age_s: float | None
    dead_letters_unresolved: int
    healthy: bool
    reason: str


class HealthReport(BaseModel):
    model_config = ConfigDict(extra="allow")
    healthy: bool
    reason: str
    checked_at: str
    dead_letters_unresolved: int
    workers: list[WorkerHealth]
    worker_slots: list[WorkerSlotHealth]
    queues: list[QueueHealth]


class QueueList(BaseModel):
    checked_at: str
    queues: list[QueueHealth]


class Liveness(BaseModel):
    status: Literal["ok"]
