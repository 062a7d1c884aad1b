"""PostgreSQL behind the same Store: the engine is picked by the URL, a database without the janitor's tables
is never taken for one, a password never reaches a message, and what several workers or web processes do at
once (claims, one plan per trigger, one stored copy of a resent body, one open request per ask) holds on
both engines (each test runs on SQLite and on PostgreSQL, see `storage_engine` in tests/conftest.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from click.testing import CliRunner

from daemon.cli import main
from daemon.config import settings_from_dict
from daemon.domain.model import Decision, PlannedUntag, Trigger
from daemon.store import BackupFailed, Store, StoreMissing, open_store

T = TypeVar("T")
NOW = 1_700_000_000.0
WORKERS = 6


@pytest.fixture
def store(storage_url: Callable[[], str]) -> Store:
    opened = open_store(storage_url())
    yield opened  # type: ignore[misc]
    opened.close()


def at_once(store: Store, work: Callable[[int], T], n: int = WORKERS) -> list[T]:
    """``work(i)`` on ``n`` threads (each with its own connection) started together; their answers."""
    start = threading.Barrier(n)
    out: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait()
            out[i] = work(i)
        except BaseException as exc:  # reported below, with the test's failure
            errors.append(exc)
        finally:
            store.release_connection()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return out


def test_the_store_is_on_the_engine_the_test_asks_for(janitor, storage_engine):
    assert janitor().store.engine == storage_engine


def test_workers_claiming_at_once_take_each_reconcile_request_once(store):
    wanted = {store.add_reconcile_request(f"grp/p{i}", "op", NOW)[0].id for i in range(30)}

    def claim_all(_: int) -> list[int]:
        mine = []
        while (request := store.claim_reconcile_request(NOW, 60)) is not None:
            mine.append(request.id)
        return mine

    claimed = [request_id for mine in at_once(store, claim_all) for request_id in mine]
    assert sorted(claimed) == sorted(wanted)  # every one taken, none twice


def test_workers_claiming_at_once_take_each_operator_request_once(store):
    trigger = Trigger(kind="ci_request", project_path="grp/app", key="ci:1", raised_at=NOW, pipeline_id=1)
    decisions = [Decision(PlannedUntag(0, 1, "grp/app/img", f"t{i}", "sha256:" + "a" * 64), "pending")
                 for i in range(20)]
    plan_id, _ = store.create_plan(trigger, decisions, state="done", due_at=NOW, now=NOW)
    wanted = {store.add_request("restore", untag.id, "op", NOW)[0].id for untag in store.plan_untags(plan_id)}

    def claim_all(_: int) -> list[int]:
        mine = []
        while found := store.claim_requests(NOW, 60, limit=3):
            mine.extend(request.id for request in found)
        return mine

    claimed = [request_id for mine in at_once(store, claim_all) for request_id in mine]
    assert sorted(claimed) == sorted(wanted)


def test_one_plan_per_trigger_when_workers_plan_it_at_once(store):
    trigger = Trigger(kind="branch_deleted", project_path="grp/app", key="branch:grp/app:feature", raised_at=NOW,
                      ref="feature")
    decisions = [Decision(PlannedUntag(0, 1, "grp/app/img", "feature", "sha256:" + "b" * 64), "pending")]
    made = at_once(store, lambda _: store.create_plan(trigger, decisions, state="scheduled", due_at=NOW, now=NOW))
    assert len({plan_id for plan_id, _ in made}) == 1
    assert sum(created for _, created in made) == 1
    assert len(store.plan_untags(made[0][0])) == 1


def test_a_body_resent_at_once_under_new_delivery_keys_is_stored_once(storage_url):
    url = storage_url()
    webs = [open_store(url) for _ in range(WORKERS)]  # as web processes: each commits its own deliveries

    def deliver(i: int) -> bool:
        return webs[i].add_event(delivery_key=f"delivery-{i}", source="gitlab", kind="push", project_path="grp/app",
                               headers={}, body=b"{}", received_at=NOW + i, body_key="same-body",
                               same_body_since=NOW - 60)

    try:
        assert sum(at_once(webs[0], deliver)) == 1
        assert webs[0].queue_depth() == 1
    finally:
        for web in webs:
            web.close()


def test_one_delivery_key_sent_at_once_is_stored_once(store):
    def deliver(_: int) -> bool:
        return store.add_event(delivery_key="one-delivery", source="gitlab", kind="push", project_path="grp/app",
                               headers={}, body=b"{}", received_at=NOW)

    assert sum(at_once(store, deliver)) == 1


def test_asking_for_a_catch_up_at_once_records_one_request(store):
    made = at_once(store, lambda _: store.add_reconcile_request(None, "op", NOW))
    assert len({request.id for request, _ in made}) == 1 and sum(created for _, created in made) == 1


def test_a_lease_renewal_never_shortens_it(store):
    trigger = Trigger(kind="ci_request", project_path="grp/app", key="ci:2", raised_at=NOW, pipeline_id=2)
    plan_id, _ = store.create_plan(trigger, [], state="scheduled", due_at=NOW, now=NOW)
    assert store.claim_plan(plan_id, NOW, 300, holder="w1")
    assert store.renew_plan_lease(plan_id, "w1", NOW, 30)  # earlier than the lease it has: kept
    assert store.due_plans(NOW + 299) == []
    assert [p.id for p in store.due_plans(NOW + 301)] == [plan_id]


def test_a_merge_request_ref_is_told_apart_with_its_case(store):
    from daemon.domain.model import Pipeline

    first = Pipeline(project_path="grp/app", pipeline_id=7, ref="refs/merge-requests/3/head", sha="a", status="running",
                     iid=7, is_tag=False, mr_iid=3, default_branch="main", created_at=NOW)
    store.upsert_pipeline(first, NOW)
    store.upsert_pipeline(Pipeline(**{**first.__dict__, "ref": "feature"}), NOW)
    assert store.get_pipeline("grp/app", 7).ref == "feature"  # the branch replaces the placeholder
    upper = Pipeline(**{**first.__dict__, "pipeline_id": 8, "ref": "REFS/MERGE-REQUESTS/3/head"})
    store.upsert_pipeline(upper, NOW)
    store.upsert_pipeline(Pipeline(**{**upper.__dict__, "ref": "feature"}), NOW)
    assert store.get_pipeline("grp/app", 8).ref == "REFS/MERGE-REQUESTS/3/head"  # a branch named so is one


def test_the_store_proves_it_can_write(store):
    assert store.writable(NOW, 2.0) is None
    assert store.has_schema()


# PostgreSQL alone --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage_engine", ["postgresql"], indirect=True)
def test_a_database_without_the_janitors_tables_is_not_opened_unless_created(storage_engine, pg_url):
    with pytest.raises(StoreMissing, match="holds no janitor tables"):
        open_store(pg_url, create=False)
    open_store(pg_url).close()  # the daemon's processes make the tables in the database given
    reopened = open_store(pg_url, create=False)
    try:
        assert reopened.engine == "postgresql" and reopened.has_schema()
    finally:
        reopened.close()


@pytest.mark.parametrize("storage_engine", ["postgresql"], indirect=True)
def test_a_server_that_cannot_be_reached_is_named_without_its_password(storage_engine, postgres):
    url = "postgresql://janitor:s3cret-pw@127.0.0.1:1/janitor?connect_timeout=2"
    with pytest.raises(StoreMissing) as raised:
        open_store(url, create=False)
    assert "cannot connect" in str(raised.value) and "s3cret-pw" not in str(raised.value)
    assert "janitor:***@127.0.0.1:1" in str(raised.value)


@pytest.mark.parametrize("storage_engine", ["postgresql"], indirect=True)
def test_backup_says_to_use_pg_dump(storage_engine, store, tmp_path):
    with pytest.raises(BackupFailed, match="pg_dump -Fc"):
        store.backup_to(str(tmp_path / "copy.db"))
    assert not (tmp_path / "copy.db").exists()


def test_the_password_comes_from_a_file_and_is_never_printed(tmp_path: Path):
    (tmp_path / "pg-password").write_text("s3cret-pw\n")
    raw = {"storage": {"url": "postgresql://janitor@db.example:5432/j?sslmode=verify-full",
                       "password_file": "pg-password"},
           "projects": [{"path": "grp/app", "webhook_secret": "s"}]}
    settings = settings_from_dict(raw, environ={}, base=tmp_path)
    assert settings.storage.password_value == "s3cret-pw" and "s3cret" not in repr(settings.storage)
    config = tmp_path / "janitor.yaml"
    config.write_text(yaml.safe_dump({**raw, "storage": {"url": "postgresql://janitor:${PGPW}@db.example:5432/j"}}))
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)], env={"PGPW": "s3cret-pw"})
    assert result.exit_code == 0, result.output
    assert "storage postgresql://janitor:***@db.example:5432/j" in result.output and "s3cret" not in result.output


def test_a_password_given_twice_is_refused_saying_which_to_keep(tmp_path: Path):
    from daemon.errors import ConfigError

    with pytest.raises(ConfigError, match="given twice"):
        settings_from_dict({"storage": {"url": "postgresql://j:pw@db/j", "password": "other"}}, environ={})
    with pytest.raises(ConfigError, match="names no database"):
        settings_from_dict({"storage": {"url": "postgresql://j@db"}}, environ={})
