"""``Store.transaction()``: a write transaction that commits on success and rolls back on an exception,
and nested, a savepoint; and the inbox guarantee built on it: an event whose handler fails half-way
leaves none of its writes, yet is marked processed with its error so the inbox moves on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from daemon.config import ProjectSettings, settings_from_dict
from daemon.domain.model import Pipeline
from daemon.ingest.inbox import Ingest
from daemon.store import Store, open_store
from daemon.wiring import build_app, build_store, build_worker

T = TypeVar("T")
NOW = 1_700_000_000.0


class Boom(Exception):
    pass


@pytest.fixture
def store(storage_url: Callable[[], str]) -> Iterator[Store]:
    opened = open_store(storage_url())
    yield opened
    opened.close()


def elsewhere(read: Callable[[], T]) -> T:
    """``read`` on another thread, hence through another connection: sees only what was committed."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(read).result()


def test_a_transaction_commits_when_its_block_ends(store: Store) -> None:
    with store.transaction():
        store.set_value("a", "1", NOW)
        store.set_value("b", "2", NOW)
        assert elsewhere(lambda: store.get_value("a")) is None  # not committed while the block runs
    assert elsewhere(lambda: (store.get_value("a"), store.get_value("b"))) == ("1", "2")


def test_a_transaction_rolls_back_when_its_block_raises(store: Store) -> None:
    store.set_value("kept", "before", NOW)
    with pytest.raises(Boom), store.transaction():
        store.set_value("kept", "changed", NOW)
        store.set_value("new", "x", NOW)
        raise Boom
    assert (store.get_value("kept"), store.get_value("new")) == ("before", None)
    assert elsewhere(lambda: (store.get_value("kept"), store.get_value("new"))) == ("before", None)
    store.set_value("after", "y", NOW)  # the connection is out of the failed transaction: this commits
    assert elsewhere(lambda: store.get_value("after")) == "y"


def test_a_nested_transaction_that_raises_undoes_only_its_own_writes(store: Store) -> None:
    with store.transaction():
        store.set_value("outer-before", "1", NOW)
        with pytest.raises(Boom), store.transaction():
            store.set_value("inner", "2", NOW)
            store.set_value("outer-before", "overwritten", NOW)
            raise Boom
        assert store.get_value("inner") is None  # undone at once, inside the outer transaction
        store.set_value("outer-after", "3", NOW)
        assert elsewhere(lambda: store.get_value("outer-before")) is None  # the outer one still open
    assert elsewhere(lambda: (store.get_value("outer-before"), store.get_value("inner"),
                              store.get_value("outer-after"))) == ("1", None, "3")


def test_a_nested_transaction_commits_only_with_the_outer_one(store: Store) -> None:
    with pytest.raises(Boom), store.transaction():
        with store.transaction():
            store.set_value("inner", "1", NOW)
        assert elsewhere(lambda: store.get_value("inner")) is None  # a savepoint released is not a commit
        raise Boom
    assert store.get_value("inner") is None


# -- the inbox: an event that fails half-way ---------------------------------------------------------

PROJECT = "grp/app"


def test_an_inbox_event_failing_half_way_leaves_no_writes_and_is_marked_processed_with_its_error(
        storage_url: Callable[[], str], payload: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from_dict({
        "storage": {"url": storage_url()},
        "projects": [{"path": PROJECT, "webhook_secret": "s",
                      "tags": [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}]}],
    }, environ={})

    def clock() -> float:
        return NOW

    janitor = build_store(settings)
    try:
        body = payload("pipeline_event")
        body["project"]["path_with_namespace"] = PROJECT
        pipeline_id = int(body["object_attributes"]["id"])
        ref = str(body["object_attributes"]["ref"])
        response = build_app(settings, janitor, clock=clock).test_client().post(
            "/webhooks/gitlab", json=body, headers={"X-Gitlab-Event": "Pipeline Hook", "X-Gitlab-Token": "s"})
        assert response.status_code in (200, 202), response.get_data(as_text=True)
        assert len(janitor.pending_events()) == 1

        written: list[tuple[Pipeline | None, int]] = []
        expect_tags = Ingest.expect_tags

        def fail_after_writing(self: Ingest, project: ProjectSettings, p: Pipeline, now: float) -> None:
            expect_tags(self, project, p, now)
            written.append((janitor.get_pipeline(PROJECT, pipeline_id),
                            len(janitor.records_of_pipeline(PROJECT, pipeline_id))))
            raise ValueError("handler failed half-way")

        monkeypatch.setattr(Ingest, "expect_tags", fail_after_writing)
        build_worker(settings, janitor, clock=clock).tick()

        # The handler did write before it failed: the pipeline, its ref and its expected tag.
        assert len(written) == 1
        pipeline_seen, records_seen = written[0]
        assert pipeline_seen is not None and records_seen >= 1
        # None of it is left.
        assert janitor.get_pipeline(PROJECT, pipeline_id) is None
        assert janitor.records_of_pipeline(PROJECT, pipeline_id) == []
        assert janitor.ref_known_live(PROJECT, ref) is None
        assert janitor.ledger_projects() == []
        # The event is not retried forever: it is processed, with why it could not be applied.
        assert janitor.pending_events() == []
        assert janitor.queue_depth() == 0
        rows = janitor.db.execute("SELECT processed_at, error FROM inbox").fetchall()
        assert len(rows) == 1
        processed_at, error = rows[0]
        assert processed_at == NOW
        assert error is not None and "handler failed half-way" in error
    finally:
        janitor.close()
