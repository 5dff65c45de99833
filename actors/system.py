"""The configured system of this process: settings, database and broker, built once."""

from __future__ import annotations

from dataclasses import dataclass

import dramatiq

from actors.broker import build_broker
from actors.settings import Settings
from middleware.database import Database


@dataclass(frozen=True)
class System:
    settings: Settings
    database: Database
    broker: dramatiq.Broker


_system: System | None = None


def configure(settings: Settings) -> System:
    """Build the broker and make it Dramatiq's global broker, before any actor is declared."""
    global _system
    database = Database(settings.database_url)
    broker = build_broker(settings, database)
    dramatiq.set_broker(broker)
    _system = System(settings=settings, database=database, broker=broker)
    return _system


def current_system() -> System:
    if _system is None:
        raise RuntimeError("The system is not configured yet: import the `actors` package first.")
    return _system
