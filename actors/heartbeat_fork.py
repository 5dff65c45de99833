"""The heartbeat process the ``dramatiq`` master starts beside its workers (Redis only).

Imported by path (``actors.heartbeat_fork:run``) in a process of its own, so it builds the
broker from the same settings as the workers; see ``middleware/heartbeats.py`` for why.
"""

from __future__ import annotations

from dramatiq.brokers.redis import RedisBroker

from actors.system import current_system
from middleware.heartbeats import run_keeper


def run() -> int:
    # The master imported (and so configured) actors before it forked this process.
    broker = current_system().broker
    if not isinstance(broker, RedisBroker):  # actors.broker forks this process on the Redis stack only
        raise TypeError(f"worker heartbeats need the Redis broker, not {type(broker).__name__}")
    run_keeper(broker, stop=lambda: False)  # ends when the master sends SIGTERM
    return 0
