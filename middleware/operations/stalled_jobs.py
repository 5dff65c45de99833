"""Stalled jobs: a job marked ``processing`` whose message no queue holds any more is handed back.

A dead worker's message normally comes back by itself: on Redis through the heartbeat keeper's
hand-back (``middleware/heartbeats.py``), on RabbitMQ as soon as the dead connection closes. A
message can still be lost (Redis restarted without its data, a queue flushed or deleted by hand),
and then its job stays ``processing`` for ever. The sweep:

1. takes the ``job_status`` rows still ``processing`` and not updated for ``stalled_after`` (a
   running checkpointed job updates its row with every checkpoint);
2. leaves alone each one whose message the broker still holds, waiting, delayed, running or
   dead (Redis: the message hashes of the queue, its delay queue and its dead-letter queue,
   searched once per queue and sweep by a script a page at a time, so that a long queue neither
   holds Redis up nor fills the sweep's memory: Redis answers with the ids it found, not the bodies);
3. hands back each remaining checkpointed job: the message saved with its checkpoint (by its first
   delivery's lease claim, then by every save) is enqueued again under the same message id, and
   its next delivery resumes after the last checkpoint, or starts over if it saved none;
4. marks the others ``failed`` as lost: with no checkpoint there is no message to run again.

Each change is a compare-and-set on the row's ``updated_at``: a job that moved on meanwhile (it
finished, or a retry rewrote its row) is left alone. RabbitMQ cannot show the messages a consumer
holds without taking them, and hands back a dead consumer's messages itself, so there the sweep
only reports the rows it found.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, q_name, xq_name
from dramatiq.encoder import JSONEncoder
from sqlalchemy import select, update

from middleware.brokers.redis_keys import bodies_key
from middleware.checkpoints import job_checkpoints
from middleware.job_logs import emit_event
from middleware.job_status import FAILED, PROCESSING, job_status
from middleware.policies.poison_messages import HANDED_BACK
from middleware.storage.database import Database

logger = logging.getLogger("middleware.operations.stalled_jobs")

#: Options of the lost delivery, not of the job: the broker sets them again on enqueue.
_DELIVERY_OPTIONS = ("redis_message_id", "eta")


@dataclass
class SweepReport:
    examined: int = 0
    handed_back: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    #: Stale rows on a broker whose held messages cannot be listed (RabbitMQ): reported, not touched.
    unverified: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "examined": self.examined,
            "handed_back": self.handed_back,
            "lost": self.lost,
            "unverified": self.unverified,
        }


def sweep_stalled_jobs(broker: dramatiq.Broker, database: Database, *, stalled_after: timedelta) -> SweepReport:
    report = SweepReport()
    rows = _stale_processing_rows(database, older_than=stalled_after)
    report.examined = len(rows)
    if not isinstance(broker, RedisBroker):
        report.unverified = [row["message_id"] for row in rows]
        rows = []
    by_queue: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_queue[row["queue_name"]].append(row["message_id"])
    held = (
        {
            message_id
            for queue_name, message_ids in by_queue.items()
            for message_id in _held_message_ids(broker, queue_name, message_ids)
        }
        if isinstance(broker, RedisBroker)
        else set()  # no rows left to look up
    )
    for row in rows:
        if row["message_id"] in held:
            continue
        payload = _checkpoint_message(database, row["message_id"])
        if payload is None:
            if _mark_lost(database, row):
                report.lost.append(row["message_id"])
        elif _claim_hand_back(database, row):
            _enqueue_again(broker, payload)
            report.handed_back.append(row["message_id"])
    if report.unverified:
        logger.info(
            "%d job(s) have been processing for over %s; the broker cannot be asked whether it holds "
            "their messages, so they are left to it.",
            len(report.unverified),
            stalled_after,
        )
    return report


def _stale_processing_rows(database: Database, *, older_than: timedelta) -> list[dict[str, Any]]:
    query = select(
        job_status.c.message_id, job_status.c.actor_name, job_status.c.queue_name, job_status.c.updated_at
    ).where(job_status.c.status == PROCESSING, job_status.c.updated_at < datetime.now(UTC) - older_than)
    with database.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


# KEYS: one message hash; ARGV: an HSCAN cursor, "json" or "any", then message ids. Scans one page
# of the hash and returns the next cursor, then the ids some body of the page names. Redis answers
# ids, not bodies, and is held for one page at a time. An id named anywhere in a body (a pipeline's
# next message too) counts as held, which only ever leaves a row for the next sweep. "json": bodies
# are Dramatiq's compact JSON, and only the values of "message_id" keys are looked up, whatever the
# number of ids; "any" (another encoder): each id is searched for in each body.
_FIND_HELD_SCRIPT = """
local wanted = {}
for i = 3, #ARGV do wanted[ARGV[i]] = true end
local page = redis.call("HSCAN", KEYS[1], ARGV[1], "COUNT", 1000)
local reply = {page[1]}
for i = 2, #page[2], 2 do
  local body = page[2][i]
  if ARGV[2] == "json" then
    local at = 1
    while true do
      local _, last = string.find(body, '"message_id":"', at, true)
      if last == nil then break end
      at = string.find(body, '"', last + 1, true) or #body
      local id = string.sub(body, last + 1, at - 1)
      if wanted[id] then
        wanted[id] = nil
        reply[#reply + 1] = id
      end
    end
  else
    for id in pairs(wanted) do
      if string.find(body, id, 1, true) then
        wanted[id] = nil
        reply[#reply + 1] = id
      end
    end
  end
end
return reply
"""


def _held_message_ids(broker: RedisBroker, queue_name: str, message_ids: list[str]) -> set[str]:
    """Which of ``message_ids`` the queue's message hashes (delayed, ready and unacked, dead) hold.

    The hashes are scanned page by page, not in one snapshot, in the order a message moves between
    them without a status write: a delayed message whose time has come is added to the queue before
    it leaves the delay queue, so scanning the delay queue first sees it in one or the other. Every
    other move (a retry or a hand-back into the delay queue, a dead letter) writes the job's status
    before the message leaves its hash, and the compare-and-set on ``updated_at`` then leaves the
    row alone. A delivery, and the heartbeat keeper's hand-back, leave the body where it is.
    """
    script = broker.client.register_script(_FIND_HELD_SCRIPT)
    bodies = "json" if type(dramatiq.get_encoder()) is JSONEncoder else "any"
    wanted, held = set(message_ids), set()
    for name in (dq_name(queue_name), q_name(queue_name), xq_name(queue_name)):
        cursor = b"0"
        while wanted:
            cursor, *found = script(keys=[bodies_key(broker, name)], args=[cursor, bodies, *wanted])
            found_ids = {message_id.decode() for message_id in found}
            held |= found_ids
            wanted -= found_ids
            if cursor == b"0":
                break
    return held


def _checkpoint_message(database: Database, message_id: str) -> dict[str, Any] | None:
    query = select(job_checkpoints.c.message).where(
        job_checkpoints.c.message_id == message_id, job_checkpoints.c.completed_at.is_(None)
    )
    with database.engine.connect() as connection:
        return connection.scalar(query.limit(1))


def _claim_hand_back(database: Database, row: dict[str, Any]) -> bool:
    # Touching updated_at claims the row: a concurrent sweep, or the job moving on, makes this a no-op,
    # and the next sweep looks again only after stalled_after.
    with database.transaction() as connection:
        claimed = connection.execute(_unchanged(row).values(updated_at=datetime.now(UTC))).rowcount == 1
    if claimed:
        reason = "stalled: no queue held its message; it resumes from its checkpoint"
        emit_event("job.handed_back", level=logging.WARNING, **_job_fields(row), reason=reason)
    return claimed


def _mark_lost(database: Database, row: dict[str, Any]) -> bool:
    now = datetime.now(UTC)
    error = "lost: no queue holds its message any more and it saved no checkpoint to resume from"
    with database.transaction() as connection:
        marked = (
            connection.execute(
                _unchanged(row).values(status=FAILED, error=error, finished_at=now, updated_at=now)
            ).rowcount
            == 1
        )
    if marked:
        emit_event("job.lost", level=logging.ERROR, **_job_fields(row), error=error)
    return marked


def _job_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The fields every job event opens with, from a job_status row."""
    return {"message_id": row["message_id"], "actor": row["actor_name"], "queue": row["queue_name"]}


def _unchanged(row: dict[str, Any]):
    return update(job_status).where(
        job_status.c.message_id == row["message_id"],
        job_status.c.status == PROCESSING,
        job_status.c.updated_at == row["updated_at"],
    )


def _enqueue_again(broker: dramatiq.Broker, payload: dict[str, Any]) -> None:
    options = {key: value for key, value in payload.get("options", {}).items() if key not in _DELIVERY_OPTIONS}
    options[HANDED_BACK] = options.get(HANDED_BACK, 0) + 1  # its next delivery counts itself before it runs
    message: dramatiq.Message[Any] = dramatiq.Message(
        **{**payload, "queue_name": q_name(payload["queue_name"]), "options": options}
    )
    broker.enqueue(message)
