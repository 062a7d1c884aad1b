"""``registry-janitor migrate-store``: a janitor's SQLite database copied into an empty PostgreSQL one shows the
same status, metrics and dashboard there, and the janitor goes on from it (new ids after the copied ones,
totals rising from the copied values); a target holding data is refused untouched; a missing source is
never created; no message shows a password. The story is real: a merge request untagged on the real
registry, the seeded plans and untags, a retry an operator asked for."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from support.images import push_image, tags
from support.janitor import Clock, Harness, live_entry, mr_hook, pipeline_hook, registry_section
from support.ops import BEARER, MR_TAGS, merge_mr, ops_projects, seed
from test_dashboard import AUTH
from test_metrics import scrape

from daemon.cli import main
from daemon.store import CopyRefused, copy_store
from daemon.wiring import build_store

ROOT = Path(__file__).resolve().parents[2]
# Every table the story below writes rows into (the copy must carry each; the rest may be empty).
STORY_TABLES = {"inbox", "pipelines", "push_records", "merge_requests", "plans", "untags", "operator_requests",
                "counters", "daily_counters", "kv", "refs", "workers"}


def with_password(url: str, password: str = "s3cret-pw") -> str:
    """``url`` with a password in it (the test server trusts local connections, so any one is taken)."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@", 1)


def projects(project) -> list[dict[str, Any]]:
    return [live_entry(project, grace_period="15m", tags=MR_TAGS), *ops_projects()]


def story(janitor, registry, project) -> Harness:
    """A SQLite janitor with a real untag on the registry, the seeded story, and a pending retry."""
    j = janitor(projects(project), registry=registry_section(registry))
    assert j.store.engine == "sqlite"
    push_image(registry, project.path, ["mr-42", "mr-42-debug", "keep"])
    merge_mr(j, project.path)
    assert tags(registry, project.path) == ["keep"]
    j.ids = seed(j.store, j.clock())  # type: ignore[attr-defined]
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=150, ref="feature/later", mr_iid=50))
    j.tick()
    response = j.client.post(f"/api/v1/untags/{j.ids['failed']}/retry", headers=BEARER)  # type: ignore[attr-defined]
    assert response.status_code == 202
    return j


def numbers(j: Harness) -> dict[str, Any]:
    """What an operator sees: the status document, the janitor_* metric families and the dashboard page
    (its CSRF token aside, which is per process)."""
    status = j.client.get("/api/v1/status", headers=BEARER)
    assert status.status_code == 200
    metrics = {name: v for name, v in scrape(j.client).items() if name.startswith("janitor_")}
    page = j.client.get("/dashboard", auth=AUTH)
    assert page.status_code == 200
    html = re.sub(r'name="csrf" value="[0-9a-f]+"', 'name="csrf"', page.get_data(as_text=True))
    return {"status": status.get_json(), "metrics": metrics, "dashboard": html}


def over(j: Harness, url: str, janitor) -> Harness:
    """The same janitor (settings, clock) over the database at ``url``."""
    storage = j.settings.storage.model_copy(update={"url": url})
    return janitor(settings=j.settings.model_copy(update={"storage": storage}), clock=Clock(j.clock.now))


def max_id(j: Harness, table: str) -> int:
    return int(j.store.db.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0])


def rows_in(j: Harness) -> dict[str, int]:
    tables = [str(r[0]) for r in j.store.db.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        " AND table_type = 'BASE TABLE' AND table_name <> 'schema_version'").fetchall()]
    return {t: int(j.store.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in tables}


def migrate(*args: str) -> Any:
    return CliRunner().invoke(main, ["migrate-store", *args])


def test_sqlite_to_postgresql_keeps_every_number_and_the_janitor_goes_on(janitor, registry, project, pg_url):
    before = story(janitor, registry, project)
    shown = numbers(before)
    assert shown["status"]["projects"][project.path]["untagged"] == 2  # the story is what it says
    copied_inbox, copied_plans, copied_untags = (max_id(before, t) for t in ("inbox", "plans", "untags"))

    result = migrate("--from", before.settings.storage.url, "--to", with_password(pg_url), "--batch", "3")
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in result.output and "postgres:***@" in result.output
    for table in ("inbox", "plans", "untags", "counters"):
        assert re.search(rf"^  {table}: [\d,]+ rows?$", result.stderr, re.M), result.stderr

    after = over(before, pg_url, janitor)
    assert after.store.engine == "postgresql"
    assert numbers(after) == shown
    held = rows_in(after)
    assert {t for t, n in held.items() if n} >= STORY_TABLES, held
    assert held["inbox"] == before.store.db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0]

    # The janitor goes on from there: a new webhook, plan and untags get ids after the copied ones, and the
    # totals rise from the copied values (the counting triggers are back on).
    events = shown["metrics"]["janitor_events_total"]
    pipelines = (("kind", "pipeline"), ("project", project.path))
    untagged = shown["metrics"]["janitor_untags_total"][(("outcome", "done"), ("project", project.path))]
    push_image(registry, project.path, ["mr-43", "mr-43-debug"])
    after.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=143, ref="feature/43", mr_iid=43))
    after.tick()
    after.hook("Merge Request Hook", mr_hook(project.path, iid=43, source_branch="feature/43", action="merge"))
    after.tick()
    after.tick(advance=15 * 60 + 1)
    (plan_id,) = [p.id for p in after.store.list_plans() if p.project_path == project.path and p.id > copied_plans]
    assert after.store.get_plan(plan_id).state == "done"
    assert min(u.id for u in after.store.plan_untags(plan_id)) > copied_untags
    assert max_id(after, "inbox") == copied_inbox + 2  # the pipeline hook and the merge hook
    assert tags(registry, project.path) == ["keep"]
    metrics = scrape(after.client)
    assert metrics["janitor_events_total"][pipelines] == events[pipelines] + 1
    assert metrics["janitor_untags_total"][(("outcome", "done"), ("project", project.path))] == untagged + 2
    status = after.client.get("/api/v1/status", headers=BEARER).get_json()
    assert status["projects"][project.path]["untagged"] == 4
    assert before.client.get("/api/v1/status", headers=BEARER).get_json() == shown["status"], "the source is as it was"


