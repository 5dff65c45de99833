"""python -m ops schedule: the schedule's entries, each one's next tick and last result, and who leads.

The entries are the ones ``python -m scheduler`` runs (``SCHEDULE_MODULE``), checked the same way;
the last results come from ``schedule_state`` and, for the last tick's message, ``job_status``.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from ops.output import print_json, print_table

COLUMNS = ("entry", "when", "runs", "next_run", "last_tick", "last_result")


def add_commands(commands: argparse._SubParsersAction) -> None:
    schedule = commands.add_parser("schedule", help="schedule entries: next run, last result, leader")
    schedule.add_argument("--json", action="store_true", help="print JSON")
    schedule.set_defaults(handler=_schedule)


def schedule_report(*, now: datetime | None = None) -> dict[str, Any]:
    """{"leader": "host:pid" | None, "module": SCHEDULE_MODULE, "entries": [{entry, when, runs, args, kwargs,
    next_run, last_tick, last_result, last_outcome, last_fired_at, fired_by, last_message_id, last_job_status,
    last_job_error, last_error}]}"""
    from actors.system import current_system
    from middleware.storage.schedule_state import entry_states
    from scheduler.entries import load_schedule, validate
    from scheduler.leader import current_leader

    system = current_system()
    entries = load_schedule(system.settings.schedule_module)
    validate(entries, system.broker)
    now = now or datetime.now(UTC)
    states = entry_states(system.database)
    rows = []
    for entry in entries:
        state = states.get(entry.name, {})
        rows.append(
            {
                "entry": entry.name,
                "when": entry.when,
                "runs": entry.runs,
                "args": list(entry.args),
                "kwargs": dict(entry.kwargs),
                "next_run": entry.trigger().get_next_fire_time(None, now),
                "last_tick": state.get("last_scheduled_for"),
                "last_result": _last_result(state),
                **{
                    name: state.get(name)
                    for name in (
                        "last_outcome",
                        "last_fired_at",
                        "fired_by",
                        "last_message_id",
                        "last_job_status",
                        "last_job_error",
                        "last_error",
                    )
                },
            }
        )
    leader = current_leader(system.database, state_dir=system.settings.state_dir)
    return {"leader": leader, "module": system.settings.schedule_module, "entries": rows}


def _last_result(state: dict[str, Any]) -> str | None:
    """``enqueued, completed``; ``duplicate, processing``; ``ran: 0 alert(s) firing``; ``missed: ...``;
    ``error: ...`` (None: never ticked)."""
    if not state:
        return None
    if state["last_outcome"] not in ("enqueued", "duplicate"):
        return state["last_outcome"] + (f": {state['last_error']}" if state["last_error"] else "")
    status = state["last_job_status"] or "status purged"
    error = f": {state['last_job_error']}" if state["last_job_status"] == "failed" else ""
    return f"{state['last_outcome']}, {status}{error}"


def _schedule(args: argparse.Namespace) -> int:
    report = schedule_report()
    if args.json:
        print_json(report)
        return 0
    print(f"Leader: {report['leader'] or 'none (no scheduler holds the lock)'}; schedule: {report['module']}")
    print_table(report["entries"], COLUMNS, empty="The schedule has no entries.")
    return 0
