"""The dashboard in a real Chromium: an operator approves a held plan, the worker runs it, and the tags
are gone from the real registry; at 1280 and 390 px wide the page never scrolls sideways, every text meets
WCAG AA contrast (4.5:1), buttons name their object, a restore is confirmed before anything is requested,
and auto-refresh is opt-in. Needs Debian's chromium and the playwright package (no browser download:
playwright drives /usr/bin/chromium)."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.images import digest_of, push_image, tags
from support.janitor import ADMIN
from support.ops import APP, live_janitor, merge_mr, ops_projects, seeded
from werkzeug.serving import make_server

from daemon.domain.model import Decision, PlannedUntag, Trigger

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run .ci/run (it installs chromium) or apt-get install -y chromium",
                    pytrace=False)
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[test]'", pytrace=False)
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


def serve(app: object) -> tuple[str, object, threading.Thread]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_port}", server, thread


def test_operator_approves_a_held_plan_and_its_tags_leave_the_registry(tmp_path, janitor, registry, project, browser):
    j = live_janitor(janitor, registry, project, max_tags_per_plan=1)
    repo = project.path
    digest = push_image(registry, repo, ["mr-42", "mr-42-debug", "keep"])
    plan_id = merge_mr(j, repo)
    assert j.store.get_plan(plan_id).state == "held"
    base, server, thread = serve(j.app)
    try:
        context = browser.new_context(http_credentials={"username": "ops", "password": ADMIN},
                                      viewport={"width": 1280, "height": 900}, java_script_enabled=False)
        page = context.new_page()
        page.goto(f"{base}/dashboard")
        held_row = page.locator(f"#held tr[data-plan='{plan_id}']")
        assert held_row.count() == 1
        assert "mr-42-debug" in held_row.inner_text()
        shot = Path(os.environ.get("JANITOR_SCREENSHOT_DIR", tmp_path))
        page.screenshot(path=str(shot / "dashboard-held.png"), full_page=True)

        held_row.get_by_role("button", name="Approve").click()
        page.wait_for_load_state()
        assert page.url.startswith(f"{base}/dashboard")
        assert f"Plan {plan_id} approved" in page.locator(".flash").inner_text()
        assert page.locator(f"#held tr[data-plan='{plan_id}']").count() == 0

        j.tick()
        page.reload()
        assert page.locator(".flash").count() == 0, "a flash message shows once"
        outcomes = {}
        for row in page.locator("#recent tbody tr").all():
            cells = row.locator("td").all_inner_texts()
            outcomes[cells[2]] = row.locator("[data-col=outcome]").inner_text()
        assert outcomes == {f"{repo}:mr-42": "done", f"{repo}:mr-42-debug": "done"}
        assert page.locator(f"tr[data-project='{repo}'] [data-col=untagged]").inner_text() == "2"
        assert page.locator("#recent").get_by_role("link", name=re.compile(r"^Restore untag \d+ ")).count() == 2
        page.screenshot(path=str(shot / "dashboard-after.png"), full_page=True)
        context.close()
    finally:
        server.shutdown()
        thread.join(5)
    assert j.store.get_plan(plan_id).state == "done"
    assert sorted(tags(registry, repo)) == ["keep"]
    assert digest_of(registry, repo, "keep") == digest


def test_a_page_on_another_site_cannot_post_to_the_dashboard(janitor, registry, project, browser):
    """Cross-site form POST carrying the operator's Basic credentials: refused, the plan stays held."""
    j = live_janitor(janitor, registry, project, max_tags_per_plan=1)
    push_image(registry, project.path, ["mr-42", "mr-42-debug"])
    plan_id = merge_mr(j, project.path)
    base, server, thread = serve(j.app)
    other, other_server, other_thread = serve(_Attacker(f"{base}/dashboard/plans/{plan_id}/approve"))
    try:
        context = browser.new_context(http_credentials={"username": "ops", "password": ADMIN})
        page = context.new_page()
        page.goto(f"{base}/dashboard")  # the operator is signed in and holds a CSRF cookie
        page.goto(other.replace("127.0.0.1", "localhost") + "/")
        page.locator("button").click()
        page.wait_for_load_state()
        assert "403" in page.content() or "cross_site" in page.content() or "csrf" in page.content()
        context.close()
    finally:
        for srv, th in ((server, thread), (other_server, other_thread)):
            srv.shutdown()
            th.join(5)
    assert j.store.get_plan(plan_id).state == "held"


