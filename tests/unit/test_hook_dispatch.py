"""Hooks dispatched only to the middleware that implement them: the same calls as Dramatiq's own dispatch."""

from __future__ import annotations

import logging

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, SkipMessage

from middleware.brokers.hook_dispatch import DispatchesToImplementedHooks


class DispatchingStubBroker(DispatchesToImplementedHooks, StubBroker):
    pass


class Recording(Middleware):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def before_process_message(self, broker, message) -> None:
        self.calls.append(f"{self.name}.before_process_message")

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        self.calls.append(f"{self.name}.after_process_message({result})")


class AcksOnly(Middleware):
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def after_ack(self, broker, message) -> None:
        self.calls.append("acks.after_ack")


class Silent(Middleware):
    """Implements nothing: every hook is Middleware's no-op."""


class Failing(Middleware):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def before_process_message(self, broker, message) -> None:
        raise self.error

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        raise self.error


def _stack(calls: list[str]) -> list[Middleware]:
    return [Recording("a", calls), Silent(), AcksOnly(calls), Silent(), Recording("b", calls)]


def _emit_all(broker: dramatiq.Broker) -> None:
    message = dramatiq.Message(queue_name="default", actor_name="job", args=(), kwargs={}, options={})
    broker.emit_before("process_message", message)
    broker.emit_after("process_message", message, result=7)
    broker.emit_before("ack", message)
    broker.emit_after("ack", message)


def test_the_hooks_called_and_their_order_are_dramatiqs_own() -> None:
    ours, theirs = [], []
    _emit_all(DispatchingStubBroker(middleware=_stack(ours)))
    _emit_all(StubBroker(middleware=_stack(theirs)))
    assert (
        ours
        == theirs
        == [
            "a.before_process_message",
            "b.before_process_message",
            "b.after_process_message(7)",
            "a.after_process_message(7)",
            "acks.after_ack",
        ]
    )


def test_middleware_keeping_the_no_op_are_left_out_and_an_instance_s_own_hook_is_not() -> None:
    calls: list[str] = []
    patched = Silent()
    patched.before_ack = lambda broker, message: calls.append("patched.before_ack")
    broker = DispatchingStubBroker(middleware=[*_stack(calls), patched])
    assert [type(middleware).__name__ for middleware in broker._implementing("before_process_message")] == [
        "Recording",
        "Recording",
    ]
    _emit_all(broker)
    assert "patched.before_ack" in calls


def test_a_middleware_added_or_removed_after_the_first_dispatch_is_seen() -> None:
    calls: list[str] = []
    broker = DispatchingStubBroker(middleware=[Recording("a", calls)])
    _emit_all(broker)
    broker.add_middleware(Recording("late", calls))
    broker.middleware[:] = [middleware for middleware in broker.middleware if getattr(middleware, "name", "") != "a"]
    calls.clear()
    _emit_all(broker)
    assert calls == ["late.before_process_message", "late.after_process_message(7)"]


def test_skip_message_stops_the_before_hooks_and_other_errors_are_logged_and_passed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    broker = DispatchingStubBroker(middleware=[Failing(ValueError("boom")), Recording("after", calls)])
    with caplog.at_level(logging.CRITICAL):
        _emit_all(broker)
    assert calls == ["after.before_process_message", "after.after_process_message(7)"]
    assert [record.getMessage() for record in caplog.records] == [
        f"Unexpected failure in before_process_message of {broker.middleware[0]!r}.",
        f"Unexpected failure in after_process_message of {broker.middleware[0]!r}.",
    ]

    skipping = DispatchingStubBroker(middleware=[Failing(SkipMessage()), Recording("never", calls)])
    calls.clear()
    message = dramatiq.Message(queue_name="default", actor_name="job", args=(), kwargs={}, options={})
    with pytest.raises(SkipMessage):
        skipping.emit_before("process_message", message)
    assert calls == []
