"""CheckpointedActor: a long job as build_items and each_item, the loop, the saves and the resume
owned by the framework; mistakes refused when the class is declared."""

from __future__ import annotations

from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import insert, select

from middleware import CheckpointedActor
from middleware.errors import ActorDeclarationError
from middleware.storage.database import Database
from middleware.storage.tables import job_checkpoints
from tests.unit.conftest import outputs


def test_a_failed_run_resumes_after_the_last_saved_item_and_redoes_none(
    stub_broker: StubBroker, stub_worker: Worker, database: Database
) -> None:
    worked: list[int] = []
    completed: list[str] = []

    class export_pages(CheckpointedActor):
        class Meta:
            broker = stub_broker
            max_retries = 2

        def checkpoint_key(self, report: str, pages: int) -> str:
            return f"export:{report}"

        def build_items(self, report: str, pages: int, *, cursor: int | None) -> Any:
            start = 0 if cursor is None else cursor + 1
            return ((page, page) for page in range(start, pages))

        def each_item(self, page: int, report: str, pages: int) -> int:
            worked.append(page)
            if page == 3 and worked.count(3) == 1:
                raise ConnectionError("the source hung up")  # once: the retry resumes here
            return page * 10

        def save_item(self, output: int, report: str, pages: int, *, connection: Any) -> None:
            connection.execute(insert(outputs).values(job=report, item=output))

        def progress(self, cursor: int, report: str, pages: int) -> float:
            return (cursor + 1) / pages

        def on_complete(self, report: str, pages: int) -> None:
            completed.append(report)

    assert export_pages.options["checkpointed"] and export_pages.options["notify_shutdown"]
    export_pages.send("monthly", 6)
    stub_broker.join(export_pages.queue_name, fail_fast=False)
    stub_worker.join()

    assert worked == [0, 1, 2, 3, 3, 4, 5], "the retry started at the item that failed, not at the first"
    with database.engine.connect() as connection:
        saved = connection.scalars(select(outputs.c.item).where(outputs.c.job == "monthly").order_by(outputs.c.item))
        assert list(saved) == [0, 10, 20, 30, 40, 50], "every output saved once"
        row = connection.execute(select(job_checkpoints).where(job_checkpoints.c.key == "export:monthly")).one()
    assert (row.position, row.progress, row.completed_at is not None) == (5, 1.0, True)
    assert completed == ["monthly"]


def test_work_already_completed_under_the_same_key_is_skipped(stub_broker: StubBroker, stub_worker: Worker) -> None:
    worked: list[int] = []

    class count_to(CheckpointedActor):
        class Meta:
            broker = stub_broker

        def checkpoint_key(self, n: int) -> str:
            return f"count-to:{n}"

        def build_items(self, n: int, *, cursor: int | None) -> Any:
            return ((i, i) for i in range((cursor or -1) + 1, n))

        def each_item(self, i: int, n: int) -> None:
            worked.append(i)

    for _ in range(2):
        count_to.send(3)
        stub_broker.join(count_to.queue_name)
        stub_worker.join()
    assert worked == [0, 1, 2], "the second message found the work completed and was skipped"


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        ({"perform": lambda self: None}, "overrides perform\\(\\): a CheckpointedActor owns the loop"),
        ({"build_items": lambda self, *, cursor: iter(())}, "does not define each_item. For example"),
        (
            {"build_items": lambda self, start: iter(()), "each_item": lambda self, item: None},
            "must take the last saved cursor as a keyword argument, cursor",
        ),
    ],
    ids=["perform", "no each_item", "no cursor"],
)
def test_a_class_that_cannot_work_is_refused_when_declared(
    stub_broker: StubBroker, methods: dict[str, Any], message: str
) -> None:
    meta = type("Meta", (), {"broker": stub_broker})
    with pytest.raises(ActorDeclarationError, match=message):
        type("broken", (CheckpointedActor,), {"Meta": meta, **methods})
    assert "broken" not in stub_broker.actors


def test_build_items_inherited_through_a_mixin_is_the_one_checked(stub_broker: StubBroker) -> None:
    class Logged:
        """A plain mixin first in the bases, which defines neither method."""

    class Pages(CheckpointedActor):
        class Meta:
            abstract = True

        def build_items(self, *, cursor: int | None) -> Any:
            return iter(())

        def each_item(self, item: Any) -> None:
            pass

    class mixed(Logged, Pages):
        class Meta:
            broker = stub_broker

    assert mixed.options["checkpointed"], "declared: the real build_items, with its cursor, was found and checked"
