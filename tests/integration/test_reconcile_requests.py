"""Reconcile as a request a worker carries out: recorded through the admin API (or the CLI), taken by one
worker under a lease, run with the daemon's own settings (its grace period), its result kept per project."""

from __future__ import annotations

import datetime as dt

from apscheduler.schedulers.background import BackgroundScheduler
from support.janitor import SECRET, pipeline_hook, registry_section
from support.ops import BEARER

PATTERNS = [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}]


def entry(project, **extra):
    return {"path": project.path, "webhook_secret": SECRET, "registry_token": project.token, "dry_run": False,
            "grace_period": "15m", "tags": PATTERNS, **extra}


def with_missed_merge(janitor, registry, gitlab, project, **extra):
    """A janitor whose ledger holds MR 11's pipeline, while GitLab says MR 11 merged (the hook was lost)."""
    j = janitor([entry(project, **extra)], registry=registry_section(registry),
                gitlab={"url": gitlab.url, "timeout": 5})
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=1101, ref="feat", mr_iid=11, status="running"))
    j.tick()
    gitlab.add_branch(project, "feat")
    gitlab.set_mr(project, 11, source_branch="feat", state="merged")
    return j


def ask(j, body=None, **kwargs):
    return j.client.post("/api/v1/reconcile", headers=BEARER, json=body, **kwargs)


def test_a_request_is_run_by_the_worker_with_the_daemons_grace_period(janitor, registry, gitlab, project):
    j = with_missed_merge(janitor, registry, gitlab, project)
    answer = ask(j, {"project": project.path})
    assert answer.status_code == 202, answer.get_json()
    req = answer.get_json()["request"]
    assert answer.headers["Location"] == f"/api/v1/reconcile/{req['id']}"
    assert (req["state"], req["project"], req["projects"]) == ("pending", project.path, None)
    assert req["requested_by"] == "admin"
    # asking again while it is open is asking once
    again = ask(j, {"project": project.path}).get_json()
    assert again["request"]["id"] == req["id"] and again["created"] is False
    assert j.store.plan_page(state=None, project_path=project.path, limit=10) == []  # nothing runs in the web

    assert j.worker.reconciler.run_requests() == 1

    done = j.client.get(answer.headers["Location"], headers=BEARER).get_json()["request"]
    assert done["state"] == "done" and done["finished_at"] is not None and done["error"] is None
    (report,) = done["projects"]
    assert report["project"] == project.path and report["ok"] is True
    assert "merged not yet seen: !11" in report["summary"]
    (plan,) = report["plans"]
    assert plan["trigger"] == "merge_request_merged" and plan["state"] == "scheduled"
    stored = j.store.get_plan(plan["id"])
    assert stored.due_at - stored.created_at == 15 * 60  # the daemon's grace_period
    assert j.worker.reconciler.run_requests() == 0


def test_every_project_when_the_body_names_none(janitor, registry, gitlab, project):
    j = with_missed_merge(janitor, registry, gitlab, project)
    for body in ({}, {"project": None}):
        answer = j.client.post("/api/v1/reconcile", headers=BEARER, json=body)
        assert answer.status_code == 202 and answer.get_json()["request"]["project"] is None
    empty = j.client.post("/api/v1/reconcile", headers=BEARER)
    assert empty.status_code == 202 and empty.get_json()["created"] is False
    j.worker.reconciler.run_requests()
    (report,) = j.store.get_reconcile_request(empty.get_json()["request"]["id"]).result["projects"]
    assert report["project"] == project.path and len(report["plan_ids"]) == 1


def test_bodies_and_projects_the_route_refuses(janitor):
    j = janitor()
    for data in (b"[1]", b'{"project": 5}', b'{"project": ""}', b'{"projects": "a/b"}', b"{", b'{"project": NaN}',
                 b'"grp/app"'):
        answer = j.client.post("/api/v1/reconcile", headers={**BEARER, "Content-Type": "application/json"},
                               data=data)
        assert answer.status_code == 400, (data, answer.get_json())
        assert answer.get_json()["error"] == "bad_body" and answer.get_json()["message"]
    unknown = ask(j, {"project": "nope/x"})
    assert unknown.status_code == 404
    assert "nope/x is not configured" in unknown.get_json()["message"]
    assert j.client.post("/api/v1/reconcile", json={}).status_code == 401
    assert j.client.get("/api/v1/reconcile/1", headers=BEARER).status_code == 404
    assert j.store.get_reconcile_request(1) is None  # nothing was recorded


def test_a_group_entry_covers_the_projects_the_ledger_holds(janitor):
    j = janitor([{"path": "grp/*", "webhook_secret": SECRET}])
    assert ask(j, {"project": "grp/app"}).status_code == 404  # not in the ledger yet
    j.hook("Pipeline Hook", pipeline_hook("grp/app", pipeline_id=5, ref="main"))
    j.tick()
    assert ask(j, {"project": "grp/app"}).status_code == 202


def test_two_workers_never_both_take_one_and_a_dead_ones_lease_runs_out(janitor):
    j = janitor()
    req, created = j.store.add_reconcile_request(None, "alice", 100.0)
    assert created
    first = j.store.claim_reconcile_request(200.0, 60.0)
    assert first is not None and first.id == req.id and first.state == "running"
    assert j.store.claim_reconcile_request(210.0, 60.0) is None  # held by the first
    j.store.renew_reconcile_request(req.id, 300.0, 240.0)
    assert j.store.claim_reconcile_request(270.0, 60.0) is None  # renewed
    taken = j.store.claim_reconcile_request(301.0, 60.0)  # the first died: its lease ran out
    assert taken is not None and taken.id == req.id
    j.store.finish_reconcile_request(req.id, "done", {"projects": []}, 320.0)
    found = j.store.get_reconcile_request(req.id)
    assert (found.state, found.finished_at, found.result) == ("done", 320.0, {"projects": []})
    assert j.store.claim_reconcile_request(1000.0, 60.0) is None


def test_a_run_that_breaks_fails_the_request_and_says_why(janitor, monkeypatch):
    j = janitor()
    req, _ = j.store.add_reconcile_request(None, "alice", j.clock())

    def broken(*args, **kwargs):
        raise RuntimeError("the ledger went away")

    monkeypatch.setattr(j.worker.reconciler, "run", broken)
    assert j.worker.reconciler.run_requests() == 1
    body = j.client.get(f"/api/v1/reconcile/{req.id}", headers=BEARER).get_json()["request"]
    assert body["state"] == "failed" and body["error"] == "RuntimeError: the ledger went away"
    assert body["projects"] is None


def test_the_worker_takes_requests_up_every_poll_interval_beside_its_tick(janitor):
    j = janitor(worker={"poll_interval": "3s"})
    scheduler = BackgroundScheduler()
    job = j.worker.schedule_reconcile_requests(scheduler)
    scheduler.start(paused=True)
    try:
        assert job.id == "reconcile_requests" and job.trigger.interval == dt.timedelta(seconds=3)
        assert job.func == j.worker.reconciler.run_requests_logged and job.max_instances == 1
    finally:
        scheduler.shutdown(wait=False)
