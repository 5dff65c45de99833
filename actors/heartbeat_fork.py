"""The heartbeat process the ``dramatiq`` master starts beside its workers (Redis only).

Imported by path (``actors.heartbeat_fork:run``) in a process of its own, so it builds the
broker from the same settings as the workers; see ``middleware/heartbeats.py`` for why.
"""

from __future__ import annotations

from actors.system import current_system
from middleware.heartbeats import run_keeper


def run() -> int:
    # The master imported (and so configured) actors before it forked this process.
    run_keeper(current_system().broker, stop=lambda: False)  # ends when the master sends SIGTERM
    return 0
