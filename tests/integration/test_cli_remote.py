"""The admin commands act on a running janitor, never on a stray database: without its database they stop
(exit 2) and make none; with ``--url`` they ask the janitor's admin API (served here from a thread) and print
what the local mode prints, with the daemon's settings deciding (its live mode, its grace period)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from support.janitor import ADMIN, SECRET, RealClock, pipeline_hook, registry_section
from support.ops import APP, OTHER, seed
from support.servers import ServerThread

from daemon.cli import main
from daemon.cli import remote as remote_module
from daemon.config import load_settings

ADMIN_COMMANDS = (["status"], ["plans"], ["approve", "1"], ["reject", "1"], ["audit"], ["restore", "1"],
                  ["reconcile"])
QUIET_ENV = {"JANITOR_URL": None, "JANITOR_ADMIN_TOKEN": None, "JANITOR_CONFIG": None}


def write_config(path: Path, projects, storage_url: str, **sections) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"storage": {"url": storage_url}, "server": {"admin_token": ADMIN},
                                    "projects": projects, **sections}))
    return str(path)


def cli(*args, env=None):
    return CliRunner().invoke(main, list(args), env={**QUIET_ENV, **(env or {})})


@pytest.fixture
def served(tmp_path, janitor):
    """The seeded story (`seed`) in a janitor whose app is served over HTTP, and a config file naming the
    same database for the local mode. Yields (config, ids, url, harness)."""
    config = write_config(tmp_path / "janitor.yaml", [
        {"path": APP, "webhook_secret": SECRET, "dry_run": False},
        {"path": OTHER, "webhook_secret": SECRET}], f"sqlite:///{tmp_path / 'janitor.db'}")
    j = janitor(settings=load_settings(config, environ={}), clock=RealClock())
    ids = seed(j.store, j.clock())
    with ServerThread(j.app, name="janitor-app") as server:
        yield config, ids, server.url, j


def both(served, *args):
    """The command run locally (``--config``) and over ``--url``."""
    config, _, url, _ = served
    return cli(*args, "--config", config), cli(*args, "--url", url, "--token", ADMIN)


def test_admin_commands_without_their_database_stop_and_make_none(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    missing = tmp_path / "nowhere" / "janitor.db"
    absolute = write_config(tmp_path / "conf" / "janitor.yaml", [{"path": APP, "webhook_secret": SECRET}],
                            f"sqlite:///{missing}")
    relative = write_config(tmp_path / "conf" / "relative.yaml", [{"path": APP, "webhook_secret": SECRET}],
                            "sqlite:///janitor.db")
    for args in ADMIN_COMMANDS:
        result = cli(*args, "--config", absolute)
        assert result.exit_code == 2, (args, result.output)
        assert f"no janitor database at {missing} (no such file)" in result.stderr
        assert "run `registry-janitor run` first, or point --url at a running janitor" in result.stderr
        assert result.stdout == ""
        assert cli(*args, "--config", relative).exit_code == 2
    assert not missing.parent.exists()
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "conf" / "janitor.db").exists()


def test_a_file_that_is_no_janitor_database_is_refused_untouched(tmp_path):
    for content, why in ((b"", "not an SQLite database"), (b"hello", "not an SQLite database")):
        db = tmp_path / "janitor.db"
        db.write_bytes(content)
        config = write_config(tmp_path / "janitor.yaml", [{"path": APP, "webhook_secret": SECRET}], f"sqlite:///{db}")
        result = cli("status", "--config", config)
        assert result.exit_code == 2 and why in result.stderr
        assert db.read_bytes() == content
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    config = write_config(tmp_path / "other.yaml", [{"path": APP, "webhook_secret": SECRET}], f"sqlite:///{other}")
    result = cli("plans", "--config", config)
    assert result.exit_code == 2 and "holds no janitor tables" in result.stderr


@pytest.mark.parametrize("args", [
    ["status"], ["plans"], ["plans", "--state", "all"], ["plans", "--state", "all", "--json"],
    ["plans", "--state", "done", "--project", APP], ["plans", "--state", "ready"], ["audit"], ["audit", "--json"],
    ["audit", "--project", APP, "--outcome", "failed"], ["audit", "--since", "20m"],
    ["audit", "--since", "2000-01-01", "--json", "--limit", "5"],
])
def test_each_read_over_url_prints_what_the_local_mode_prints(served, args, monkeypatch):
    monkeypatch.setattr(remote_module, "PAGE", 2)  # longer lists are read page by page
    local, over_url = both(served, *args)
    assert local.exit_code == over_url.exit_code == 0, (local.output, over_url.output)
    assert over_url.stdout == local.stdout
    assert over_url.stdout.strip()


def test_status_json_over_url_is_the_same_document(served):
    local, over_url = both(served, "status", "--json")
    mine, theirs = timeless(json.loads(local.stdout)), timeless(json.loads(over_url.stdout))
    assert theirs == mine and theirs["projects"][APP]["created"] == 4


def timeless(document):
    """``document`` without what depends on the moment it was made (its time, ages in seconds)."""
    if isinstance(document, dict):
        return {k: timeless(v) for k, v in document.items() if k != "generated_at" and not k.endswith("age_seconds")}
    if isinstance(document, list):
        return [timeless(v) for v in document]
    return document


def test_decisions_and_refusals_over_url(served):
    _, ids, url, j = served
    remote = ("--url", url, "--token", ADMIN)
    for args in (["approve", "999"], ["reject", "999"], ["restore", str(ids["skipped"])], ["restore", "999"]):
        local, over_url = both(served, *args)
        assert local.exit_code == over_url.exit_code == 1, args
        assert over_url.stderr == local.stderr and over_url.stderr.startswith("registry-janitor: ")
    approved = cli("approve", str(ids["held_plan"]), *remote)
    assert approved.exit_code == 0, approved.output
    assert approved.stdout.startswith(f"plan {ids['held_plan']} approved: ")
    assert j.store.get_plan(ids["held_plan"]).state == "ready"
    assert j.store.plan_approver(ids["held_plan"]) == "admin"  # the daemon says who, as for the API
    local, over_url = both(served, "approve", str(ids["held_plan"]))
    assert local.exit_code == over_url.exit_code == 1 and over_url.stderr == local.stderr
    assert "not held" in over_url.stderr

    restore = cli("restore", str(ids["done"][0]), *remote)
    assert restore.exit_code == 3, restore.output  # no worker heartbeat in this story
    assert restore.stdout.startswith("restore of ") and "requested (request " in restore.stdout
    assert "the worker is not running" in restore.stderr
    (req,) = j.store.recent_requests()
    assert (req.kind, req.untag_id, req.state, req.requested_by) == ("restore", ids["done"][0], "pending", "admin")


def test_status_over_url_tells_the_daemons_mode_not_the_clis_environment(tmp_path, janitor):
    config = write_config(tmp_path / "janitor.yaml", [
        {"path": APP, "webhook_secret": SECRET, "dry_run": "${JANITOR_DRY_RUN}"}],
        f"sqlite:///{tmp_path / 'janitor.db'}")
    j = janitor(settings=load_settings(config, environ={"JANITOR_DRY_RUN": "false"}), clock=RealClock())
    cli_env = {"JANITOR_DRY_RUN": "true"}
    with ServerThread(j.app) as server:
        over_url = cli("status", env={**cli_env, "JANITOR_URL": server.url, "JANITOR_ADMIN_TOKEN": ADMIN})
    assert over_url.exit_code == 0, over_url.output
    row = next(line for line in over_url.stdout.splitlines() if line.startswith(APP)).split()
    assert row[1] == "live"
    # the same command on the database reads the settings of the CLI's own environment
    local = cli("status", "--config", config, env=cli_env)
    assert next(line for line in local.stdout.splitlines() if line.startswith(APP)).split()[1] == "dry-run"


def test_wrong_or_missing_token_unreachable_janitor_and_ambiguous_target(served, tmp_path):
    config, _, url, _ = served
    wrong = cli("status", "--url", url, "--token", "not-the-token")
    assert wrong.exit_code == 2 and wrong.stdout == ""
    assert f"the janitor at {url} refused the admin token (HTTP 401): send the admin token" in wrong.stderr
    missing = cli("plans", "--url", url)
    assert missing.exit_code == 2 and "--token T or $JANITOR_ADMIN_TOKEN" in missing.stderr
    down = cli("audit", "--url", "http://127.0.0.1:9", "--token", ADMIN)
    assert down.exit_code == 1 and "cannot reach the janitor at http://127.0.0.1:9: " in down.stderr
    assert cli("status", "--url", "ftp://janitor", "--token", ADMIN).exit_code == 2
    both_given = cli("status", "--url", url, "--token", ADMIN, "--config", config)
    assert both_given.exit_code == 2 and "not both" in both_given.output
    # a --config on the command line beats $JANITOR_URL from the environment
    explicit = cli("status", "--config", config, env={"JANITOR_URL": "http://127.0.0.1:9"})
    assert explicit.exit_code == 0 and "PROJECT" in explicit.stdout
    not_janitor = cli("status", "--url", url + "/nothing-here", "--token", ADMIN)
    assert not_janitor.exit_code == 1 and "URL was not found" in not_janitor.stderr


# reconcile ---------------------------------------------------------------------------------------------
PATTERNS = [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}]


def entry(project, grace: str):
    return {"path": project.path, "webhook_secret": SECRET, "registry_token": project.token, "dry_run": False,
            "grace_period": grace, "tags": PATTERNS}


def missed_merge(j, gitlab, project, iid: int) -> None:
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=2000 + iid, ref=f"f{iid}", mr_iid=iid,
                                          status="running"))
    j.tick()
    gitlab.add_branch(project, f"f{iid}")
    gitlab.set_mr(project, iid, source_branch=f"f{iid}", state="merged")


def test_reconcile_runs_in_the_worker_with_the_daemons_grace_period(tmp_path, janitor, registry, gitlab, project):
    db = f"sqlite:///{tmp_path / 'janitor.db'}"
    sections = {"registry": registry_section(registry), "gitlab": {"url": gitlab.url, "timeout": 5}}
    daemon_config = write_config(tmp_path / "daemon.yaml", [entry(project, "15m")], db, **sections)
    # the CLI's own config names the same database but another grace period: it must not matter
    cli_config = write_config(tmp_path / "cli.yaml", [entry(project, "0s")], db, **sections)
    j = janitor(settings=load_settings(daemon_config, environ={}), clock=RealClock())
    missed_merge(j, gitlab, project, 31)
    with ServerThread(j.app) as server, j.working():
        local = cli("reconcile", "--config", cli_config, "--project", project.path)
        missed_merge(j, gitlab, project, 32)
        over_url = cli("reconcile", "--url", server.url, "--token", ADMIN, "--project", project.path)
        unknown = cli("reconcile", "--url", server.url, "--token", ADMIN, "--project", "nope/x")
    for result, iid in ((local, 31), (over_url, 32)):
        assert result.exit_code == 0, result.output
        assert f"{project.path}: " in result.stdout and f"merged not yet seen: !{iid}" in result.stdout
        assert f"(merge_request_merged:{project.path}:{iid}), " in result.stdout and "scheduled" in result.stdout
    plans = j.store.plan_page(state=None, project_path=project.path, limit=10)
    assert len(plans) == 2 and {p.due_at - p.created_at for p in plans} == {15 * 60}
    assert unknown.exit_code == 2 and "nope/x is not configured" in unknown.output


def test_reconcile_without_a_worker_records_it_and_says_so(tmp_path, janitor, registry, gitlab, project):
    j = janitor([entry(project, "15m"), {"path": "absent/thing", "webhook_secret": SECRET,
                                         "registry_token": "not-a-token"}],
                registry=registry_section(registry), gitlab={"url": gitlab.url, "timeout": 5}, clock=RealClock())
    with ServerThread(j.app) as server:
        remote = ("--url", server.url, "--token", ADMIN)
        result = cli("reconcile", *remote)
        assert result.exit_code == 3, result.output  # the worker never ran: no heartbeat
        assert "the worker is not running (last heartbeat: never)" in result.stderr
        assert "reconcile request is recorded" in result.stderr
        j.worker.heartbeat()
        queued = cli("reconcile", *remote, "--no-wait")
        assert queued.exit_code == 0 and "already requested (request 1)" in queued.stderr
        with j.working():
            failed = cli("reconcile", *remote)
    assert j.store.get_reconcile_request(1).state == "done"
    assert failed.exit_code == 1, failed.output  # one project could not be caught up
    assert "absent/thing: failed: " in failed.stdout and f"{project.path}: " in failed.stdout
