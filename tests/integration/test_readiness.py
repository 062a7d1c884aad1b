"""Readiness is the web's, health is the worker's (SPEC 14): ``/readyz`` answers 200 while this web can store
events, whatever the worker does, and 503 only when the database cannot be written; the worker beats while
it works, however long a tick, and ``registry-janitor worker-health`` is its probe."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from support.images import push_image, tags
from support.janitor import SECRET, Harness, RealClock, mr_hook, pipeline_hook, registry_section

from daemon.cli import main
from daemon.domain.policy import HEARTBEAT_BEAT_SECONDS, HEARTBEAT_KEY, heartbeat_limit
from daemon.web import health
from daemon.worker import Heartbeat

GRACE = 60
TAGS = ("a", "b", "c")


def db_path(j: Harness) -> Path:
    return Path(j.settings.storage.url.removeprefix("sqlite:///"))


def heartbeat_at(j: Harness) -> float | None:
    age = j.store.value_age(HEARTBEAT_KEY, 0.0)
    return None if age is None else -age


def worker_health(tmp_path: Path, j: Harness) -> tuple[int, str]:
    config = tmp_path / "health.yaml"
    config.write_text(yaml.safe_dump({"storage": {"url": j.settings.storage.url}}))
    result = CliRunner().invoke(main, ["worker-health", "--config", str(config)])
    return result.exit_code, result.output


# readiness --------------------------------------------------------------------------------------------------


def test_ready_with_no_worker_at_all_and_with_a_stale_one(janitor):
    j = janitor()
    answer = j.client.get("/readyz")
    assert answer.status_code == 200, answer.get_json()
    assert answer.json == {"status": "ready", "worker": {"heartbeat_age_seconds": None, "fresh": False},
                           "workers": []}
    j.worker.heartbeat()
    j.clock.advance(heartbeat_limit(j.settings.worker.poll_interval) + 3600)
    answer = j.client.get("/readyz")
    assert answer.status_code == 200, "a stale worker is the worker's probe's business, never the web's"
    assert answer.json["worker"]["fresh"] is False
    assert answer.json["worker"]["heartbeat_age_seconds"] > 3600
    # the web took events all along
    assert j.client.post("/webhooks/gitlab", json=pipeline_hook("gitlab-org/gitlab-test", pipeline_id=1, ref="f"),
                         headers={"X-Gitlab-Event": "Pipeline Hook", "X-Gitlab-Token": SECRET}).status_code == 202


def test_not_ready_when_the_database_directory_is_removed(janitor):
    j = janitor()
    assert j.client.get("/readyz").status_code == 200
    shutil.rmtree(db_path(j).parent)
    answer = j.client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json["error"] == "storage_unavailable"
    assert "check the data volume" in answer.json["message"]
    assert not db_path(j).exists(), "the probe must not create an empty database in its place"


def test_not_ready_when_the_database_file_is_replaced_under_the_web(janitor):
    """The web's connections would go on writing to the file that was removed: events nobody reads."""
    j = janitor()
    path = db_path(j)
    assert j.client.get("/readyz").status_code == 200
    copy = path.with_name("copy.db")
    shutil.copyfile(path, copy)
    os.replace(copy, path)
    answer = j.client.get("/readyz")
    assert answer.status_code == 503 and answer.json["error"] == "storage_unavailable"


