"""Replacing one ``dramatiq`` worker process without losing any work or stopping the command.

When a worker process exits, the ``dramatiq`` master takes it for a crash: it stops all its other
processes and exits. On SIGHUP, instead, it stops them all gracefully (a checkpointed job hands its
message back, another finishes within the shutdown timeout, prefetched messages go back) and
starts itself again, with the same pid. So a process to be replaced (recycled, or stuck in C code
past its hard time limit) asks its master for that reload. Under ``python -m ops workers`` each
master runs one process, so only that one is replaced; a master of ``--processes N`` replaces all
N at once.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def dramatiq_master_pid(pid: int | None = None) -> int | None:
    """The pid of the ``dramatiq`` command that started process ``pid`` (this one by default), or
    None when it was not started by one (an app, a test's in-process worker): nothing to reload."""
    parent = os.getppid() if pid is None else _parent_of(pid)
    if parent is None or parent <= 1:
        return None
    try:
        arguments = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # `dramatiq ...` (the console script), `python -m dramatiq ...`, or `python .../dramatiq/__main__.py`
    # (how the master starts itself again after a reload).
    paths = [Path(argument.decode(errors="replace")) for argument in arguments[:3]]
    ours = any(
        path.name == "dramatiq" or (path.name == "__main__.py" and path.parent.name == "dramatiq") for path in paths
    )
    return parent if ours else None


def ask_master_to_replace_its_processes(master_pid: int) -> None:
    """SIGHUP: the master stops its processes gracefully and starts again (see the module's docstring)."""
    os.kill(master_pid, signal.SIGHUP)


def _parent_of(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return None
