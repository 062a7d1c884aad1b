"""The admin API: auth both ways, status numbers, filters, pagination, approve/reject/restore/retry, JSON
errors; and a restore round trip on the real registry (the web records, the worker puts the tag back)."""

from __future__ import annotations

import base64
import json

import pytest
from support.images import delete_manifest, digest_of, get_manifest, push_image, tags
from support.janitor import ADMIN
from support.ops import APP, BEARER, OTHER, live_janitor, merge_mr, ops_projects


def get(janitor, url, **kw):
    return janitor.client.get(url, headers=BEARER, **kw)


def post(janitor, url):
    return janitor.client.post(url, headers=BEARER)


# auth ------------------------------------------------------------------------------------------------
ADMIN_ROUTES = [("GET", "/api/v1/status"), ("GET", "/api/v1/plans"), ("GET", "/api/v1/plans/1"),
                ("POST", "/api/v1/plans/1/approve"), ("POST", "/api/v1/plans/1/reject"),
                ("GET", "/api/v1/untags"), ("GET", "/api/v1/untags/1"), ("POST", "/api/v1/untags/1/restore"),
                ("POST", "/api/v1/untags/1/retry"), ("GET", "/api/v1/requests/1"), ("GET", "/dashboard")]


@pytest.mark.parametrize(("method", "url"), ADMIN_ROUTES)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic " + base64.b64encode(b"ops:wrong").decode()},
                                     {"Authorization": "Basic !!notbase64"}, {"Authorization": ADMIN}])
