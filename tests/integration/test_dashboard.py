"""The dashboard's HTML: the numbers from storage, forms with CSRF tokens, POSTs refused without a valid
token or from another site, and each button doing what the API does (then 303 back with a message)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from support.janitor import ADMIN
from support.ops import APP, OTHER

from daemon.web.dashboard import CSRF_COOKIE, build_chart

AUTH = ("ops", ADMIN)


def page(janitor) -> str:
    response = janitor.client.get("/dashboard", auth=AUTH)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def row(html: str, attr: str, value: object) -> str:
    match = re.search(rf'<tr {attr}="{re.escape(str(value))}">(.*?)</tr>', html, re.S)
    assert match, f"no row {attr}={value}"
    return match.group(1)


def cell(html: str, col: str) -> str:
    match = re.search(rf'data-col="{col}">(.*?)<', html, re.S)
    assert match, col
    return match.group(1).strip()


def csrf_of(html: str) -> str:
    tokens = set(re.findall(r'name="csrf" value="([0-9a-f]+)"', html))
    assert len(tokens) == 1, tokens
    return tokens.pop()


def test_dashboard_needs_the_admin_token_by_basic_or_bearer(seeded_janitor):
    refused = seeded_janitor.client.get("/dashboard")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    assert seeded_janitor.client.get("/dashboard", auth=("ops", "wrong")).status_code == 401
    assert seeded_janitor.client.get("/dashboard", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200


def test_projects_show_created_untagged_ratio_bytes_and_dry_run(seeded_janitor):
    html = page(seeded_janitor)
    app = row(html, "data-project", APP)
    assert cell(app, "created") == "4" and cell(app, "untagged") == "2"
    assert re.search(r"data-col=\"ratio\"><div class=\"ratio\"><span>50.0%</span>", app)
    assert cell(app, "bytes") == "3.0 KiB"  # 1000 + 2000 + 100 bytes, the shared layer once
    assert ">live<" in app
    other = row(html, "data-project", OTHER)
    assert "dry-run" in other and cell(other, "untagged") == "0"
    assert 'id="total-created">6<' in html and 'id="total-ratio">33.3%<' in html


def test_held_plans_failures_and_recent_untags_carry_their_forms(seeded_janitor):
    html = page(seeded_janitor)
    held = row(html, "data-plan", seeded_janitor.ids["held_plan"])
    assert f'action="/dashboard/plans/{seeded_janitor.ids["held_plan"]}/approve"' in held
    assert f'action="/dashboard/plans/{seeded_janitor.ids["held_plan"]}/reject"' in held
    assert "grp/app:mr-2-debug" in held
    failure = row(html.split('id="failures"')[1], "data-untag", seeded_janitor.ids["failed"])
    assert "HTTP 503 after 5 attempts" in failure
    assert f'/dashboard/untags/{seeded_janitor.ids["failed"]}/retry' in failure
    recent = html.split('id="recent"')[1]
    for untag_id in seeded_janitor.ids["done"]:  # a restore is confirmed on a page of its own first
        assert f'href="/dashboard/untags/{untag_id}/restore"' in row(recent, "data-untag", untag_id)
    assert "/restore" not in row(recent, "data-untag", seeded_janitor.ids["skipped"])
    assert "superseded" in row(recent, "data-untag", seeded_janitor.ids["skipped"])
    forms = re.findall(r"<form[^>]*method=\"post\"[^>]*>(.*?)</form>", html, re.S)
    assert len(forms) == 2 + 1  # approve/reject, retry
    assert all('name="csrf"' in form for form in forms)
    csrf_of(html)


def test_webhook_health_flags_quiet_projects(seeded_janitor):
    html = page(seeded_janitor)
    assert "quiet &gt; 24h" in row(html, "data-webhook", OTHER)
    app = row(html, "data-webhook", APP)
    assert "quiet" not in app and "1m ago" in app and "never" in app


def test_chart_is_inline_svg_with_both_series(seeded_janitor):
    html = page(seeded_janitor)
    svg = html.split("<svg", 1)[1].split("</svg>", 1)[0]
    day = dt.datetime.fromtimestamp(seeded_janitor.clock(), dt.UTC).date().isoformat()
    assert f"<title>{day}: 6 created</title>" in svg
    assert f"<title>{day}: 2 untagged</title>" in svg
    assert svg.count('class="created"') == 30 and svg.count('class="untagged"') == 30
    assert "<script" not in html


def test_chart_scale_and_missing_days():
    today = dt.date(2026, 11, 28)
    chart = build_chart([("2026-11-27", 10, 3)], today, days=7)
    assert chart.days[0][0] == "2026-11-22" and chart.days[-2] == ("2026-11-27", 10, 3)
    assert chart.y_ticks[-1][1] >= 10
    tallest = max(chart.bars, key=lambda b: b.height)
    assert tallest.title == "2026-11-27: 10 created" and tallest.y >= chart.plot_top
    assert not build_chart([], today).has_data


def _post(janitor, url, *, token=None, cookie=True, **headers):
    html = page(janitor)
    if not cookie:
        janitor.client.delete_cookie(CSRF_COOKIE, path="/dashboard")
    data = {"csrf": csrf_of(html) if token is None else token}
    return janitor.client.post(url, data=data, auth=AUTH, headers=headers)


def test_approve_from_the_page_redirects_back_with_a_message(seeded_janitor):
    plan_id = seeded_janitor.ids["held_plan"]
    response = _post(seeded_janitor, f"/dashboard/plans/{plan_id}/approve")
    assert response.status_code == 303 and response.headers["Location"].endswith("/dashboard#held")
    assert seeded_janitor.store.get_plan(plan_id).state == "ready"
    assert seeded_janitor.store.plan_approver(plan_id) == "ops"
    html = page(seeded_janitor)
    assert f"Plan {plan_id} approved" in html
    assert f"Plan {plan_id} approved" not in page(seeded_janitor), "the message shows once"
    again = _post(seeded_janitor, f"/dashboard/plans/{plan_id}/approve")
    assert again.status_code == 303
    assert "not held" in page(seeded_janitor)


def test_reject_restore_and_retry_from_the_page(seeded_janitor):
    assert _post(seeded_janitor, f"/dashboard/plans/{seeded_janitor.ids['held_plan']}/reject").status_code == 303
    assert seeded_janitor.store.get_plan(seeded_janitor.ids["held_plan"]).state == "cancelled"
    untag_id = seeded_janitor.ids["done"][0]
    assert _post(seeded_janitor, f"/dashboard/untags/{untag_id}/restore").status_code == 303
    assert "restore pending" in row(page(seeded_janitor).split('id="recent"')[1], "data-untag", untag_id)
    assert _post(seeded_janitor, f"/dashboard/untags/{seeded_janitor.ids['failed']}/retry").status_code == 303
    kinds = sorted(r.kind for r in seeded_janitor.store.recent_requests())
    assert kinds == ["restore", "retry"]


@pytest.mark.parametrize("case", ["no token", "wrong token", "no cookie", "cross-site fetch", "foreign origin"])
def test_posts_without_a_valid_token_or_from_another_site_are_refused(seeded_janitor, case):
    plan_id = seeded_janitor.ids["held_plan"]
    url = f"/dashboard/plans/{plan_id}/approve"
    if case == "no token":
        response = _post(seeded_janitor, url, token="")
    elif case == "wrong token":
        response = _post(seeded_janitor, url, token="0" * 64)
    elif case == "no cookie":
        response = _post(seeded_janitor, url, cookie=False)
    elif case == "cross-site fetch":
        response = _post(seeded_janitor, url, **{"Sec-Fetch-Site": "cross-site"})
    else:
        response = _post(seeded_janitor, url, Origin="https://evil.example")
    assert response.status_code == 403
    assert set(response.get_json()) == {"error", "message"}
    assert seeded_janitor.store.get_plan(plan_id).state == "held"


def test_a_token_is_bound_to_its_cookie(seeded_janitor, tmp_path):
    """A token seen by one browser (or an attacker's own session) is useless with another's cookie."""
    token = csrf_of(page(seeded_janitor))
    seeded_janitor.client.delete_cookie(CSRF_COOKIE, path="/dashboard")
    page(seeded_janitor)  # a fresh nonce
    response = seeded_janitor.client.post(f"/dashboard/plans/{seeded_janitor.ids['held_plan']}/approve",
                                          data={"csrf": token}, auth=AUTH)
    assert response.status_code == 403


def test_csrf_cookie_is_strict_and_http_only(seeded_janitor):
    response = seeded_janitor.client.get("/dashboard", auth=AUTH)
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{CSRF_COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"


def test_dashboard_posts_need_the_admin_token_too(seeded_janitor):
    token = csrf_of(page(seeded_janitor))
    response = seeded_janitor.client.post(f"/dashboard/plans/{seeded_janitor.ids['held_plan']}/approve",
                                          data={"csrf": token})
    assert response.status_code == 401