def test_postgresql_back_to_sqlite_shows_the_same_numbers(janitor, registry, project, pg_url, tmp_path):
    before = story(janitor, registry, project)
    shown = numbers(before)
    assert migrate("--from", before.settings.storage.url, "--to", pg_url).exit_code == 0
    back = f"sqlite:///{tmp_path / 'back' / 'janitor.db'}"
    result = migrate("--from", pg_url, "--to", back)
    assert result.exit_code == 0, result.output
    again = over(before, back, janitor)
    assert again.store.engine == "sqlite"
    assert numbers(again) == shown
    again.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=160, ref="feature/x", mr_iid=60))
    assert max_id(again, "inbox") == max_id(before, "inbox") + 1
    pipelines = (("kind", "pipeline"), ("project", project.path))
    assert scrape(again.client)["janitor_events_total"][pipelines] == (
        shown["metrics"]["janitor_events_total"][pipelines] + 1), "SQLite's counting triggers are back"


def test_a_target_holding_data_is_refused_and_left_as_it_was(janitor, registry, project, pg_url):
    before = story(janitor, registry, project)
    assert migrate("--from", before.settings.storage.url, "--to", pg_url).exit_code == 0
    target = over(before, pg_url, janitor)
    held = rows_in(target)

    result = migrate("--from", before.settings.storage.url, "--to", with_password(pg_url))
    assert result.exit_code == 1
    assert "the target already holds data:" in result.stderr
    assert f"{held['plans']} rows in plans" in result.stderr and "migrate into an empty database" in result.stderr
    assert "s3cret-pw" not in result.output
    assert rows_in(target) == held


def test_an_sqlite_target_holding_data_is_refused_too(janitor):
    source, target = janitor(), janitor()
    seed(source.store, source.clock())
    target.store.set_value("note", "somebody was here", 1.0)
    assert source.settings.storage.url != target.settings.storage.url
    result = migrate("--from", source.settings.storage.url, "--to", target.settings.storage.url)
    assert result.exit_code == 1 and "the target already holds data: 1 row in kv" in result.stderr
    assert int(target.store.db.execute("SELECT COUNT(*) FROM plans").fetchone()[0]) == 0


def test_one_row_anywhere_refuses_the_copy_before_anything_is_written(janitor, pg_url, tmp_path):
    source = janitor()
    seed(source.store, source.clock())
    target = build_store(source.settings.model_copy(update={"storage": source.settings.storage.model_copy(
        update={"url": pg_url})}))
    try:
        target.set_value("note", "somebody was here", 1.0)
        with pytest.raises(CopyRefused, match=r"the target already holds data: 1 row in kv; migrate into an empty"):
            copy_store(source.store, target)
        assert int(target.db.execute("SELECT COUNT(*) FROM plans").fetchone()[0]) == 0
        assert int(target.db.execute("SELECT COUNT(*) FROM kv").fetchone()[0]) == 1
    finally:
        target.close()


def test_a_missing_source_is_never_created(tmp_path, pg_url):
    missing = tmp_path / "nowhere" / "janitor.db"
    result = migrate("--from", f"sqlite:///{missing}", "--to", pg_url)
    assert result.exit_code == 2
    assert "no janitor database at" in result.stderr and "the source is never created" in result.stderr
    assert not missing.exists() and not missing.parent.exists()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    result = migrate("--from", f"sqlite:///{empty}", "--to", pg_url)
    assert result.exit_code == 2 and "not an SQLite database" in result.stderr


def test_urls_are_checked_and_never_echoed_with_their_password(tmp_path, janitor, pg_url):
    source = janitor()
    result = migrate("--from", source.settings.storage.url, "--to", "mysql://root:hunter2@db/janitor")
    assert result.exit_code == 2 and "--to:" in result.stderr and "is not a storage URL" in result.stderr
    assert "hunter2" not in result.output
    result = migrate("--from", source.settings.storage.url, "--to", source.settings.storage.url)
    assert result.exit_code == 2 and "both name" in result.stderr
    unreachable = with_password(re.sub(r":\d+/", ":1/", pg_url))
    result = migrate("--from", source.settings.storage.url, "--to", unreachable)
    assert result.exit_code == 2 and "--to: cannot open" in result.stderr
    assert "s3cret-pw" not in result.output


def test_the_command_runs_as_a_process(janitor, pg_url):
    source = janitor()
    seed(source.store, source.clock())
    source.close()
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "migrate-store", "--from", source.settings.storage.url,
         "--to", with_password(pg_url)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False)
    assert done.returncode == 0, done.stderr
    assert "s3cret-pw" not in done.stdout + done.stderr
    assert re.search(r"^  untags: 7 rows$", done.stderr, re.M), done.stderr
    assert re.search(r"copied [\d,]+ rows in \d+ tables from sqlite:///.+ to postgresql://postgres:\*\*\*@",
                     done.stdout), done.stdout
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM untags").fetchone()[0] == 7