def test_admin_routes_refuse_without_the_token(seeded_janitor, method, url, headers):
    response = seeded_janitor.client.open(url, method=method, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="registry-janitor"'
    body = response.get_json()
    assert body["error"] == "unauthorized" and "admin_token" in body["message"]


def test_bearer_and_basic_with_any_user_name_are_accepted(seeded_janitor):
    assert get(seeded_janitor, "/api/v1/status").status_code == 200
    for user in ("ops", "", "someone else"):
        response = seeded_janitor.client.get("/api/v1/status", auth=(user, ADMIN))
        assert response.status_code == 200, user


def test_basic_user_name_is_who_approved(seeded_janitor):
    plan_id = seeded_janitor.ids["held_plan"]
    response = seeded_janitor.client.post(f"/api/v1/plans/{plan_id}/approve", auth=("alice", ADMIN))
    assert response.status_code == 200
    assert response.get_json()["note"] == "approved by alice"
    assert get(seeded_janitor, f"/api/v1/plans/{plan_id}").get_json()["approved_by"] == "alice"


def test_without_a_configured_admin_token_admin_routes_are_shut(janitor):
    harness = janitor(ops_projects(), server={"admin_token": ""})
    for method, url in ADMIN_ROUTES:
        response = harness.client.open(url, method=method, headers=BEARER)
        assert response.status_code == 503, url
        assert response.get_json()["error"] == "admin_token_unset"
        assert "server.admin_token" in response.get_json()["message"]


# status ----------------------------------------------------------------------------------------------
def test_status_counts_per_project_and_in_total(seeded_janitor):
    body = get(seeded_janitor, "/api/v1/status").get_json()
    app, other = body["projects"][APP], body["projects"][OTHER]
    assert {k: app[k] for k in ("created", "untagged", "failed", "held", "scheduled", "dry_run", "restored")} == {
        "created": 4, "untagged": 2, "failed": 1, "held": 1, "scheduled": 0, "dry_run": 0, "restored": 0}
    assert app["ratio"] == 0.5 and app["dry_run_mode"] is False
    assert other["dry_run_mode"] is True and other["dry_run"] == 1 and other["created"] == 2
    assert body["dry_run_projects"] == [OTHER]
    assert body["total"]["created"] == 6 and body["total"]["untagged"] == 2
    assert body["total"]["ratio"] == round(2 / 6, 4)
    # layers A (1000) and B (2000) and the config (100), each counted once
    assert app["untagged_image_bytes"] == 3100
    assert body["queue"]["depth"] == 3
    assert body["plans"]["held"] == 1 and body["plans"]["done"] == 2 and body["plans"]["dry_run"] == 1


def test_status_shows_last_event_per_kind_and_quiet_projects(seeded_janitor):
    body = get(seeded_janitor, "/api/v1/status").get_json()
    app, other = body["projects"][APP], body["projects"][OTHER]
    assert set(app["last_events"]) == {"pipeline", "merge_request"}
    assert app["quiet"] is False
    assert other["quiet"] is True, "no event for two days"
    assert body["worker"] == {"heartbeat_age_seconds": None, "fresh": False}
    seeded_janitor.tick()
    assert get(seeded_janitor, "/api/v1/status").get_json()["worker"]["fresh"] is True


# plans -----------------------------------------------------------------------------------------------
def test_plans_filter_by_state_and_project(seeded_janitor):
    held = get(seeded_janitor, "/api/v1/plans?state=held").get_json()["plans"]
    assert [p["id"] for p in held] == [seeded_janitor.ids["held_plan"]]
    other = get(seeded_janitor, f"/api/v1/plans?project={OTHER}").get_json()["plans"]
    assert [(p["id"], p["state"]) for p in other] == [(seeded_janitor.ids["dry_plan"], "dry_run")]
    assert get(seeded_janitor, "/api/v1/plans?state=nonsense").status_code == 400


def test_plans_paginate_with_cursor_and_offset(seeded_janitor):
    all_ids = [p["id"] for p in get(seeded_janitor, "/api/v1/plans").get_json()["plans"]]
    assert all_ids == sorted(all_ids, reverse=True) and len(all_ids) == 4
    seen, cursor = [], None
    while True:
        url = "/api/v1/plans?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = get(seeded_janitor, url).get_json()
        seen += [p["id"] for p in page["plans"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == all_ids
    page = get(seeded_janitor, "/api/v1/plans?limit=2&offset=2").get_json()
    assert [p["id"] for p in page["plans"]] == all_ids[2:] and page["next_cursor"] is None
    for bad in ("limit=0", "limit=501", "offset=-1", "cursor=abc", "limit=x"):
        response = get(seeded_janitor, f"/api/v1/plans?{bad}")
        assert response.status_code == 400 and response.get_json()["error"] == "bad_query", bad


def test_plan_detail_lists_its_untags(seeded_janitor):
    body = get(seeded_janitor, f"/api/v1/plans/{seeded_janitor.ids['done_plan']}").get_json()
    assert body["state"] == "done" and body["untag_count"] == 2
    assert [(u["tag"], u["outcome"], u["restorable"]) for u in body["untags"]] == [
        ("mr-1", "done", True), ("mr-1-debug", "done", True)]
    assert body["untags"][0]["saved_manifest"]["digest"] == "sha256:" + "1" * 64
    missing = get(seeded_janitor, "/api/v1/plans/999")
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"


def test_approve_makes_a_held_plan_due_now_and_a_second_approve_conflicts(seeded_janitor):
    plan_id = seeded_janitor.ids["held_plan"]
    response = post(seeded_janitor, f"/api/v1/plans/{plan_id}/approve")
    assert response.status_code == 200 and response.get_json()["state"] == "ready"
    assert seeded_janitor.store.get_plan(plan_id).due_at == seeded_janitor.clock()
    again = post(seeded_janitor, f"/api/v1/plans/{plan_id}/approve")
    assert again.status_code == 409 and again.get_json()["error"] == "not_held"
    assert "ready, not held" in again.get_json()["message"]
    assert post(seeded_janitor, f"/api/v1/plans/{plan_id}/reject").status_code == 409


def test_reject_cancels_a_held_plan_and_skips_its_untags(seeded_janitor):
    plan_id = seeded_janitor.ids["held_plan"]
    response = post(seeded_janitor, f"/api/v1/plans/{plan_id}/reject")
    assert response.status_code == 200 and response.get_json()["state"] == "cancelled"
    outcomes = {(u.outcome, u.reason) for u in seeded_janitor.store.plan_untags(plan_id)}
    assert outcomes == {("skipped", "rejected")}


def test_approve_and_reject_unknown_or_not_held_plans(seeded_janitor):
    assert post(seeded_janitor, "/api/v1/plans/999/approve").status_code == 404
    response = post(seeded_janitor, f"/api/v1/plans/{seeded_janitor.ids['done_plan']}/reject")
    assert response.status_code == 409 and set(response.get_json()) == {"error", "message"}


# untags ----------------------------------------------------------------------------------------------
def test_untags_filter_by_project_outcome_and_since(seeded_janitor):
    failed = get(seeded_janitor, "/api/v1/untags?outcome=failed").get_json()["untags"]
    assert [u["id"] for u in failed] == [seeded_janitor.ids["failed"]]
    assert failed[0]["reason"] == "HTTP 503 after 5 attempts" and failed[0]["restorable"] is False
    other = get(seeded_janitor, f"/api/v1/untags?project={OTHER}").get_json()["untags"]
    assert [u["outcome"] for u in other] == ["dry_run"]
    recent = get(seeded_janitor, "/api/v1/untags?since=20m").get_json()["untags"]
    assert [u["id"] for u in recent] == seeded_janitor.ids["dry_run"], "pending ones count from when planned"
    hour = get(seeded_janitor, "/api/v1/untags?since=65m").get_json()["untags"]
    assert len(hour) == 7
    assert get(seeded_janitor, "/api/v1/untags?since=2000-01-01").get_json()["untags"] == hour
    assert get(seeded_janitor, "/api/v1/untags?since=2999-01-01T00:00:00Z").get_json()["untags"] == []
    bad = get(seeded_janitor, "/api/v1/untags?since=yesterday")
    assert bad.status_code == 400 and "since" in bad.get_json()["message"]
    assert get(seeded_janitor, "/api/v1/untags?outcome=gone").status_code == 400


def test_untags_paginate(seeded_janitor):
    everything = [u["id"] for u in get(seeded_janitor, "/api/v1/untags?limit=500").get_json()["untags"]]
    first = get(seeded_janitor, "/api/v1/untags?limit=4").get_json()
    second = get(seeded_janitor, f"/api/v1/untags?limit=4&cursor={first['next_cursor']}").get_json()
    assert [u["id"] for u in first["untags"] + second["untags"]] == everything
    assert second["next_cursor"] is None


def test_restore_is_recorded_for_the_worker_and_asking_twice_is_asking_once(seeded_janitor):
    untag_id = seeded_janitor.ids["done"][0]
    response = post(seeded_janitor, f"/api/v1/untags/{untag_id}/restore")
    assert response.status_code == 202
    body = response.get_json()
    assert body["request"]["state"] == "pending" and body["request"]["kind"] == "restore" and body["created"]
    assert response.headers["Location"] == f"/api/v1/requests/{body['request']['id']}"
    again = post(seeded_janitor, f"/api/v1/untags/{untag_id}/restore")
    assert again.status_code == 202 and again.get_json()["request"]["id"] == body["request"]["id"]
    assert again.get_json()["created"] is False
    polled = get(seeded_janitor, response.headers["Location"]).get_json()
    assert polled["request"]["state"] == "pending" and polled["untag"]["restore"]["state"] == "pending"


@pytest.mark.parametrize(("which", "status", "code"), [("failed", 409, "not_restorable"),
                                                       ("skipped", 409, "not_restorable"),
                                                       ("dry_run", 409, "not_restorable")])
def test_restore_refuses_untags_that_never_removed_a_tag(seeded_janitor, which, status, code):
    untag_id = seeded_janitor.ids[which] if isinstance(seeded_janitor.ids[which], int) else seeded_janitor.ids[which][0]
    response = post(seeded_janitor, f"/api/v1/untags/{untag_id}/restore")
    assert response.status_code == status and response.get_json()["error"] == code
    assert post(seeded_janitor, "/api/v1/untags/999/restore").status_code == 404


def test_restore_without_a_worker_registry_token_fails_with_a_reason(seeded_janitor):
    untag_id = seeded_janitor.ids["done"][1]
    post(seeded_janitor, f"/api/v1/untags/{untag_id}/restore")
    seeded_janitor.tick()
    body = get(seeded_janitor, f"/api/v1/untags/{untag_id}").get_json()
    assert body["restore"]["state"] == "failed"
    assert "registry_token" in body["restore"]["reason"]
    assert body["restored_at"] is None
    # a failed request may be asked again
    assert post(seeded_janitor, f"/api/v1/untags/{untag_id}/restore").get_json()["created"] is True


def test_retry_puts_a_failed_untag_back_through_the_worker(seeded_janitor):
    untag_id = seeded_janitor.ids["failed"]
    response = post(seeded_janitor, f"/api/v1/untags/{untag_id}/retry")
    assert response.status_code == 202 and response.get_json()["request"]["kind"] == "retry"
    assert seeded_janitor.store.get_untag(untag_id)[0].outcome == "failed", "the web only records the request"
    seeded_janitor.tick()
    body = get(seeded_janitor, f"/api/v1/untags/{untag_id}").get_json()
    assert body["retry"]["state"] == "done"
    # no registry_token in this config: the rerun fails again, through the executor, with its own reason
    assert body["outcome"] == "failed" and "registry_token" in body["reason"]
    assert seeded_janitor.store.get_plan(seeded_janitor.ids["fail_plan"]).state == "done"


def test_retry_refuses_untags_that_did_not_fail(seeded_janitor):
    response = post(seeded_janitor, f"/api/v1/untags/{seeded_janitor.ids['done'][0]}/retry")
    assert response.status_code == 409 and response.get_json()["error"] == "not_failed"
    assert post(seeded_janitor, "/api/v1/untags/999/retry").status_code == 404
    assert get(seeded_janitor, "/api/v1/requests/999").status_code == 404


def test_unknown_api_route_is_a_json_404(seeded_janitor):
    response = get(seeded_janitor, "/api/v1/nothing")
    assert response.status_code == 404 and set(response.get_json()) == {"error", "message"}


# the real registry -----------------------------------------------------------------------------------
def test_restore_round_trip_on_the_real_registry(janitor, registry, project):
    j = live_janitor(janitor, registry, project)
    repo = project.path
    digest = push_image(registry, repo, ["mr-42", "mr-42-debug", "keep"])
    plan_id = merge_mr(j, repo)
    assert j.store.get_plan(plan_id).state == "done"
    assert sorted(tags(registry, repo)) == ["keep"]
    untags = {u["tag"]: u for u in get(j, f"/api/v1/plans/{plan_id}").get_json()["untags"]}
    target = untags["mr-42"]
    assert target["outcome"] == "done" and target["restorable"]
    assert target["saved_manifest"]["digest"] == digest

    registry.mark()
    response = post(j, f"/api/v1/untags/{target['id']}/restore")
    assert response.status_code == 202
    assert registry.request_log(repo=repo) == [], "the web process never calls the registry"
    j.tick()

    assert digest_of(registry, repo, "mr-42") == digest
    assert "mr-42-debug" not in tags(registry, repo)
    body = get(j, response.headers["Location"]).get_json()
    assert body["request"]["state"] == "done" and digest in body["request"]["reason"]
    assert body["untag"]["restored_at"] is not None and body["untag"]["restorable"] is False
    assert post(j, f"/api/v1/untags/{target['id']}/restore").status_code == 409
    assert get(j, "/api/v1/status").get_json()["projects"][repo]["restored"] == 1
    # the restored tag is the operator's now: later ticks leave it alone
    j.tick(advance=86400)
    assert digest_of(registry, repo, "mr-42") == digest


def test_restore_fails_with_the_registry_reason_when_the_image_is_gone(janitor, registry, project):
    j = live_janitor(janitor, registry, project)
    repo = project.path
    digest = push_image(registry, repo, ["mr-42", "mr-42-debug"])
    plan_id = merge_mr(j, repo)
    assert tags(registry, repo) == []
    body, _media_type, _ = get_manifest(registry, repo, digest)
    doc = json.loads(body)
    assert delete_manifest(registry, repo, digest).status_code == 202
    for blob in [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]:
        # what garbage collection does once nothing tags the image any more
        assert registry.session.delete(f"{registry.url}/v2/{repo}/blobs/{blob}").status_code == 202
    (untag,) = [u for u in j.store.plan_untags(plan_id) if u.tag == "mr-42"]
    post(j, f"/api/v1/untags/{untag.id}/restore")
    j.tick()
    body = get(j, f"/api/v1/untags/{untag.id}").get_json()
    assert body["restore"]["state"] == "failed"
    assert "garbage collection" in body["restore"]["reason"], body["restore"]["reason"]
    assert body["restored_at"] is None
    assert tags(registry, repo) == []
