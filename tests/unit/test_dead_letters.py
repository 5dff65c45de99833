"""Dead-letter rows and the operations on them, on the StubBroker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from middleware.dead_letters import insert_dead_letter
from middleware.errors import FatalError
from middleware.operations.dead_letter_store import (
    DeadLetterNotFound,
    Filters,
    count_dead_letters,
    delete_dead_letter,
    get_dead_letter,
    list_dead_letters,
    purge,
    requeue,
    requeue_matching,
    resolve,
    stats,
)
from middleware.storage.database import Database
from tests.harness import wait_until


def drain(broker: StubBroker, worker: Worker, queue_name: str = "default") -> None:
    broker.join(queue_name, fail_fast=False)
    worker.join()


@pytest.fixture
def failing_actors(stub_broker: StubBroker):
    calls: list[str] = []

    @dramatiq.actor(broker=stub_broker, max_retries=0)
    def fetch_meeting(meeting_id: str) -> None:
        calls.append(meeting_id)
        raise FatalError(f"meeting {meeting_id} was deleted")

    @dramatiq.actor(broker=stub_broker, queue_name="mail", max_retries=1, min_backoff=10, max_backoff=20)
    def send_email(address: str) -> None:
        calls.append(address)
        raise ConnectionRefusedError(111, "Connection refused")

    return fetch_meeting, send_email, calls


def test_a_fatal_failure_is_recorded_with_everything_needed_to_act_on_it(
    stub_broker: StubBroker, stub_worker: Worker, database: Database, failing_actors
) -> None:
    fetch_meeting, _, _ = failing_actors
    message = fetch_meeting.send("m-42")
    drain(stub_broker, stub_worker)

    [row] = list_dead_letters(database)
    full = get_dead_letter(database, row["id"])
    assert (full["queue_name"], full["actor_name"], full["message_id"], full["kind"], full["attempts"]) == (
        "default",
        "fetch_meeting",
        message.message_id,
        "fatal",
        1,
    )
    assert (full["error_type"], full["error_message"]) == ("FatalError", "meeting m-42 was deleted")
    assert "raise FatalError" in full["traceback"]
    assert full["message"]["args"] == ["m-42"] and full["resolved"] is False


def test_exhausted_retries_are_recorded_as_retryable_with_their_attempts(
    stub_broker: StubBroker, stub_worker: Worker, database: Database, failing_actors
) -> None:
    _, send_email, calls = failing_actors
    send_email.send("ops@example.com")
    drain(stub_broker, stub_worker, "mail")
    assert calls == ["ops@example.com", "ops@example.com"]
    [row] = list_dead_letters(database)
    assert (row["kind"], row["attempts"], row["error_type"]) == ("retryable", 2, "ConnectionRefusedError")


def test_arguments_that_do_not_fit_the_actor_are_fatal_at_once(
    stub_broker: StubBroker, stub_worker: Worker, database: Database
) -> None:
    @dramatiq.actor(broker=stub_broker, max_retries=5)
    def greet(name: str) -> None:
        pass

    greet.send_with_options(args=("a", "b", "c"))
    drain(stub_broker, stub_worker)
    [row] = list_dead_letters(database)
    assert (row["kind"], row["error_type"], row["attempts"]) == ("fatal", "TypeError", 1)


def test_a_message_for_an_unknown_actor_is_recorded_as_fatal(
    stub_broker: StubBroker, stub_worker: Worker, database: Database
) -> None:
    stub_broker.declare_queue("default")
    stub_broker.enqueue(
        dramatiq.Message(queue_name="default", actor_name="no_such_actor", args=(), kwargs={}, options={})
    )
    drain(stub_broker, stub_worker)
    # The consumer thread records it just after the nack that the join waits for: poll for the row.
    [row] = wait_until(lambda: list_dead_letters(database), timeout_s=5, what="the dead letter")
    assert (row["kind"], row["actor_name"], row["error_type"]) == ("fatal", "no_such_actor", "ActorNotFound")


def test_recording_the_same_message_twice_keeps_one_row(database: Database) -> None:
    row = {
        "queue_name": "default",
        "actor_name": "a",
        "message_id": "m-1",
        "message": {},
        "error_type": "E",
        "error_message": "e",
        "traceback": None,
        "attempts": 1,
        "kind": "fatal",
        "failed_at": datetime.now(UTC),
    }
    with database.transaction() as connection:
        assert insert_dead_letter(connection, row) is not None
        assert insert_dead_letter(connection, row) is None
    assert count_dead_letters(database) == 1


def test_resolve_requeue_delete_purge_and_stats(
    stub_broker: StubBroker, stub_worker: Worker, database: Database, failing_actors
) -> None:
    fetch_meeting, send_email, calls = failing_actors
    for meeting in ("m-1", "m-2", "m-3"):
        fetch_meeting.send(meeting)
    send_email.send("ops@example.com")
    drain(stub_broker, stub_worker)
    drain(stub_broker, stub_worker, "mail")
    ids = {get_dead_letter(database, row["id"])["message"]["args"][0]: row["id"] for row in list_dead_letters(database)}

    resolved = resolve(database, ids["m-1"], by="alice", notes="meeting restored from backup")
    assert (resolved["resolved"], resolved["resolved_by"], resolved["notes"]) == (
        True,
        "alice",
        "meeting restored from backup",
    )
    assert count_dead_letters(database, Filters(resolved=False)) == 3

    calls.clear()
    new_id = requeue(database, stub_broker, ids["m-2"])
    drain(stub_broker, stub_worker)
    assert calls == ["m-2"], "the requeued message ran again"
    requeued = get_dead_letter(database, ids["m-2"])
    assert requeued["requeued_as"] == new_id != requeued["message_id"] and requeued["resolved"] is True
    assert get_dead_letter(database, _id_of(database, new_id))["kind"] == "fatal", "it failed again: a new row"

    moved = requeue_matching(database, stub_broker, Filters(queue="mail"), limit=10, per_second=1000)
    assert [dead_letter_id for dead_letter_id, _ in moved] == [ids["ops@example.com"]]

    delete_dead_letter(database, ids["m-3"])
    with pytest.raises(DeadLetterNotFound, match=f"no dead letter with id {ids['m-3']}"):
        get_dead_letter(database, ids["m-3"])

    by_queue = {row["queue"]: row for row in stats(database)}
    assert by_queue["default"]["resolved"] == 2 and by_queue["default"]["unresolved"] == 1

    assert purge(database, older_than=timedelta(days=30)) == 0, "nothing is that old"
    assert purge(database, older_than=timedelta(seconds=0)) == 3, "every resolved row; the unresolved stays"
    assert count_dead_letters(database) == count_dead_letters(database, Filters(resolved=False)) == 1


def test_filters_reject_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind must be one of fatal, retryable, poison"):
        Filters(kind="bad")


def _id_of(database: Database, message_id: str) -> int:
    return next(row["id"] for row in list_dead_letters(database) if row["message_id"] == message_id)
