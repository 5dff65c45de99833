"""python -m ops queues: per queue, messages waiting, delayed, in progress, dead, and the oldest one's age.

Where each number comes from, per broker, is in ``middleware/operations/queue_stats.py``. ``unresolved``
is the queue's unresolved rows in the ``dead_letters`` table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ops.output import print_json, print_table

COLUMNS = ("queue_name", "waiting", "delayed", "in_progress", "dead", "oldest_waiting_age_s", "unresolved")


def add_commands(commands: argparse._SubParsersAction) -> None:
    queues = commands.add_parser("queues", help="per queue: waiting, delayed, in progress, dead, oldest age")
    queues.add_argument("--json", action="store_true", help="print JSON")
    queues.set_defaults(handler=_queues)


def quiet_pika() -> None:
    """pika logs a failed connection at ERROR with tracebacks; the command says it in one line instead."""
    logging.getLogger("pika").setLevel(logging.CRITICAL)


def queue_rows() -> list[dict[str, Any]]:
    from actors.system import current_system
    from middleware.operations.dead_letter_store import stats as dead_letter_stats
    from middleware.operations.queue_stats import queue_stats

    system = current_system()
    stats = queue_stats(system.broker, system.database, stale_after_ms=system.settings.worker_stale_after_ms)
    unresolved = {row["queue"]: row["unresolved"] for row in dead_letter_stats(system.database)}
    return [{**queue.to_dict(), "dead_letters_unresolved": unresolved.get(queue.queue_name, 0)} for queue in stats]


def _queues(args: argparse.Namespace) -> int:
    from middleware.operations.queue_stats import BrokerUnavailable

    quiet_pika()
    try:
        rows = queue_rows()
    except BrokerUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print_json(rows)
    else:
        print_table(
            [{**row, "unresolved": row["dead_letters_unresolved"]} for row in rows], COLUMNS, empty="No queues."
        )
    return 0
