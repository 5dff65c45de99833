"""A database outage interrupts jobs; it does not spend their attempts.

Seen in the long chaos run: with 40 transcriptions queued on two workers, each 3 s cut of
PostgreSQL freed both workers, which then took every waiting job in turn and failed each within
10 ms, spending one attempt of the whole queue per outage: after six cuts, 39 of the 40 (valid)
jobs were dead-lettered.

So when a job fails with a database connection error *and the database does not answer a probe*,
the failure is an interruption: the message is handed back without spending an attempt, and the
worker thread waits until the database answers before it takes another message, so a queue
cannot burn through its retries during an outage. A database that answers the probe at once
means the error was something else (a missing table is an ``OperationalError`` too): it is
charged as usual. After ``max_hand_backs`` outage hand-backs of one message, its failures are
charged again, so nothing waits forever.
"""

from __future__ import annotations

import logging
import time

import dramatiq
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from middleware.storage.database import Database

logger = logging.getLogger("middleware.storage.database_outages.DatabaseOutages")

HAND_BACKS_OPTION = "database_outage_hand_backs"


class DatabaseOutages:
    """Tells an outage from an error, and waits one out.

    Parameters:
      database: the database the jobs and the middleware write to.
      wait_s: the longest a worker thread waits for the database before it takes messages again.
      max_hand_backs: outage hand-backs of one message before its failures are charged again.
    """

    def __init__(self, database: Database, *, wait_s: float = 30.0, max_hand_backs: int = 50) -> None:
        self.database = database
        self.wait_s = wait_s
        self.max_hand_backs = max_hand_backs

    def interrupts(self, message: dramatiq.Message | dramatiq.MessageProxy, exception: BaseException) -> bool:
        """True when ``exception`` comes from a database that is down; counts the hand-back."""
        if not _is_connection_error(exception) or self.reachable():
            return False
        hand_backs = message.options.get(HAND_BACKS_OPTION, 0)
        if hand_backs >= self.max_hand_backs:
            return False
        message.options[HAND_BACKS_OPTION] = hand_backs + 1
        return True

    def reachable(self) -> bool:
        try:
            with self.database.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except DBAPIError:
            return False
        return True

    def wait_until_reachable(self) -> bool:
        """Block this worker thread until the database answers, or ``wait_s`` has passed."""
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline:
            if self.reachable():
                return True
            time.sleep(0.5)  # probing a database that is down: there is nothing to wait on
        logger.warning("The database is still unreachable after %.0f s; taking messages again.", self.wait_s)
        return False


def _is_connection_error(exception: BaseException) -> bool:
    seen: BaseException | None = exception
    while seen is not None:
        if isinstance(seen, OperationalError | InterfaceError) or (
            isinstance(seen, DBAPIError) and seen.connection_invalidated
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
