"""``/dashboard``: the operators' page, server-rendered (Jinja, inline CSS and SVG, no JavaScript needed).

Behind the admin token (HTTP Basic, any user name, or Bearer). Its buttons are HTML forms that POST to
the routes below and do what the admin API does (``daemon.web.api``'s actions), then redirect back
(303) with a flash message. Forms carry a CSRF token: an HMAC, keyed by the admin token, of a random
nonce kept in a SameSite=Strict cookie; a POST whose token does not match, or that a browser marks as
cross-site, is refused. A restore is asked on a page of its own first (``GET`` of the restore route: what
goes back, with the real button), so that no click on the main page alone puts a tag back. Each pending
plan says what it waits for (``daemon.ops.status.plan_waits``). ``?refresh=30`` reloads the page every 30
seconds (an HTML meta refresh; off unless asked for). Must not: call the registry (restores and retries are
requests for the worker).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, make_response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from itsdangerous import BadSignature, URLSafeSerializer

from daemon.ops import actions
from daemon.ops.actions import ActionRefused, why_not_restorable
from daemon.ops.status import HOOK_KINDS, ago, human_bytes, iso, plan_waits, status_snapshot
from daemon.web.auth import admin_name, admin_required, admin_token
from daemon.web.context import now, settings, store
from daemon.web.errors import json_error

bp = Blueprint("dashboard", __name__, template_folder="templates")
CSRF_COOKIE = "janitor_csrf"
FLASH_COOKIE = "janitor_flash"
CHART_DAYS = 30
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
#: Seconds between reloads an operator may ask for with ``?refresh=``; the link offers ``REFRESH_DEFAULT``.
REFRESH_RANGE = (10, 3600)
REFRESH_DEFAULT = 30
_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")


# CSRF and flash -----------------------------------------------------------------------------------------
def csrf_token(nonce: str) -> str:
    key = (admin_token() or "").encode()
    return hmac.new(key, f"csrf:{nonce}".encode(), hashlib.sha256).hexdigest()


def _csrf_refusal() -> ResponseReturnValue | None:
    """None when this POST comes from our own page; else a 403 saying why."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return json_error(403, "cross_site", "dashboard actions are only accepted from the dashboard itself")
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/") != request.host_url.rstrip("/"):
        return json_error(403, "cross_site", f"a form from {origin} cannot act on this dashboard")
    nonce = request.cookies.get(CSRF_COOKIE, "")
    given = request.form.get("csrf", "")
    if not _NONCE.match(nonce) or not hmac.compare_digest(given.encode(), csrf_token(nonce).encode()):
        return json_error(403, "csrf_token_invalid",
                          "the form's security token is missing or stale; reload the dashboard and try again")
    return None


def _flasher() -> URLSafeSerializer:
    return URLSafeSerializer(admin_token() or "", salt="registry-janitor-flash")


def _back(message: str, kind: str, anchor: str) -> ResponseReturnValue:
    response = redirect(url_for("dashboard.page") + f"#{anchor}", code=303)
    response.set_cookie(FLASH_COOKIE, str(_flasher().dumps({"m": message, "k": kind})), max_age=60,
                        httponly=True, samesite="Strict", path="/dashboard", secure=request.is_secure)
    return response


def _read_flash() -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        data = _flasher().loads(raw)
    except BadSignature:
        return None
    return {"message": str(data.get("m", "")), "kind": str(data.get("k", "info"))}


# the chart ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    series: str
    title: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    plot_top: int
    plot_bottom: int
    plot_left: int
    bars: list[Bar]
    x_labels: list[tuple[float, str]]
    y_ticks: list[tuple[float, int]]
    days: list[tuple[str, int, int]]
    has_data: bool


