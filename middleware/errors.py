"""Every error an actor author raises or catches, in one module (``from middleware import ...``).

- :class:`FatalError`: raise it (or a subclass) to fail a job at once; it is dead-lettered and
  never retried.
- :class:`DuplicateJob`: ``send()`` refused a job whose idempotency key is taken.
- :class:`HandBack` and :class:`CheckpointSuperseded` come out of ``checkpoint.saving()`` to stop
  the delivery: held too long for RabbitMQ's consumer timeout, or its checkpoint's lease lost. They
  are interrupts, as Dramatiq's ``Shutdown`` and ``TimeLimitExceeded``: ``BaseException``s
  (Dramatiq's ``Interrupt``), so an actor's ``except Exception:`` never swallows them. Let them
  propagate; the middleware hands the message back at no cost in attempts.
- :class:`CheckpointBusy`: another message's delivery holds the work's checkpoint; raised by the
  middleware before the actor runs, never into an actor.
- :class:`NoProgress`: what a job is dead-lettered with when it was interrupted too many times in
  a row without saving a checkpoint; never raised into an actor.

The lowest layer of ``middleware``: it imports nothing else of it.
"""

from __future__ import annotations

from dramatiq import Retry
from dramatiq.middleware import Interrupt, MiddlewareError


class FatalError(Exception):
    """Raise (or subclass) to fail a job at once: it is dead-lettered, never retried."""


class DuplicateJob(MiddlewareError):
    """A job with this idempotency key is already queued, running or recently completed."""

    def __init__(self, key: str, existing_message_id: str) -> None:
        super().__init__(f"a job with idempotency key {key!r} already exists: message {existing_message_id}")
        self.key = key
        self.existing_message_id = existing_message_id


class HandBack(Interrupt):
    """Raised after a checkpoint commits, once the delivery has been held for ``hand_back_after_ms``:
    the message goes back to its queue at no cost in attempts, and its next delivery resumes here."""


class CheckpointSuperseded(Interrupt):
    """This delivery lost its checkpoint's lease to ``by_message_id``'s delivery; the save that
    found it out wrote nothing. A delivery of another message is handed back (it will
    wait for the holder); one of the same message just ends: that message runs elsewhere now."""

    def __init__(self, text: str, *, by_message_id: str | None) -> None:
        super().__init__(text)
        self.by_message_id = by_message_id


class CheckpointBusy(MiddlewareError, Retry):
    """Another message's delivery holds this work's checkpoint: this one is handed back to wait,
    spending no attempt. A ``MiddlewareError``, so raised from ``before_process_message`` it stops
    the actor from running (Dramatiq swallows any other error there); a ``Retry``, so the worker
    does not log it as an error."""

    def __init__(self, text: str, *, held_by: str, delay: int) -> None:
        super().__init__(text, delay=delay)
        self.held_by = held_by


class ActorDeclarationError(MiddlewareError, ValueError):
    """An actor was declared without what its options need: raised when it is declared, with a
    message that says what to add (as Dramatiq refuses an unknown option)."""


class NoProgress(Exception):
    """A job interrupted ``MAX_HAND_BACKS_WITHOUT_PROGRESS`` times in a row (deploys, hand-backs)
    without saving a checkpoint: it is dead-lettered with this error instead of looping."""
