"""The admin API (``/api/v1/status``, ``plans``, ``untags``, ``requests``, ``reconcile``), behind the admin
token.

Reads come from storage; the only writes are decisions on held plans (a reject also cancels a scheduled
one), operator requests (restore, retry) that the worker carries out on its next tick, and reconcile
requests a worker runs with the daemon's settings: this process never calls the registry or GitLab for
them. The actions are ``daemon.ops.actions``, shared with the dashboard's forms and the CLI.
Lists are newest first, paged with ``limit`` and ``offset`` or with the ``next_cursor`` of the page before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from daemon.domain.events import MAX_ID
from daemon.domain.model import OUTCOMES, PLAN_STATES
from daemon.ops import actions
from daemon.ops.actions import ActionRefused
from daemon.ops.status import (
    parse_since,
    plan_json,
    reconcile_request_json,
    request_json,
    status_snapshot,
    untag_json,
)
from daemon.store import OperatorRequest, UntagView
from daemon.web.auth import admin_name, admin_required
from daemon.web.bodies import BadJson, load_json
from daemon.web.context import now, settings, store
from daemon.web.errors import json_error

bp = Blueprint("api", __name__)
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class BadQuery(ValueError):
    pass


# query parsing ----------------------------------------------------------------------------------------
def _page_args(args: Mapping[str, str]) -> tuple[int, int, int | None]:
    try:
        limit = int(args.get("limit", DEFAULT_LIMIT))
        offset = int(args.get("offset", 0))
        cursor = args.get("cursor")
        before = int(cursor) if cursor else None
    except ValueError:
        raise BadQuery("limit, offset and cursor are whole numbers (cursor: the next_cursor of a "
                       "previous page)") from None
    if (not 1 <= limit <= MAX_LIMIT or not 0 <= offset <= MAX_ID
            or (before is not None and not 1 <= before <= MAX_ID)):
        raise BadQuery(f"limit is 1..{MAX_LIMIT}, offset 0..{MAX_ID}, cursor a next_cursor")
    return limit, offset, before


def _choice(args: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = args.get(name) or None
    if value is not None and value not in allowed:
        raise BadQuery(f"{name} is one of {', '.join(allowed)}")
    return value


def _refused(exc: ActionRefused) -> ResponseReturnValue:
    return json_error(exc.status, exc.code, exc.message)


def _bad(exc: BadQuery) -> ResponseReturnValue:
    return json_error(400, "bad_query", str(exc))


def _requests_of(views: list[UntagView]) -> dict[tuple[int, str], OperatorRequest]:
    return store().latest_requests(v.untag.id for v in views)


def _accepted(req: OperatorRequest, created: bool) -> ResponseReturnValue:
    response = jsonify({"request": request_json(req), "created": created,
                        "message": f"{req.kind} of untag {req.untag_id} is recorded; the worker carries it "
                                   f"out on its next tick (poll {url_for('api.get_request', request_id=req.id)})"})
    response.status_code = 202
    response.headers["Location"] = url_for("api.get_request", request_id=req.id)
    return response


# routes -----------------------------------------------------------------------------------------------
@bp.get("/api/v1/status")
@admin_required
def status() -> ResponseReturnValue:
    return jsonify(status_snapshot(settings(), store(), now()))


@bp.get("/api/v1/plans")
@admin_required
def list_plans() -> ResponseReturnValue:
    try:
        limit, offset, before = _page_args(request.args)
        state = _choice(request.args, "state", PLAN_STATES)
    except BadQuery as exc:
        return _bad(exc)
    plans = store().plan_page(state=state, project_path=request.args.get("project") or None,
                              before_id=before, limit=limit + 1, offset=offset)
    page = plans[:limit]
    more = len(plans) > limit
    return jsonify({"plans": [plan_json(p) for p in page], "limit": limit, "offset": offset,
                    "next_cursor": str(page[-1].id) if more else None})


@bp.get("/api/v1/plans/<int:plan_id>")
@admin_required
def get_plan(plan_id: int) -> ResponseReturnValue:
    plan = store().get_plan(plan_id)
    if plan is None:
        return json_error(404, "not_found", f"there is no plan {plan_id}")
    views = store().untag_views(plan_id=plan_id, limit=100_000)
    requests = _requests_of(views)
    return jsonify({**plan_json(plan), "approved_by": store().plan_approver(plan_id),
                    "rejected_by": store().plan_rejecter(plan_id),
                    "untags": [untag_json(v, requests) for v in reversed(views)]})


@bp.post("/api/v1/plans/<int:plan_id>/approve")
@admin_required
def approve(plan_id: int) -> ResponseReturnValue:
    try:
        return jsonify(plan_json(actions.decide_plan(store(), plan_id, True, admin_name(), now())))
    except ActionRefused as exc:
        return _refused(exc)


@bp.post("/api/v1/plans/<int:plan_id>/reject")
@admin_required
def reject(plan_id: int) -> ResponseReturnValue:
    try:
        return jsonify(plan_json(actions.decide_plan(store(), plan_id, False, admin_name(), now())))
    except ActionRefused as exc:
        return _refused(exc)


@bp.get("/api/v1/untags")
@admin_required
def list_untags() -> ResponseReturnValue:
    try:
        limit, offset, before = _page_args(request.args)
        outcome = _choice(request.args, "outcome", OUTCOMES)
        since_text = request.args.get("since")
        try:
            since = parse_since(since_text, now()) if since_text else None
        except ValueError as exc:
            raise BadQuery(f"since: {exc}") from None
    except BadQuery as exc:
        return _bad(exc)
    views = store().untag_views(project_path=request.args.get("project") or None, outcome=outcome,
                                since=since, before_id=before, limit=limit + 1, offset=offset)
    page = views[:limit]
    requests = _requests_of(page)
    return jsonify({"untags": [untag_json(v, requests) for v in page], "limit": limit, "offset": offset,
                    "next_cursor": str(page[-1].untag.id) if len(views) > limit else None})


@bp.get("/api/v1/untags/<int:untag_id>")
@admin_required
def get_untag(untag_id: int) -> ResponseReturnValue:
    view = store().untag_view(untag_id)
    if view is None:
        return json_error(404, "not_found", f"there is no untag {untag_id}")
    return jsonify(untag_json(view, _requests_of([view])))


@bp.post("/api/v1/untags/<int:untag_id>/restore")
@admin_required
def restore(untag_id: int) -> ResponseReturnValue:
    try:
        return _accepted(*actions.ask_restore(store(), untag_id, admin_name(), now()))
    except ActionRefused as exc:
        return _refused(exc)


@bp.post("/api/v1/untags/<int:untag_id>/retry")
@admin_required
def retry(untag_id: int) -> ResponseReturnValue:
    try:
        return _accepted(*actions.ask_retry(store(), untag_id, admin_name(), now()))
    except ActionRefused as exc:
        return _refused(exc)


def _reconcile_project(data: bytes) -> str | None:
    """The project a reconcile request names: an empty body or ``{}`` for every project, else exactly
    ``{"project": "group/app"}`` (a string, or null for every project)."""
    if not data.strip():
        return None
    body = load_json(data)
    if not isinstance(body, dict):
        raise BadJson('the body is a JSON object: {"project": "group/app"}, or {} for every project')
    unknown = sorted(str(k)[:40] for k in body if k != "project")
    if unknown:
        raise BadJson(f"unknown field(s) {', '.join(unknown)}; the body has only \"project\"")
    project = body.get("project")
    if project is not None and (not isinstance(project, str) or not project.strip()):
        raise BadJson('"project" is a project path (group/app), or null for every project')
    return project


@bp.post("/api/v1/reconcile")
@admin_required
def ask_reconcile() -> ResponseReturnValue:
    try:
        project = _reconcile_project(request.get_data())
        req, created = actions.ask_reconcile(settings(), store(), project, admin_name(), now())
    except BadJson as exc:
        return json_error(400, "bad_body", str(exc))
    except ActionRefused as exc:
        return _refused(exc)
    where = url_for("api.get_reconcile", request_id=req.id)
    response = jsonify({"request": reconcile_request_json(req, store()), "created": created,
                        "message": f"a catch-up of {req.project_path or 'every project'} is recorded; a worker "
                                   f"runs it with the daemon's settings (poll {where})"})
    response.status_code = 202
    response.headers["Location"] = where
    return response


@bp.get("/api/v1/reconcile/<int:request_id>")
@admin_required
def get_reconcile(request_id: int) -> ResponseReturnValue:
    req = store().get_reconcile_request(request_id)
    if req is None:
        return json_error(404, "not_found", f"there is no reconcile request {request_id}")
    return jsonify({"request": reconcile_request_json(req, store())})


@bp.get("/api/v1/requests/<int:request_id>")
@admin_required
def get_request(request_id: int) -> ResponseReturnValue:
    req = store().get_request(request_id)
    if req is None:
        return json_error(404, "not_found", f"there is no operator request {request_id}")
    body: dict[str, Any] = {"request": request_json(req)}
    view = store().untag_view(req.untag_id)
    if view is not None:
        body["untag"] = untag_json(view, _requests_of([view]))
    return jsonify(body)
