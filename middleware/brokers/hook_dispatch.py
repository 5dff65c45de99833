"""Broker hooks dispatched only to the middleware that implement them.

Dramatiq's ``Broker.emit_before`` and ``emit_after`` call the hook of every middleware, and most
of ours leave most hooks as ``Middleware``'s no-ops: of the stack's 18 middleware, a few act on
each message. Four signals a message (process, ack, before and after) made 72 calls, 48 of
them to no-ops, and the two loops were 14 % of a worker's GIL samples in a no-op drain
(bench/README.md, fix 13). This mixin calls the same hooks, in the same order, with the same
error handling, skipping only the middleware whose class keeps ``Middleware``'s own method.

Which middleware implement a hook is worked out again whenever ``broker.middleware`` changes
(``add_middleware``, or a list changed in place), checked by comparing the list with the one the
lookup was made from: an identity comparison of a score of pointers.
"""

from __future__ import annotations

import logging
from typing import Any

from dramatiq.middleware import Middleware, MiddlewareError


class DispatchesToImplementedHooks:
    """Mix in before a ``dramatiq.Broker`` class: ``class RedisBroker(DispatchesToImplementedHooks, ...)``."""

    middleware: list[Middleware]
    logger: logging.Logger

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        name = "before_" + signal
        for middleware in self._implementing(name):
            try:
                getattr(middleware, name)(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", name, middleware, exc_info=True)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        name = "after_" + signal
        for middleware in reversed(self._implementing(name)):
            try:
                getattr(middleware, name)(self, *args, **kwargs)
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", name, middleware, exc_info=True)

    def _implementing(self, hook: str) -> list[Middleware]:
        """The middleware, in stack order, whose ``hook`` is not ``Middleware``'s no-op."""
        cache: tuple[list[Middleware], dict[str, list[Middleware]]] | None = self.__dict__.get("_hook_cache")
        if cache is None or cache[0] != self.middleware:
            cache = self.__dict__["_hook_cache"] = (list(self.middleware), {})
        implementing = cache[1].get(hook)
        if implementing is None:
            implementing = cache[1][hook] = [middleware for middleware in cache[0] if _implements(middleware, hook)]
        return implementing


def _implements(middleware: Middleware, hook: str) -> bool:
    base = getattr(Middleware, hook, None)
    return base is None or hook in vars(middleware) or getattr(type(middleware), hook, None) is not base