def test_not_ready_while_the_database_is_locked_past_the_wait(janitor, monkeypatch):
    j = janitor()
    monkeypatch.setattr(health, "READY_WRITE_WAIT", 0.3)
    holder = sqlite3.connect(db_path(j), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        answer = j.client.get("/readyz")
        assert answer.status_code == 503 and answer.json["error"] == "storage_unavailable"
        assert time.monotonic() - started < 5, "the probe waits READY_WRITE_WAIT, not the 30 s busy timeout"
        holder.execute("ROLLBACK")
        assert j.client.get("/readyz").status_code == 200
    finally:
        holder.close()


# the worker's heartbeat while it works ----------------------------------------------------------------------


def test_ready_and_beating_through_a_long_rate_limited_plan(janitor, registry, gitlab, project):
    """Three tags at 2 registry requests a second take several beat intervals: the web stays ready the
    whole time, and the worker's heartbeat is never older than a few beats while it works."""
    patterns = [{"pattern": f"{t}-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"} for t in TAGS]
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                  "dry_run": False, "grace_period": f"{GRACE}s", "tags": patterns}],
                registry=registry_section(registry, requests_per_second=2, burst=1),
                gitlab={"url": gitlab.url}, clock=RealClock())
    push_image(registry, project.path, [f"{t}-4" for t in TAGS] + ["keep"])
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=1, ref="topic", mr_iid=4))
    j.tick()
    j.hook("Merge Request Hook", mr_hook(project.path, iid=4, source_branch="topic", action="merge"))
    j.tick()
    (plan,) = j.store.list_plans()
    assert plan.state == "scheduled"

    statuses: list[int] = []
    ages: list[float] = []
    done = threading.Event()
    probe = j.app.test_client()

    def watch() -> None:
        try:
            while not done.is_set():
                statuses.append(probe.get("/readyz").status_code)
                age = j.store.value_age(HEARTBEAT_KEY, j.clock())
                if age is not None:
                    ages.append(age)
                time.sleep(0.1)
        finally:
            j.store.release_connection()

    watcher = threading.Thread(target=watch)
    j.clock.advance(GRACE + 1)
    watcher.start()
    started = time.monotonic()
    try:
        j.tick()
    finally:
        done.set()
        watcher.join(timeout=10)
    took = time.monotonic() - started

    assert tags(registry, project.path) == ["keep"]
    assert j.store.get_plan(plan.id).state == "done"
    assert took > 3 * HEARTBEAT_BEAT_SECONDS, f"the plan took {took:.1f}s: too short to show anything"
    assert statuses and set(statuses) == {200}
    assert len(ages) > 10
    limit = heartbeat_limit(j.settings.worker.poll_interval)
    assert max(ages) <= 2 * HEARTBEAT_BEAT_SECONDS + 1 < limit, (
        f"heartbeat reached {max(ages):.1f}s during a {took:.1f}s tick")


def test_beats_are_throttled_and_never_break_the_work(janitor, monkeypatch, caplog):
    j = janitor()
    beat = Heartbeat(j.store, j.clock)
    beat.beat()
    first = heartbeat_at(j)
    assert first == j.clock.now
    j.clock.advance(HEARTBEAT_BEAT_SECONDS / 2)
    beat.beat()
    assert heartbeat_at(j) == first, "written at most every HEARTBEAT_BEAT_SECONDS"
    j.clock.advance(HEARTBEAT_BEAT_SECONDS / 2)
    beat.beat()
    assert heartbeat_at(j) == j.clock.now

    def broken(*args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(j.store, "set_value", broken)
    j.clock.advance(HEARTBEAT_BEAT_SECONDS)
    beat.beat()  # an untag in progress goes on
    assert "could not store the worker's heartbeat: disk I/O error" in caplog.text
    with pytest.raises(sqlite3.OperationalError):
        beat.now()  # a tick meets its storage failure as it would anyway


def test_nothing_beats_for_a_worker_that_is_not_working(janitor):
    """No thread beats on its own: between ticks (or stuck in one) the heartbeat only ages."""
    j = janitor(clock=RealClock())
    j.tick()
    after_tick = heartbeat_at(j)
    time.sleep(HEARTBEAT_BEAT_SECONDS + 0.5)
    assert heartbeat_at(j) == after_tick


# the worker's probe -----------------------------------------------------------------------------------------


def test_worker_health_exit_codes(janitor, tmp_path):
    j = janitor()
    code, out = worker_health(tmp_path, j)
    assert (code, "STALE: last heartbeat never") == (1, out.split(" (")[0].removeprefix("worker-health: "))

    limit = heartbeat_limit(j.settings.worker.poll_interval)
    j.store.set_value(HEARTBEAT_KEY, "", time.time() - 2)
    code, out = worker_health(tmp_path, j)
    assert code == 0, out
    assert out.startswith("worker-health: ok: last heartbeat ") and f"(limit {int(limit)}s)" in out

    j.store.set_value(HEARTBEAT_KEY, "", time.time() - limit - 90)
    code, out = worker_health(tmp_path, j)
    assert code == 1
    assert "STALE: last heartbeat 2m ago" in out and "restart it" in out


def test_worker_health_without_a_database_is_unhealthy_and_creates_none(tmp_path):
    config = tmp_path / "health.yaml"
    db = tmp_path / "none" / "janitor.db"
    config.write_text(yaml.safe_dump({"storage": {"url": f"sqlite:///{db}"}}))
    result = CliRunner().invoke(main, ["worker-health", "--config", str(config)])
    assert result.exit_code == 1
    assert "no database yet" in result.output
    assert not db.exists()
