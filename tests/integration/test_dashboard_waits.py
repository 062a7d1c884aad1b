"""The dashboard's pending work says what it waits for (grace until T, approval, hourly budget); a project
configured less than a day ago is not flagged quiet; a restore is confirmed on a page of its own before
anything is requested; auto-refresh is opt-in; buttons name their object for screen readers."""

from __future__ import annotations

import datetime as dt
import html as markup
import re

import pytest
from support.janitor import ADMIN, SECRET
from support.ops import APP, OTHER, ops_projects, seeded

from daemon.domain.model import Decision, PlannedUntag, Trigger

AUTH = ("ops", ADMIN)


def get(janitor, url: str = "/dashboard", status: int = 200) -> str:
    response = janitor.client.get(url, auth=AUTH)
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    return response.get_data(as_text=True)


def tr(html: str, attr: str, value: object) -> str:
    match = re.search(rf'<tr {attr}="{re.escape(str(value))}"[^>]*>(.*?)</tr>', html, re.S)
    assert match, f"no row {attr}={value}"
    return match.group(1)


def waits(row_html: str) -> str:
    match = re.search(r'data-col="waits">(.*?)</', row_html, re.S)
    assert match, row_html
    return " ".join(markup.unescape(match.group(1)).split())


def hhmm(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M UTC")


def add_plan(janitor, key: str, *, state: str, due_at: float) -> int:
    """A plan of grp/app untagging mr-2 (a record the seeded story holds) in ``state``."""
    store, now = janitor.store, janitor.clock()
    record = {r.tag: r for r in store.records_of_pipeline(APP, 2)}["mr-2"]
    trigger = Trigger("branch_deleted", APP, key, now, ref="feature/b", pipeline_id=2)
    untag = PlannedUntag(record.id, 2, APP, "mr-2", record.digest or "")
    plan_id, created = store.create_plan(trigger, [Decision(untag, "pending")], state=state, due_at=due_at, now=now)
    assert created
    return plan_id


def budget_projects(max_untags_per_hour: int) -> list[dict]:
    projects = ops_projects()
    projects[0] = {**projects[0], "max_untags_per_hour": max_untags_per_hour}
    return projects


def test_each_pending_plan_and_untag_says_what_it_waits_for(janitor):
    j = seeded(janitor(budget_projects(5)))  # two untags done in the last hour: budget left
    now = j.clock()
    grace = add_plan(j, "t:grace", state="scheduled", due_at=now + 1800)
    due = add_plan(j, "t:due", state="scheduled", due_at=now - 1)
    html = get(j)
    held = tr(html, "data-plan", j.ids["held_plan"])
    assert waits(held) == "approval"
    assert waits(tr(html, "data-scheduled-plan", grace)) == f"grace until {hhmm(now + 1800)}"
    assert waits(tr(html, "data-scheduled-plan", due)) == "the worker's next tick"
    recent = html.split('id="recent"')[1]
    for untag_id in j.ids["held"]:
        assert waits(tr(recent, "data-untag", untag_id)) == "waits for approval"
    grace_untag = j.store.plan_untags(grace)[0].id
    assert waits(tr(recent, "data-untag", grace_untag)) == f"waits for grace until {hhmm(now + 1800)}"


def test_a_plan_past_its_grace_waits_for_the_hourly_budget_once_it_is_spent(janitor):
    j = seeded(janitor(budget_projects(2)))  # the seeded story did two untags of grp/app in the last hour
    now = j.clock()
    due = add_plan(j, "t:due", state="scheduled", due_at=now - 1)
    grace = add_plan(j, "t:grace", state="scheduled", due_at=now + 600)
    next_hour = (now // 3600 + 1) * 3600
    deferred = add_plan(j, "t:deferred", state="ready", due_at=next_hour)
    html = get(j)
    assert waits(tr(html, "data-scheduled-plan", due)) == f"hourly budget (until {hhmm(next_hour)})"
    assert waits(tr(html, "data-scheduled-plan", grace)) == f"grace until {hhmm(now + 600)}"
    row = tr(html, "data-scheduled-plan", deferred)
    assert waits(row) == f"hourly budget (until {hhmm(next_hour)})"
    assert "/reject" not in row, "a ready plan can no longer be rejected"
    assert f'aria-label="Reject plan {due}"' in tr(html, "data-scheduled-plan", due)
    # an hour after those untags the budget is back
    j.clock.advance(3600)
    assert waits(tr(get(j), "data-scheduled-plan", due)) == "the worker's next tick"


def test_a_project_configured_less_than_a_day_ago_is_not_quiet(janitor):
    j = janitor([{"path": APP, "webhook_secret": SECRET, "dry_run": False,
                  "tags": [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}]}])
    before = get(j)
    assert "quiet &gt; 24h" in tr(before, "data-webhook", APP), "never noted by a worker: old, so quiet"
    j.tick()  # the worker notes when it first ran with each entry configured
    noted = j.clock()
    assert "quiet" not in tr(get(j), "data-webhook", APP)
    status = j.client.get("/api/v1/status", headers={"Authorization": f"Bearer {ADMIN}"}).get_json()
    assert status["projects"][APP]["quiet"] is False
    assert status["projects"][APP]["configured_since"] == dt.datetime.fromtimestamp(
        noted, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    j.tick(advance=86400 - 60)
    assert "quiet" not in tr(get(j), "data-webhook", APP)
    j.tick(advance=61)  # a later tick keeps the first time
    assert "quiet &gt; 24h" in tr(get(j), "data-webhook", APP)


def test_restore_is_confirmed_on_its_own_page_before_anything_is_requested(janitor):
    j = seeded(janitor(ops_projects()))
    untag_id = j.ids["done"][0]
    html = get(j, f"/dashboard/untags/{untag_id}/restore")
    assert "grp/app:mr-1" in html and "sha256:" + "1" * 64 in html
    assert f'action="/dashboard/untags/{untag_id}/restore"' in html
    assert 'href="/dashboard#recent"' in html and ">Cancel<" in html
    assert j.store.recent_requests() == [], "showing the question requests nothing"
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)
    response = j.client.post(f"/dashboard/untags/{untag_id}/restore", data={"csrf": token}, auth=AUTH)
    assert response.status_code == 303 and response.headers["Location"].endswith("/dashboard#recent")
    assert [(r.kind, r.untag_id) for r in j.store.recent_requests()] == [("restore", untag_id)]


@pytest.mark.parametrize(("which", "status", "says"), [
    ("skipped", 409, "was not carried out"), ("missing", 404, "there is no untag 999999")])
def test_the_restore_page_says_why_an_untag_cannot_be_restored(janitor, which, status, says):
    j = seeded(janitor(ops_projects()))
    untag_id = j.ids["skipped"] if which == "skipped" else 999999
    html = get(j, f"/dashboard/untags/{untag_id}/restore", status)
    assert says in html and "<form" not in html
    assert "/dashboard#recent" in html


def test_restore_page_without_a_csrf_cookie_sets_one_that_its_form_matches(janitor):
    j = seeded(janitor(ops_projects()))
    response = j.client.get(f"/dashboard/untags/{j.ids['done'][1]}/restore", auth=AUTH)
    assert "janitor_csrf=" in response.headers["Set-Cookie"]
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', response.get_data(as_text=True)).group(1)
    posted = j.client.post(f"/dashboard/untags/{j.ids['done'][1]}/restore", data={"csrf": token}, auth=AUTH)
    assert posted.status_code == 303


@pytest.mark.parametrize(("query", "meta"), [
    ("", None), ("?refresh=30", "30"), ("?refresh=3600", "3600"), ("?refresh=5", None), ("?refresh=abc", None),
    ("?refresh=-30", None), ("?refresh=99999999999", None), ("?refresh=30.5", None)])
def test_auto_refresh_is_opt_in_and_only_for_sane_periods(janitor, query, meta):
    j = seeded(janitor(ops_projects()))
    html = get(j, "/dashboard" + query)
    found = re.findall(r'<meta http-equiv="refresh" content="([^"]*)">', html)
    assert found == ([] if meta is None else [meta])
    toggle = re.search(r'<a href="([^"]*)" id="refresh-toggle">([^<]*)</a>', html)
    assert toggle, "the toggle link is always there"
    if meta is None:
        assert toggle.groups() == ("/dashboard?refresh=30", "Auto-refresh every 30 s")
    else:
        assert toggle.groups() == ("/dashboard", "turn off")


def test_buttons_name_their_object_for_screen_readers(janitor):
    j = seeded(janitor(ops_projects()))
    html = get(j)
    plan_id, failed = j.ids["held_plan"], j.ids["failed"]
    held = tr(html, "data-plan", plan_id)
    assert f'aria-label="Approve plan {plan_id}">Approve</button>' in held
    assert f'aria-label="Reject plan {plan_id}">Reject</button>' in held
    failures = html.split('id="failures"')[1]
    assert f'aria-label="Retry untag {failed}">Retry</button>' in tr(failures, "data-untag", failed)
    done = j.ids["done"][0]
    assert (f'aria-label="Restore untag {done} (grp/app:mr-1)">Restore</a>'
            in tr(html.split('id="recent"')[1], "data-untag", done))
    buttons = re.findall(r"<button[^>]*>", html)
    assert buttons and all("aria-label=" in b for b in buttons)
    assert OTHER in html
