"""Fail fast at worker boot: a worker that cannot do its job stops before taking any message.

Each check returns None when all is well, or a sentence saying what is wrong and how to fix
it. A failed check ends the worker process with exit code 2 (the ``dramatiq`` CLI's code for a
bad start) and that sentence, instead of a worker that fails every message it takes. A check
that cannot run because a service is unreachable raises :class:`TransientBootProblem`: exit
code 3, which supervisors restart.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import dramatiq
from dramatiq.middleware import Middleware

logger = logging.getLogger("middleware.boot_checks.BootChecks")

EXIT_BAD_START = 2
#: Dramatiq's own code for "could not connect at boot": a supervisor restarts the worker.
EXIT_CONNECTION_FAILED = 3


class TransientBootProblem(Exception):
    """A check could not run because a service is unreachable; a restart may succeed."""


def stop_worker_boot(problem: str, *, code: int = EXIT_BAD_START, status: str = "cannot start") -> NoReturn:
    """End a worker process at boot: the problem as a CRITICAL log line and on standard error, then
    ``code``. SystemExit is not an Exception, so Dramatiq's hook runner does not swallow it."""
    logger.critical("Worker %s: %s", status, problem)
    print(f"error: worker {status}: {problem}", file=sys.stderr, flush=True)
    raise SystemExit(code) from None


class BootChecks(Middleware):
    def __init__(self, *, checks: Sequence[Callable[[], str | None]]) -> None:
        self.checks = list(checks)

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        for check in self.checks:
            try:
                problem = check()
            except TransientBootProblem as error:
                stop_worker_boot(str(error), code=EXIT_CONNECTION_FAILED, status="cannot start yet")
            if problem is not None:
                stop_worker_boot(problem)