def _nice_max(value: int) -> int:
    if value <= 4:
        return 4
    magnitude = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 2.5, 5, 10):
        top = int(step * magnitude)
        if top >= value and top % 4 == 0:
            return top
    return ((value + 3) // 4) * 4


def build_chart(daily: list[tuple[str, int, int]], today: dt.date, days: int = CHART_DAYS) -> Chart:
    """Grouped bars, created vs untagged, for each of the last ``days`` UTC days (missing days are 0)."""
    by_day = {d: (c, u) for d, c, u in daily}
    series = []
    for offset in range(days - 1, -1, -1):
        day = (today - dt.timedelta(days=offset)).isoformat()
        created, untagged = by_day.get(day, (0, 0))
        series.append((day, created, untagged))
    width, height, left, right, top, bottom = 760, 230, 44, 12, 14, 196
    top_value = _nice_max(max([1, *(c for _, c, _ in series), *(u for _, _, u in series)]))
    slot = (width - left - right) / days
    bar_w = max(2.0, slot * 0.36)
    bars: list[Bar] = []
    labels: list[tuple[float, str]] = []
    for i, (day, created, untagged) in enumerate(series):
        x0 = left + i * slot + (slot - 2 * bar_w) / 2
        for j, (name, value) in enumerate((("created", created), ("untagged", untagged))):
            h = (bottom - top) * value / top_value
            bars.append(Bar(round(x0 + j * bar_w, 2), round(bottom - h, 2), round(h, 2), name,
                            f"{day}: {value} {name}"))
        if i % 5 == (days - 1) % 5:
            labels.append((round(left + i * slot + slot / 2, 2), day[5:]))
    ticks = [(round(bottom - (bottom - top) * k / 4, 2), top_value * k // 4) for k in range(5)]
    return Chart(width, height, top, bottom, left, bars, labels, ticks, series,
                 any(c or u for _, c, u in series))


# the page -----------------------------------------------------------------------------------------------
def _webhook_rows(snapshot: dict[str, Any], current: float) -> list[dict[str, Any]]:
    rows = []
    for name, p in snapshot["projects"].items():
        if not p["configured"] and not p["last_events"]:
            continue
        cells = []
        for kind in HOOK_KINDS:
            at = p["last_events"].get(kind)
            seconds = None if at is None else current - _ts(at)
            cells.append({"kind": kind, "ago": ago(seconds), "at": at, "seen": at is not None})
        rows.append({"project": name, "cells": cells, "quiet": p["quiet"], "configured": p["configured"],
                     "last": p["last_event_at"]})
    return rows


IGNORED_MEANING = {
    "unconfigured_project": "names a project no entry configures (group or system hooks, a renamed or"
                            " transferred project, the Test button's sample)",
    "unused_kind": "an event of a kind the janitor does not use",
}


def _ignored_rows(snapshot: dict[str, Any], current: float) -> list[dict[str, Any]]:
    """Authentic deliveries answered 200 ignored, per reason, with the last one."""
    rows = []
    for reason, row in snapshot["ignored_deliveries"].items():
        at = row["last_at"]
        rows.append({"reason": reason, "meaning": IGNORED_MEANING.get(reason, ""), "count": row["count"],
                     "ago": ago(None if at is None else current - _ts(at)), "at": at,
                     "project": row["last_project"], "kind": row["last_kind"]})
    return rows


def _ts(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def _refresh_seconds() -> int | None:
    """The reload period the operator asked for (``?refresh=30``), or None: off, also for any value that
    is not a whole number of seconds in ``REFRESH_RANGE``."""
    raw = request.args.get("refresh", "")
    if not raw.isdigit() or len(raw) > 5:
        return None
    seconds = int(raw)
    return seconds if REFRESH_RANGE[0] <= seconds <= REFRESH_RANGE[1] else None


def _nonce() -> tuple[str, bool]:
    """This browser's CSRF nonce (from its cookie), or a new one; and whether it is new."""
    nonce = request.cookies.get(CSRF_COOKIE, "")
    if _NONCE.match(nonce):
        return nonce, False
    return secrets.token_urlsafe(24), True


def _html(html: str, nonce: str, fresh_nonce: bool, status: int = 200) -> Response:
    response = make_response(html, status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if fresh_nonce:
        response.set_cookie(CSRF_COOKIE, nonce, httponly=True, samesite="Strict", path="/dashboard",
                            secure=request.is_secure)
    return response


@bp.get("/dashboard")
@admin_required
def page() -> ResponseReturnValue:
    current = now()
    s = store()
    snapshot = status_snapshot(settings(), s, current)
    held = s.plan_page(state="held", limit=50)
    # plans waiting for their grace period or the hourly budget, soonest first: an operator may still reject
    # a scheduled one (a ready one was approved, or has started)
    scheduled = sorted([*s.plan_page(state="scheduled", limit=50), *s.plan_page(state="ready", limit=50)],
                       key=lambda p: (p.due_at, p.id))
    held_untags = {p.id: s.untag_views(plan_id=p.id, limit=8) for p in (*held, *scheduled)}
    failures = s.untag_views(outcome="failed", limit=50)
    recent = s.untag_views(limit=50)
    requests = s.latest_requests([v.untag.id for v in (*failures, *recent)])
    plans = {p.id: p for p in (*held, *scheduled)}
    for plan_id in {v.untag.plan_id for v in recent if v.untag.outcome == "pending"} - set(plans):
        found = s.get_plan(plan_id)
        if found is not None:
            plans[plan_id] = found
    today = dt.datetime.fromtimestamp(current, dt.UTC).date()
    since = dt.datetime.combine(today - dt.timedelta(days=CHART_DAYS - 1), dt.time(), dt.UTC).timestamp()
    chart = build_chart(s.daily_created_untagged(since), today)
    nonce, fresh_nonce = _nonce()
    html = render_template(
        "dashboard.html", snap=snapshot, held=held, scheduled=scheduled, held_untags=held_untags, failures=failures,
        recent=recent, requests=requests, operator_requests=s.recent_requests(10), chart=chart,
        waits=plan_waits(settings(), s, list(plans.values()), current),
        webhooks=_webhook_rows(snapshot, current), ignored=_ignored_rows(snapshot, current),
        hook_kinds=HOOK_KINDS, csrf=csrf_token(nonce), refresh=_refresh_seconds(), refresh_default=REFRESH_DEFAULT,
        flash=_read_flash(), now=current, iso=iso, ago=ago, human_bytes=human_bytes, who=admin_name())
    response = _html(html, nonce, fresh_nonce)
    if request.cookies.get(FLASH_COOKIE):
        response.delete_cookie(FLASH_COOKIE, path="/dashboard")
    return response


def _act(anchor: str, action: Callable[[], object], done: str) -> ResponseReturnValue:
    refused = _csrf_refusal()
    if refused is not None:
        return refused
    try:
        action()
    except ActionRefused as exc:
        return _back(exc.message, "error", anchor)
    return _back(done, "ok", anchor)


@bp.post("/dashboard/plans/<int:plan_id>/approve")
@admin_required
def approve(plan_id: int) -> ResponseReturnValue:
    return _act("held", lambda: actions.decide_plan(store(), plan_id, True, admin_name(), now()),
                f"Plan {plan_id} approved: it runs on the worker's next tick.")


@bp.post("/dashboard/plans/<int:plan_id>/reject")
@admin_required
def reject(plan_id: int) -> ResponseReturnValue:
    anchor = "scheduled" if request.form.get("back") == "scheduled" else "held"
    return _act(anchor, lambda: actions.decide_plan(store(), plan_id, False, admin_name(), now()),
                f"Plan {plan_id} rejected: none of its tags will be untagged.")


@bp.get("/dashboard/untags/<int:untag_id>/restore")
@admin_required
def confirm_restore(untag_id: int) -> ResponseReturnValue:
    """The step before a restore: what would be put back, with the button that asks for it and a way back.
    Nothing is requested here."""
    view = store().untag_view(untag_id)
    nonce, fresh_nonce = _nonce()
    refused: tuple[str, str] | None = ("not_found", f"there is no untag {untag_id}") if view is None else None
    if view is not None:
        refused = why_not_restorable(view)
    status = 200 if refused is None else 404 if view is None else 409
    html = render_template("confirm_restore.html", view=view, untag_id=untag_id, refused=refused,
                           csrf=csrf_token(nonce), iso=iso, now=now(), ago=ago, human_bytes=human_bytes,
                           who=admin_name())
    return _html(html, nonce, fresh_nonce, status)


@bp.post("/dashboard/untags/<int:untag_id>/restore")
@admin_required
def restore(untag_id: int) -> ResponseReturnValue:
    return _act("recent", lambda: actions.ask_restore(store(), untag_id, admin_name(), now()),
                f"Restore of untag {untag_id} requested: the worker puts the tag back on its next tick.")


@bp.post("/dashboard/untags/<int:untag_id>/retry")
@admin_required
def retry(untag_id: int) -> ResponseReturnValue:
    return _act("failures", lambda: actions.ask_retry(store(), untag_id, admin_name(), now()),
                f"Retry of untag {untag_id} requested: it runs on the worker's next tick.")
