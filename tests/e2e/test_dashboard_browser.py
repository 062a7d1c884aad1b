"""The dashboard in a real Chromium: an operator approves a held plan, the worker runs it, and the tags
are gone from the real registry. Needs Debian's chromium and the playwright package (no browser
download: playwright drives /usr/bin/chromium)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.images import digest_of, push_image, tags
from support.janitor import ADMIN
from support.ops import live_janitor, merge_mr
from werkzeug.serving import make_server

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
        assert page.locator("#recent").get_by_role("button", name="Restore").count() == 2
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

