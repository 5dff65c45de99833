"""Configures this process once: its database, its broker, and Dramatiq's global broker."""

from __future__ import annotations

import dramatiq

from actors.broker import build_broker
from actors.settings import Settings
from actors.system import System, register
from middleware.storage.database import Database


def configure(settings: Settings) -> System:
    """Build the broker and make it Dramatiq's global broker, before any actor is declared."""
    database = Database(settings.database_url)
    broker = build_broker(settings, database)
    dramatiq.set_broker(broker)
    return register(System(settings=settings, database=database, broker=broker))
