"""The watcher process the ``dramatiq`` master starts beside its workers: hard time limits.

Imported by path (``actors.hard_limit_fork:run``) in a process of its own; see
``middleware/hard_time_limits.py`` for why it cannot run inside a worker process.
"""

from __future__ import annotations

import os
from pathlib import Path

from actors.system import current_system
from middleware.hard_time_limits import watch_deadlines


def run() -> int:
    # The master imported (and so configured) actors before it forked this process.
    settings = current_system().settings
    watch_deadlines(
        hard_limit_directory(settings.state_dir),
        master_pid=os.getppid(),
        grace_ms=settings.hard_limit_grace_ms,
        requests_dir=settings.replace_requests_dir,
        stop=lambda: False,  # ends when the master sends SIGTERM, or once it has replaced a stuck worker
    )
    return 0


def hard_limit_directory(state_dir: Path) -> Path:
    """Where the worker processes keep their deadline boards (their own host's state directory)."""
    return state_dir / "hard-limits"