class _Attacker:
    """A page on another site whose form posts to the dashboard."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        body = (f"<form method=post action='{self.target}'><input type=hidden name=csrf value=guess>"
                f"<button>win a prize</button></form>").encode()
        start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(body)))])
        return [body]



# layout, contrast, screen-reader names, restore confirmation and auto-refresh, at both widths --------------
WIDTHS = (1280, 390)

#: For each visible element with text of its own: its text colour (``fill`` in SVG) against the colour
#: behind it (the first opaque background up its ancestors, translucent ones blended in), as WCAG 2 computes
#: contrast. Returns how many were checked and those under 4.5:1.
CONTRAST_JS = """() => {
  const parse = (c) => {
    const m = c.match(/rgba?\\(([^)]+)\\)/);
    if (!m) throw new Error('unreadable colour ' + c);
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const over = (top, under) => ({r: top.r * top.a + under.r * (1 - top.a), g: top.g * top.a + under.g * (1 - top.a),
                                 b: top.b * top.a + under.b * (1 - top.a), a: 1});
  const behind = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c.a > 0) { layers.push(c); if (c.a >= 1) break; }
    }
    let colour = {r: 255, g: 255, b: 255, a: 1};
    for (let i = layers.length - 1; i >= 0; i--) colour = over(layers[i], colour);
    return colour;
  };
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const failures = [];
  let checked = 0;
  for (const el of document.querySelectorAll('body *')) {
    if (![...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
    const style = getComputedStyle(el);
    if (!el.getClientRects().length || style.visibility === 'hidden' || style.display === 'none') continue;
    const bg = behind(el);
    let fg = parse(el instanceof SVGElement ? style.fill : style.color);
    if (fg.a < 1) fg = over(fg, bg);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    checked++;
    if (ratio < 4.5) failures.push(`${el.tagName.toLowerCase()}.${el.getAttribute('class') || ''} ` +
      `"${el.textContent.trim().slice(0, 40)}": ${ratio.toFixed(2)} (${style.color} on rgb(${bg.r},${bg.g},${bg.b}))`);
  }
  return {checked, failures};
}"""

NO_SIDEWAYS_JS = "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"


@pytest.fixture
def busy(janitor):
    """The seeded story (held plan, failures, done untags, a dry run, quiet project) with grp/app misconfigured,
    a plan in its grace period and one deferred by the hourly budget."""
    projects = ops_projects()
    projects[0] = {**projects[0], "max_untags_per_hour": 2}
    j = seeded(janitor(projects))
    now = j.clock()
    records = {r.tag: r for r in j.store.records_of_pipeline(APP, 2)}
    for key, state, due in (("b:grace", "scheduled", now + 1800), ("b:budget", "ready", (now // 3600 + 1) * 3600)):
        trigger = Trigger("branch_deleted", APP, key, now, ref="feature/b", pipeline_id=2)
        decisions = [Decision(PlannedUntag(r.id, 2, APP, r.tag, r.digest or ""), "pending") for r in records.values()]
        j.ids[key], _ = j.store.create_plan(trigger, decisions, state=state, due_at=due, now=now)
    j.store.set_project_problem(APP, "no_delete_permission", "the token of grp/app may not untag: give it the "
                                "api scope and the Maintainer role", now)
    return j


def _open_all_details(page) -> None:
    page.evaluate("() => document.querySelectorAll('details').forEach((d) => { d.open = true; })")


def _fits(page, width: int) -> None:
    scroll, client = page.evaluate(NO_SIDEWAYS_JS)
    assert scroll <= client, f"the page scrolls sideways at {width} px: {scroll} > {client}"


@pytest.mark.parametrize("width", WIDTHS)
def test_dashboard_fits_reads_and_names_its_buttons(tmp_path, busy, browser, width):
    base, server, thread = serve(busy.app)
    try:
        context = browser.new_context(http_credentials={"username": "ops", "password": ADMIN},
                                      viewport={"width": width, "height": 900})
        page = context.new_page()
        page.goto(f"{base}/dashboard")
        _open_all_details(page)
        _fits(page, width)
        shot = Path(os.environ.get("JANITOR_SCREENSHOT_DIR", tmp_path))
        page.screenshot(path=str(shot / f"dashboard-{width}.png"), full_page=True)

        contrast = page.evaluate(CONTRAST_JS)
        assert contrast["checked"] > 100
        assert contrast["failures"] == [], "\n".join(contrast["failures"])

        chart = page.locator("#chart svg")
        assert chart.bounding_box()["width"] >= 600, "the chart keeps a legible size (it scrolls in its card)"
        label = page.locator("#chart svg text").first.bounding_box()
        assert label["height"] >= 9, f"chart labels {label['height']:.1f} px tall"

        ids = busy.ids
        held = ids["held_plan"]
        for role, name in (("button", f"Approve plan {held}"), ("button", f"Reject plan {held}"),
                           ("button", f"Reject plan {ids['b:grace']}"), ("button", f"Retry untag {ids['failed']}"),
                           ("link", f"Restore untag {ids['done'][0]} (grp/app:mr-1)")):
            assert page.get_by_role(role, name=name, exact=True).count() == 1, name
        assert page.get_by_role("button", name=f"Reject plan {ids['b:budget']}").count() == 0
        for button in page.get_by_role("button").all():
            assert re.search(r"\d", button.get_attribute("aria-label") or ""), button.inner_text()

        scheduled = page.locator("#scheduled")
        assert "grace until" in scheduled.locator(f"tr[data-scheduled-plan='{ids['b:grace']}']").inner_text()
        assert "hourly budget" in scheduled.locator(f"tr[data-scheduled-plan='{ids['b:budget']}']").inner_text()
        assert "approval" in page.locator(f"#held tr[data-plan='{held}'] [data-col=waits]").inner_text()

        page.goto(f"{base}/dashboard/untags/{ids['done'][0]}/restore")  # the confirmation step reads as well
        _fits(page, width)
        contrast = page.evaluate(CONTRAST_JS)
        assert contrast["failures"] == [], "\n".join(contrast["failures"])
        page.screenshot(path=str(shot / f"restore-{width}.png"), full_page=True)
        context.close()
    finally:
        server.shutdown()
        thread.join(5)


@pytest.mark.parametrize("width", WIDTHS)
def test_restore_asks_first_and_auto_refresh_is_opt_in(busy, browser, width):
    done, other = busy.ids["done"]
    base, server, thread = serve(busy.app)
    try:
        context = browser.new_context(http_credentials={"username": "ops", "password": ADMIN},
                                      viewport={"width": width, "height": 900}, java_script_enabled=False)
        page = context.new_page()
        page.goto(f"{base}/dashboard")
        assert page.locator("meta[http-equiv=refresh]").count() == 0, "auto-refresh is off by default"

        page.get_by_role("link", name=f"Restore untag {other} (grp/app:mr-1-debug)").click()
        page.wait_for_load_state()
        assert page.url == f"{base}/dashboard/untags/{other}/restore"
        assert "grp/app:mr-1-debug" in page.locator("h2").inner_text()
        assert busy.store.recent_requests() == [], "nothing is requested before the operator confirms"
        page.get_by_role("link", name=f"Cancel: do not restore untag {other}").click()
        page.wait_for_load_state()
        assert page.url.startswith(f"{base}/dashboard") and busy.store.recent_requests() == []

        page.get_by_role("link", name=f"Restore untag {done} (grp/app:mr-1)").click()
        page.wait_for_load_state()
        assert page.locator("#confirm-restore").inner_text().count("sha256:" + "1" * 64) == 1
        assert busy.store.recent_requests() == []
        page.get_by_role("button", name=f"Restore untag {done} (grp/app:mr-1) now").click()
        page.wait_for_load_state()
        assert f"Restore of untag {done} requested" in page.locator(".flash[role=status]").inner_text()
        assert [(r.kind, r.untag_id) for r in busy.store.recent_requests()] == [("restore", done)]

        page.get_by_role("link", name="Auto-refresh every 30 s").click()
        page.wait_for_load_state()
        assert page.url == f"{base}/dashboard?refresh=30"
        assert page.locator("meta[http-equiv=refresh]").get_attribute("content") == "30"
        page.get_by_role("link", name="turn off").click()
        page.wait_for_load_state()
        assert page.locator("meta[http-equiv=refresh]").count() == 0
        context.close()
    finally:
        server.shutdown()
        thread.join(5)
