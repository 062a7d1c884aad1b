"""`reject` stops a scheduled plan during its grace period, from the admin API, the dashboard's form and
the operator action alike: the plan is cancelled, who rejected it is recorded, and the worker never
untags its tags (the real registry still holds them after the due time). A plan a worker has claimed is
not cancelled under it: 409 ``not_cancellable``, and it stays the worker's."""

from __future__ import annotations

import re

import pytest
from support.images import push_image, tags
from support.janitor import ADMIN, Harness, mr_hook, pipeline_hook
from support.ops import BEARER, live_janitor

from daemon.domain.policy import LEASE_SECONDS
from daemon.ops import actions
from daemon.ops.actions import ActionRefused

GRACE = 15 * 60
AUTH = ("ops", ADMIN)
TAGS = ["mr-42", "mr-42-debug", "keep"]


def scheduled_plan(j: Harness, repo: str) -> int:
    """MR !42's pipeline pushed its tags and finished, the MR is merged: its plan waits GRACE."""
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=101, ref="feature/42", mr_iid=42))
    j.tick()
    j.hook("Merge Request Hook", mr_hook(repo, iid=42, source_branch="feature/42", action="merge"))
    j.tick()
    (plan,) = j.store.list_plans(state="scheduled", project_path=repo)
    assert plan.untag_count == 2 and plan.due_at > j.clock()
    return plan.id


def dashboard(j: Harness) -> str:
    response = j.client.get("/dashboard", auth=AUTH)
    assert response.status_code == 200
    return str(response.get_data(as_text=True))


def csrf(j: Harness) -> str:
    tokens = set(re.findall(r'name="csrf" value="([0-9a-f]+)"', dashboard(j)))
    assert len(tokens) == 1
    return tokens.pop()


def form_post(j: Harness, url: str, token: str | None = None, **fields: str) -> object:
    return j.client.post(url, data={"csrf": token or csrf(j), **fields}, auth=AUTH)


def assert_never_untagged(j: Harness, registry, repo: str, plan_id: int) -> None:
    j.tick(advance=GRACE + 60)
    j.tick(advance=3600)
    assert j.store.get_plan(plan_id).state == "cancelled"
    assert {(u.tag, u.outcome, u.reason) for u in j.store.plan_untags(plan_id)} == {
        ("mr-42", "skipped", "rejected"), ("mr-42-debug", "skipped", "rejected")}
    assert sorted(tags(registry, repo)) == sorted(TAGS)


def test_api_reject_cancels_a_scheduled_plan_and_its_tags_stay(janitor, registry, project):
    j = live_janitor(janitor, registry, project)
    push_image(registry, project.path, TAGS)
    plan_id = scheduled_plan(j, project.path)

    response = j.client.post(f"/api/v1/plans/{plan_id}/reject", headers=BEARER)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["state"] == "cancelled"
    detail = j.client.get(f"/api/v1/plans/{plan_id}", headers=BEARER).get_json()
    assert detail["rejected_by"] == "admin" and detail["approved_by"] is None
    assert "rejected by admin" in detail["note"]
    assert_never_untagged(j, registry, project.path, plan_id)
    again = j.client.post(f"/api/v1/plans/{plan_id}/reject", headers=BEARER)
    assert again.status_code == 409 and again.get_json()["error"] == "not_cancellable"
    assert "cancelled" in again.get_json()["message"]


def test_dashboard_lists_scheduled_plans_with_their_due_time_and_a_reject_form(janitor, registry, project):
    j = live_janitor(janitor, registry, project)
    push_image(registry, project.path, TAGS)
    plan_id = scheduled_plan(j, project.path)

    html = dashboard(j)
    row = re.search(rf'<tr data-scheduled-plan="{plan_id}"[^>]*>(.*?)</tr>', html, re.S)
    assert row, "the scheduled plan has a row"
    assert "in 15m" in row.group(1), row.group(1)
    assert f'action="/dashboard/plans/{plan_id}/reject"' in row.group(1) and 'name="csrf"' in row.group(1)
    assert f"{project.path}:mr-42" in row.group(1)

    refused = j.client.post(f"/dashboard/plans/{plan_id}/reject", data={"csrf": "0" * 64}, auth=AUTH)
    assert refused.status_code == 403 and j.store.get_plan(plan_id).state == "scheduled"

    response = form_post(j, f"/dashboard/plans/{plan_id}/reject", back="scheduled")
    assert response.status_code == 303 and response.headers["Location"].endswith("/dashboard#scheduled")
    assert f"Plan {plan_id} rejected" in dashboard(j)
    assert j.store.plan_rejecter(plan_id) == "ops"
    assert f'data-scheduled-plan="{plan_id}"' not in dashboard(j)
    assert_never_untagged(j, registry, project.path, plan_id)


def test_the_operator_action_cancels_a_scheduled_plan(janitor, registry, project):
    j = live_janitor(janitor, registry, project)
    push_image(registry, project.path, TAGS)
    plan_id = scheduled_plan(j, project.path)
    with pytest.raises(ActionRefused) as approve:
        actions.decide_plan(j.store, plan_id, True, "carol", j.clock())
    assert (approve.value.status, approve.value.code) == (409, "not_held"), "approve stays held-only"

    plan = actions.decide_plan(j.store, plan_id, False, "carol", j.clock())
    assert plan.state == "cancelled" and j.store.plan_rejecter(plan_id) == "carol"
    assert not j.store.claim_plan(plan_id, j.clock() + GRACE + 1, LEASE_SECONDS, "late-worker"), \
        "a rejected plan can no longer be claimed"
    assert_never_untagged(j, registry, project.path, plan_id)


def test_a_plan_a_worker_has_claimed_is_not_cancelled_under_it(janitor, registry, project):
    j = live_janitor(janitor, registry, project)
    push_image(registry, project.path, TAGS)
    plan_id = scheduled_plan(j, project.path)
    token = csrf(j)  # the page an operator loaded while the plan was still scheduled
    j.clock.advance(GRACE + 1)
    assert j.store.claim_plan(plan_id, j.clock(), LEASE_SECONDS, "other-worker")  # another worker started it

    response = j.client.post(f"/api/v1/plans/{plan_id}/reject", headers=BEARER)
    assert response.status_code == 409
    body = response.get_json()
    assert body["error"] == "not_cancellable" and "running" in body["message"] and "restore" in body["message"]
    with pytest.raises(ActionRefused) as refused:
        actions.decide_plan(j.store, plan_id, False, "carol", j.clock())
    assert (refused.value.status, refused.value.code) == (409, "not_cancellable")
    form = form_post(j, f"/dashboard/plans/{plan_id}/reject", token, back="scheduled")
    assert form.status_code == 303
    assert f"plan {plan_id} is running and a worker has started it" in dashboard(j)
    assert j.store.get_plan(plan_id).state == "running" and j.store.plan_rejecter(plan_id) is None
    assert {u.outcome for u in j.store.plan_untags(plan_id)} == {"pending"}
    assert sorted(tags(registry, project.path)) == sorted(TAGS)
