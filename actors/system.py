"""The configured system of this process: settings, database and broker, built once by ``actors.boot``."""

from __future__ import annotations

from dataclasses import dataclass

import dramatiq

from actors.settings import Settings
from middleware.storage.database import Database


@dataclass(frozen=True)
class System:
    settings: Settings
    database: Database
    broker: dramatiq.Broker


_system: System | None = None


def register(system: System) -> System:
    """Make ``system`` this process's (``actors.boot.configure`` does, once)."""
    global _system
    _system = system
    return system


def current_system() -> System:
    if _system is None:
        raise RuntimeError("The system is not configured yet: import the `actors` package first.")
    return _system
