"""A long job as two methods, the loop owned by the framework (as Shopify's job-iteration and
Sidekiq's ``IterableJob`` do it, on our transactional checkpoints).

An author writes::

    class export_transcript(CheckpointedActor):
        class Meta:
            queue_name = "exports"

        def checkpoint_key(self, meeting_id):           # optional: one job per meeting
            return f"export:{meeting_id}"

        def build_items(self, meeting_id, *, cursor):   # (cursor, item) pairs after ``cursor``
            ...

        def each_item(self, item, meeting_id):          # the work, outside any transaction
            ...

        def save_item(self, output, meeting_id, *, connection):  # inside the checkpoint's transaction
            ...

1. Each delivery loads the job's checkpoint and calls ``build_items(*args, cursor=..., **kwargs)``
   with the last saved cursor (None on the first run); it yields ``(cursor, item)`` for the items
   after it. A cursor is any JSON value: a page number, an id, a timestamp.
2. For each item: ``each_item`` does the work outside any transaction (a 15 s call must never hold
   SQLite's write lock for every worker), then ``save_item`` writes its output on the connection of
   the checkpoint's transaction, which commits the output and the cursor together.
3. A crash, a deploy, a time limit or a retry: the next delivery continues after the last saved
   cursor, and no item whose output was saved is done again. When ``build_items`` is exhausted,
   ``on_complete`` runs and the checkpoint is marked complete.
4. The framework sets the actor options ``checkpointed=True`` and ``notify_shutdown=True`` and
   ``checkpoint_key`` (from the method, when defined). A class that overrides ``perform``, lacks
   ``build_items`` or ``each_item``, or whose ``build_items`` takes no keyword ``cursor`` is refused
   when it is declared, with a message saying what to write.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dramatiq.generic import GenericActor, generic_actor
from sqlalchemy.engine import Connection

from middleware.checkpoints import current_checkpoint
from middleware.errors import ActorDeclarationError, FatalError

_EXAMPLE = """
    def build_items(self, *args, cursor, **kwargs):
        start = 0 if cursor is None else cursor + 1
        for page in range(start, pages):
            yield page, page            # (cursor, item)

    def each_item(self, item, *args, **kwargs):
        return work(item)               # its output, saved by save_item"""


class _CheckpointedActorType(generic_actor):
    """Declares each concrete subclass as a checkpointed actor, after checking what it defines."""

    def __new__(metacls, name: str, bases: tuple[type, ...], attrs: dict[str, Any]) -> Any:
        meta = attrs.get("Meta")
        if meta is not None and vars(meta).get("abstract", False):
            return super().__new__(metacls, name, bases, attrs)
        _check_declaration(name, bases, attrs)
        instances: list[CheckpointedActor] = []
        options: dict[str, Any] = {"checkpointed": True, "notify_shutdown": True}
        if "checkpoint_key" in attrs or any(_defines(base, "checkpoint_key") for base in bases):
            options["checkpoint_key"] = lambda *args, **kwargs: instances[0].checkpoint_key(*args, **kwargs)
        inherited = {
            key: value
            for base in reversed(bases)
            for key, value in vars(getattr(base, "Meta", object)).items()
            if not key.startswith("_") and key != "abstract"
        }
        own = {key: value for key, value in vars(meta or object).items() if not key.startswith("_")}
        attrs["Meta"] = type("Meta", (), {**inherited, **own, **options})
        instance = super().__new__(metacls, name, bases, attrs)
        instances.append(instance)
        return instance


def _defines(cls: type, name: str) -> bool:
    return any(name in vars(klass) for klass in cls.__mro__ if klass not in (CheckpointedActor, GenericActor, object))


def _check_declaration(name: str, bases: tuple[type, ...], attrs: dict[str, Any]) -> None:
    def has(method: str) -> bool:
        return method in attrs or any(_defines(base, method) for base in bases)

    if "perform" in attrs:
        raise ActorDeclarationError(
            f"{name} overrides perform(): a CheckpointedActor owns the loop. Write build_items and each_item:{_EXAMPLE}"
        )
    missing = [method for method in ("build_items", "each_item") if not has(method)]
    if missing:
        raise ActorDeclarationError(f"{name} does not define {' and '.join(missing)}. For example:{_EXAMPLE}")
    # getattr: to the type checker a base is any type, which has no build_items.
    build_items = attrs.get("build_items") or next(
        getattr(base, "build_items")  # noqa: B009
        for base in bases
        if _defines(base, "build_items")
    )
    parameter = inspect.signature(build_items).parameters.get("cursor")
    if parameter is None or parameter.kind not in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD):
        raise ActorDeclarationError(
            f"{name}.build_items must take the last saved cursor as a keyword argument, cursor. For example:{_EXAMPLE}"
        )


class CheckpointedActor(GenericActor, metaclass=_CheckpointedActorType):
    """Base class of a long job as ``build_items`` and ``each_item`` (see this module's docstring)."""

    class Meta:
        abstract = True

    if TYPE_CHECKING:
        # Optional (one job per key): declared for the type checker only, as a subclass's own method
        # is what makes the actor take it (``_CheckpointedActorType``).
        def checkpoint_key(self, *args: Any, **kwargs: Any) -> str: ...

    def build_items(self, *args: Any, cursor: Any, **kwargs: Any) -> Iterable[tuple[Any, Any]]:
        """``(cursor, item)`` for each item after ``cursor`` (None: from the start)."""
        raise NotImplementedError

    def each_item(self, item: Any, *args: Any, **kwargs: Any) -> Any:
        """Do the work of one item, outside any transaction; return what ``save_item`` saves."""
        raise NotImplementedError

    def save_item(self, output: Any, *args: Any, connection: Connection, **kwargs: Any) -> None:
        """Write ``output`` on ``connection``: it commits with the item's cursor. By default, nothing."""

    def progress(self, cursor: Any, *args: Any, **kwargs: Any) -> float | None:
        """The fraction of the job done once ``cursor`` is saved (shown in the job's status); None: unknown."""
        return None

    def on_complete(self, *args: Any, **kwargs: Any) -> None:
        """Runs once every item is saved, before the checkpoint is marked complete."""

    def perform(self, *args: Any, **kwargs: Any) -> None:
        checkpoint = current_checkpoint()
        for cursor, item in self.build_items(*args, cursor=checkpoint.position, **kwargs):
            try:
                json.dumps(cursor)
            except TypeError as error:
                message = f"{self.__name__}.build_items yielded a cursor that is not JSON: {cursor!r}"
                raise FatalError(message) from error
            output = self.each_item(item, *args, **kwargs)
            with checkpoint.saving(cursor, progress=self.progress(cursor, *args, **kwargs)) as connection:
                self.save_item(output, *args, connection=connection, **kwargs)
        self.on_complete(*args, **kwargs)
