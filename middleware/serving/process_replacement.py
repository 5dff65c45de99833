"""Replacing one ``dramatiq`` worker process without losing any work.

When a worker process exits, the ``dramatiq`` master takes it for a crash: it stops all its other
processes and exits. So a process to be replaced (recycled, or stuck in C code past its hard time
limit) asks for it, and every other process of its master is stopped gracefully first (a
checkpointed job hands its message back, another finishes within the shutdown timeout,
prefetched messages go back):

- under ``python -m ops workers`` (``requests_dir`` set: each master runs one process), it
  leaves a request naming its master and the reason, and sends the master SIGTERM. The master
  stops and exits; the supervisor finds the request and starts the slot again at once, as a
  replacement, not a crash. The other slots keep serving.
- under a plain ``dramatiq`` command it sends the master SIGHUP, on which Dramatiq stops its
  processes and starts itself again with the same pid: all of its ``--processes`` are replaced.
  Dramatiq never reaps the fork processes of the image it replaces: each such reload leaves them
  as zombies (a process-table entry each, no memory) until the command exits.
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


def ask_master_to_replace_its_processes(master_pid: int, *, reason: str, requests_dir: Path | None) -> None:
    """Have ``master_pid``'s processes stopped gracefully and started again (see the module's docstring)."""
    if requests_dir is None:
        os.kill(master_pid, signal.SIGHUP)
        return
    requests_dir.mkdir(parents=True, exist_ok=True)
    request_path(requests_dir, master_pid).write_text(reason)
    os.kill(master_pid, signal.SIGTERM)


def request_path(requests_dir: Path, master_pid: int) -> Path:
    return requests_dir / f"{master_pid}.replace"


def take_replace_request(requests_dir: Path, master_pid: int) -> str | None:
    """The reason a slot's master (now exited) was asked to stop for a replacement, or None: it crashed."""
    path = request_path(requests_dir, master_pid)
    try:
        reason = path.read_text()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    return reason


def _parent_of(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return None
