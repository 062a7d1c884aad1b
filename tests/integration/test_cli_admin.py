"""The admin commands through click's CliRunner, on the same storage and config file as the daemon:
status, plans, approve, reject, audit, restore (round trip with a worker running on the real registry,
and a clear word when no worker runs), and check-config --online against the stand-in and the registry."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml
from click.testing import CliRunner
from support.images import digest_of, push_image, tags
from support.janitor import ADMIN, SECRET, RealClock, mr_hook, pipeline_hook, registry_section
from support.ops import APP, MR_TAGS, OTHER, seed

from daemon.cli import main
from daemon.cli.admin import table
from daemon.config import load_settings
from daemon.wiring import build_store


def write_config(tmp_path, projects, **sections) -> str:
    raw = {"storage": {"url": f"sqlite:///{tmp_path / 'janitor.db'}"},
           "server": {"admin_token": ADMIN}, "projects": projects, **sections}
    path = tmp_path / "janitor.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def open_storage(config):
    """The store the admin commands given ``config`` act on."""
    return build_store(load_settings(config))


@pytest.fixture
def seeded(tmp_path):
    """A config file for the admin commands, and its storage seeded with the known story (`seed`)."""
    config = write_config(tmp_path, [
        {"path": APP, "webhook_secret": SECRET, "dry_run": False},
        {"path": OTHER, "webhook_secret": SECRET}])
    store = open_storage(config)
    ids = seed(store, time.time())
    store.close()
    return config, ids


def run(*args, config=None):
    result = CliRunner().invoke(main, [*args, *(["--config", config] if config else [])])
    return result


def test_status_prints_a_table_per_project_with_totals(seeded):
    config, _ = seeded
    result = run("status", config=config)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:8] == ["PROJECT", "MODE", "CREATED", "UNTAGGED", "RATIO", "SCHEDULED", "HELD", "FAILED"]
    app = next(line for line in lines if line.startswith(APP)).split()
    assert app[1:8] == ["live", "4", "2", "50.0%", "0", "1", "1"]
    other = next(line for line in lines if line.startswith(OTHER)).split()
    assert other[1] == "dry-run" and "(quiet)" in other
    total = next(line for line in lines if line.startswith("total")).split()
    assert total[1:4] == ["6", "2", "33.3%"]
    assert "worker: NOT RUNNING" in result.output
    data = json.loads(run("status", "--json", config=config).output)
    assert data["projects"][APP]["created"] == 4


def test_plans_lists_held_by_default_and_any_state_on_request(seeded):
    config, ids = seeded
    result = run("plans", config=config)
    assert result.exit_code == 0
    rows = [line.split() for line in result.output.splitlines()[2:] if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [ids["held_plan"]]
    assert "registry-janitor approve ID" in result.output
    every = json.loads(run("plans", "--state", "all", "--json", config=config).output)
    assert sorted(p["state"] for p in every) == ["done", "done", "dry_run", "held"]
    assert run("plans", "--state", "nonsense", config=config).exit_code == 2
    assert "no ready plans" in run("plans", "--state", "ready", config=config).output


def test_approve_and_reject(seeded):
    config, ids = seeded
    result = run("approve", str(ids["held_plan"]), config=config)
    assert result.exit_code == 0 and "approved" in result.output
    store = open_storage(config)
    assert store.get_plan(ids["held_plan"]).state == "ready"
    assert store.plan_approver(ids["held_plan"]).endswith("(cli)")
    again = run("reject", str(ids["held_plan"]), config=config)
    assert again.exit_code == 1 and "is ready; only held or scheduled plans can be rejected" in again.output
    missing = run("approve", "999", config=config)
    assert missing.exit_code == 1 and "there is no plan 999" in missing.output
    store.close()


def test_reject_cancels(seeded):
    config, ids = seeded
    assert run("reject", str(ids["held_plan"]), config=config).exit_code == 0
    store = open_storage(config)
    assert store.get_plan(ids["held_plan"]).state == "cancelled"
    store.close()


def test_audit_filters_and_json(seeded):
    config, ids = seeded
    result = run("audit", "--project", APP, config=config)
    assert result.exit_code == 0
    assert "HTTP 503 after 5 attempts" in result.output and "superseded" in result.output
    assert OTHER not in result.output
    recent = run("audit", "--since", "20m", config=config).output
    assert "dry_run" in recent and "placeholder" not in recent
    by_date = json.loads(run("audit", "--since", "2000-01-01", "--json", config=config).output)
    assert len(by_date) == 7
    failed = json.loads(run("audit", "--outcome", "failed", "--json", config=config).output)
    assert [u["id"] for u in failed] == [ids["failed"]]
    bad = run("audit", "--since", "last tuesday", config=config)
    assert bad.exit_code == 2 and "--since" in bad.output


def test_restore_without_a_worker_says_so_and_keeps_the_request(seeded):
    config, ids = seeded
    result = run("restore", str(ids["done"][0]), config=config)
    assert result.exit_code == 3
    assert "the worker is not running" in result.output and "recorded" in result.output
    store = open_storage(config)
    (req,) = store.recent_requests()
    assert (req.kind, req.untag_id, req.state) == ("restore", ids["done"][0], "pending")
    store.close()
    refused = run("restore", str(ids["skipped"]), config=config)
    assert refused.exit_code == 1 and "nothing" not in refused.output and "never removed" in refused.output
    assert run("restore", "999", config=config).exit_code == 1


def test_restore_round_trip_with_a_running_worker(tmp_path, janitor, registry, project):
    config = write_config(tmp_path, [{"path": project.path, "webhook_secret": SECRET,
                                      "registry_token": project.token, "dry_run": False, "grace_period": "0s",
                                      "tags": MR_TAGS}],
                          registry=registry_section(registry))
    j = janitor(settings=load_settings(config), clock=RealClock())
    repo = project.path
    digest = push_image(registry, repo, ["mr-7", "mr-7-debug"])
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=7, ref="f", mr_iid=7))
    j.tick()
    j.hook("Merge Request Hook", mr_hook(repo, iid=7, source_branch="f", action="merge"))
    j.tick()
    j.tick()
    assert tags(registry, repo) == []
    (untag,) = [u for u in j.store.list_untags() if u.tag == "mr-7"]

    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            j.worker.tick()
            stop.wait(0.1)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        result = run("restore", str(untag.id), "--timeout", "20", config=config)
    finally:
        stop.set()
        thread.join(10)
    assert result.exit_code == 0, result.output
    assert f"restored: {repo}:mr-7 points at {digest} again" in result.output
    assert digest_of(registry, repo, "mr-7") == digest and "mr-7-debug" not in tags(registry, repo)
    audit = run("audit", "--project", repo, config=config).output
    assert "restored" in audit


def test_check_config_online_reports_each_check(tmp_path, gitlab, registry, project):
    stranger = gitlab.add_project(f"{project.path}-other")
    config = write_config(tmp_path, [
        {"path": project.path, "webhook_secret": SECRET, "registry_token": project.token},
        {"path": stranger.path, "webhook_secret": SECRET, "registry_token": project.token},
        {"path": "grp/*", "webhook_secret": SECRET},
        {"path": "nobody/here", "webhook_secret": SECRET}],
        registry={"url": registry.url}, gitlab={"url": gitlab.url})
    result = run("check-config", "--online", config=config)
    assert result.exit_code == 1, result.output
    blocks: dict[str, list[list[str]]] = {}
    for line in result.output.split("online checks:\n", 1)[1].splitlines():
        if not line.startswith(" "):
            current = blocks.setdefault(line, [])
        else:
            current.append(line.split(None, 2))
    assert [b[:2] for b in blocks[project.path]] == [["gitlab", "ok"], ["scopes", "ok"], ["registry", "ok"]]
    # a token of another project: GitLab hides the project, the registry grants nothing (S6)
    assert [b[:2] for b in blocks[stranger.path]] == [["gitlab", "FAILED"], ["scopes", "ok"], ["registry", "FAILED"]]
    assert "404" in blocks[stranger.path][0][2]
    assert f"token for {stranger.path} gets nothing on {stranger.path.lower()}" in blocks[stranger.path][2][2]
    assert blocks["grp/*"][0][0] == "skipped"
    assert "no gitlab.api_token and no registry_token" in blocks["nobody/here"][0][2]
    good = write_config(tmp_path, [{"path": project.path, "webhook_secret": SECRET,
                                    "registry_token": project.token}],
                        registry={"url": registry.url}, gitlab={"url": gitlab.url})
    assert run("check-config", "--online", config=good).exit_code == 0
    assert run("check-config", config=good).exit_code == 0


def test_check_config_online_when_nothing_answers(tmp_path):
    config = write_config(tmp_path, [{"path": "g/a", "webhook_secret": SECRET, "registry_token": "t"}],
                          registry={"url": "http://127.0.0.1:9"}, gitlab={"url": "http://127.0.0.1:9"})
    result = run("check-config", "--online", config=config)
    assert result.exit_code == 1
    assert "gitlab    FAILED" in result.output and "registry  FAILED" in result.output
    assert "could not be reached" in result.output


def test_table_aligns_numbers_right():
    text = table(["A", "N"], [["x", 1], ["long", 100]], right=[1])
    assert text.splitlines() == ["A       N", "----  ---", "x       1", "long  100"]
