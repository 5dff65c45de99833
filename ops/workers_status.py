"""python -m ops workers status: each worker slot of the ``python -m ops workers`` supervisors.

Reads the ``worker_slots`` table, which every supervisor rewrites on each change of a slot. By
default the supervisors of this host (``--all-hosts``: every host). For this host's slots the
uptime and the resident memory come from /proc: the RSS of the slot's dramatiq master plus all
its descendants (its worker process and heartbeat fork), or ``-`` once that process is gone. A
slot whose supervisor no longer runs (it was killed) shows ``(supervisor gone)`` after its state.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from middleware.storage.worker_slots import RUNNING
from ops.output import print_json, print_table

COLUMNS = ("host", "supervisor", "slot", "pid", "state", "uptime", "restarts", "rss", "last_exit_reason")
PROC = Path("/proc")


def add_commands(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser("status", help="each worker slot: pid, uptime, restarts, last exit, state, RSS")
    status.add_argument("--all-hosts", action="store_true", help="every host's supervisors (default: this host's)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_status)


def slot_status(
    rows: Sequence[Mapping[str, Any]], *, host: str, now: datetime, proc: Path = PROC
) -> list[dict[str, Any]]:
    """The rows with ``supervisor_running``, ``uptime_s`` and ``rss_bytes`` added; the last two only for
    a running slot of ``host`` (this one) whose master is still the supervisor's child, else None."""
    result = []
    for row in rows:
        local = row["host"] == host
        supervisor_running = _is_running(proc, row["supervisor_pid"]) if local else None
        alive = local and row["state"] == RUNNING and row["pid"] is not None
        alive = alive and _parent_of(proc, row["pid"]) == row["supervisor_pid"]  # not a reused pid
        result.append(
            {
                **row,
                "supervisor_running": supervisor_running,
                "uptime_s": round((now - row["started_at"]).total_seconds(), 1) if alive else None,
                "rss_bytes": process_tree_rss_bytes(row["pid"], proc=proc) if alive else None,
            }
        )
    return result


def process_tree_rss_bytes(pid: int, *, proc: Path = PROC) -> int | None:
    """The resident memory of ``pid`` and all its descendants, from /proc; None if ``pid`` is gone."""
    total = _rss_bytes(proc, pid)
    if total is None:
        return None
    seen, pending = {pid}, _children(proc, pid)
    while pending:
        child = pending.pop()
        if child in seen:
            continue
        seen.add(child)
        rss = _rss_bytes(proc, child)
        if rss is not None:  # None: it exited meanwhile
            total += rss
            pending += _children(proc, child)
    return total


def _status(args: argparse.Namespace) -> int:
    from actors.system import current_system
    from middleware.storage.worker_slots import list_worker_slots

    host = socket.gethostname()
    rows = list_worker_slots(current_system().database, host=None if args.all_hosts else host)
    slots = slot_status(rows, host=host, now=datetime.now(UTC))
    if args.json:
        print_json(slots)
        return 0
    where = "any host" if args.all_hosts else f"this host ({host})"
    print_table(
        [_shown(slot) for slot in slots],
        COLUMNS,
        empty=f"No worker slots recorded on {where}: no python -m ops workers runs there, or it stopped cleanly.",
    )
    return 0


def _shown(slot: Mapping[str, Any]) -> dict[str, Any]:
    gone = slot["supervisor_running"] is False
    return {
        **slot,
        "supervisor": slot["supervisor_pid"],
        "state": f"{slot['state']} (supervisor gone)" if gone else slot["state"],
        "uptime": _duration(slot["uptime_s"]),
        "rss": None if slot["rss_bytes"] is None else f"{slot['rss_bytes'] / 2**20:.1f} MiB",
    }


def _duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _is_running(proc: Path, pid: int) -> bool:
    return (proc / str(pid) / "stat").exists()


def _status_fields(proc: Path, pid: int) -> dict[str, str] | None:
    try:
        text = (proc / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _rss_bytes(proc: Path, pid: int) -> int | None:
    fields = _status_fields(proc, pid)
    if fields is None:
        return None
    # A zombie has no VmRSS line: it holds no memory any more.
    return int(fields.get("VmRSS", "0 kB").split()[0]) * 1024


def _parent_of(proc: Path, pid: int) -> int | None:
    fields = _status_fields(proc, pid)
    return int(fields["PPid"]) if fields and "PPid" in fields else None


def _children(proc: Path, pid: int) -> list[int]:
    """Children of every thread of ``pid`` (a child belongs to the thread that forked it)."""
    children = []
    for task in (proc / str(pid) / "task").glob("*"):
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return children
