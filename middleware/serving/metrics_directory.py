"""The multiprocess metrics directory of a worker deployment: one per instance, stale ones removed.

``prometheus_client`` in multiprocess mode keeps each process's values in files of one directory,
and the exporter sums them. Dramatiq's own middleware shares one directory between every run on a
machine and never cleans it, so a SIGKILLed run's files report its jobs in progress forever. Here:

1. Each instance (a ``dramatiq`` master, or ``python -m ops workers``) gets a directory of its own
   under ``STATE_DIR/metrics``, named by host, pid and the process's start time, so a reused pid
   never inherits another run's files. A new instance starts empty: that is the clean start.
2. At start, the directories of instances that are no longer running on this host are removed
   (under a file lock: the worker processes of one master prepare the directory at once).
3. ``PROMETHEUS_MULTIPROC_DIR`` must be set before anything imports ``prometheus_client``, which
   picks its storage when imported; :func:`use_metrics_directory` refuses to start otherwise,
   instead of serving an endpoint that stays empty.

No ``prometheus_client`` import here: this module runs before the variable is set.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import shutil
import socket
import sys
from pathlib import Path

logger = logging.getLogger("middleware.serving.metrics_directory")

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class MetricsDirectoryError(RuntimeError):
    """The metrics directory cannot be used; the message says why and what to do."""


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, from /proc), or None if it is not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: count fields after its last ")".
    return int(stat.rsplit(")", 1)[1].split()[19])


def instance_name(pid: int, *, host: str | None = None) -> str:
    return f"{host or socket.gethostname()}-{pid}-{process_start_ticks(pid) or 0}"


def instance_directory(root: Path, pid: int) -> Path:
    """The directory of the instance whose main process is ``pid``, created if missing, stale ones removed."""
    root.mkdir(parents=True, exist_ok=True)
    directory = root / instance_name(pid)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        remove_stale_directories(root)
        directory.mkdir(exist_ok=True)
    return directory


def remove_stale_directories(root: Path) -> list[Path]:
    """Remove the directories of this host's instances that are no longer running."""
    host = socket.gethostname()
    removed = []
    for path in root.iterdir():
        parts = path.name.rsplit("-", 2)
        if not path.is_dir() or len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
            continue  # not an instance directory
        name_host, pid, ticks = parts[0], int(parts[1]), int(parts[2])
        if name_host != host:
            continue  # another host's instance (a shared STATE_DIR): its own workers clean it up
        if process_start_ticks(pid) != ticks:  # stopped, or the pid now belongs to another process
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.info(
            "Removed the metrics of %d stopped instance(s): %s.", len(removed), ", ".join(path.name for path in removed)
        )
    return removed


def is_dramatiq_process() -> bool:
    """True in the worker and fork processes of a ``dramatiq`` command (children of its master)."""
    command = sys.argv[0] if sys.argv else ""
    from_cli = Path(command).name == "dramatiq" or command.endswith(os.path.join("dramatiq", "__main__.py"))
    return from_cli and multiprocessing.parent_process() is not None


def use_metrics_directory(directory: Path) -> Path:
    """Point ``prometheus_client`` at ``directory``; it must not have been imported yet."""
    if "prometheus_client" in sys.modules and os.environ.get(MULTIPROC_VARIABLE) != str(directory):
        raise MetricsDirectoryError(
            "prometheus_client was imported before the metrics directory was set, so this process's "
            "metrics would never reach the endpoint; import the `actors` package before anything that "
            "imports prometheus_client."
        )
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_VARIABLE] = str(directory)
    return directory
