"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 document of every route the app serves (no auth).

Written by hand next to the routes it describes; ``tests/test_openapi.py`` fails when a route of the
app is missing here, and validates the document. Must not: describe anything the app does not serve.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from daemon.domain import model
from daemon.domain.events import MAX_ID

bp = Blueprint("openapi", __name__)

JSON = "application/json"
ADMIN: list[dict[str, list[str]]] = [{"adminBearer": []}, {"adminBasic": []}]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _id(name: str, what: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": what,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


ADMIN_ERRORS = {
    "401": {**_error("no or wrong admin token"),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"},
                                             "description": 'Basic realm="registry-janitor"'}}},
    "503": _error("server.admin_token is not configured"),
}
PAGING = [
    _query("limit", "items per page (default 50)", {"type": "integer", "minimum": 1, "maximum": 500}),
    _query("offset", "items to skip", {"type": "integer", "minimum": 0, "maximum": MAX_ID}),
    _query("cursor", "the next_cursor of the previous page (newest first)", {"type": "string"}),
]
PLAN_STATES = list(model.PLAN_STATES)
OUTCOMES = list(model.OUTCOMES)
STR_OR_NULL = {"type": ["string", "null"]}
ID_OUT_OF_RANGE = f"an id beyond {MAX_ID}, which no stored row has"
TIME = {"type": ["string", "null"], "format": "date-time"}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error", "message"],
              "properties": {"error": {"type": "string", "description": "machine-readable code"},
                             "message": {"type": "string", "description": "what failed and what to do"}}},
    "Plan": {"type": "object", "required": ["id", "project", "trigger", "state"], "properties": {
        "id": {"type": "integer"}, "project": {"type": "string"}, "trigger": {"type": "string"},
        "trigger_key": {"type": "string"}, "state": {"type": "string", "enum": PLAN_STATES},
        "untag_count": {"type": "integer"}, "note": STR_OR_NULL, "created_at": TIME, "due_at": TIME}},
    "PlanDetail": {"allOf": [_ref("Plan"), {"type": "object", "properties": {
        "approved_by": STR_OR_NULL, "rejected_by": STR_OR_NULL,
        "untags": {"type": "array", "items": _ref("Untag")}}}]},
    "PlanPage": {"type": "object", "required": ["plans", "next_cursor"], "properties": {
        "plans": {"type": "array", "items": _ref("Plan")}, "limit": {"type": "integer"},
        "offset": {"type": "integer"}, "next_cursor": STR_OR_NULL}},
    "OperatorRequest": {"type": "object", "required": ["id", "kind", "untag_id", "state"], "properties": {
        "id": {"type": "integer"}, "kind": {"type": "string", "enum": ["restore", "retry"]},
        "untag_id": {"type": "integer"},
        "state": {"type": "string", "enum": ["pending", "running", "done", "failed"]},
        "reason": STR_OR_NULL, "requested_by": {"type": "string"}, "requested_at": TIME,
        "finished_at": TIME}},
    "Untag": {"type": "object", "required": ["id", "plan_id", "project", "repository", "tag", "outcome"],
              "properties": {
                  "id": {"type": "integer"}, "plan_id": {"type": "integer"}, "project": {"type": "string"},
                  "repository": {"type": "string"}, "tag": {"type": "string"}, "image": {"type": "string"},
                  "expected_digest": STR_OR_NULL, "outcome": {"type": "string", "enum": OUTCOMES},
                  "reason": STR_OR_NULL, "method": STR_OR_NULL, "trigger": STR_OR_NULL,
                  "pipeline_id": {"type": ["integer", "null"]}, "attempts": {"type": "integer"},
                  "created_at": TIME, "finished_at": TIME, "restored_at": TIME,
                  "restorable": {"type": "boolean"},
                  "saved_manifest": {"type": ["object", "null"], "properties": {
                      "digest": {"type": "string"}, "media_type": {"type": "string"},
                      "size": {"type": "integer"}}},
                  "restore": {"anyOf": [_ref("OperatorRequest"), {"type": "null"}]},
                  "retry": {"anyOf": [_ref("OperatorRequest"), {"type": "null"}]}}},
    "UntagPage": {"type": "object", "required": ["untags", "next_cursor"], "properties": {
        "untags": {"type": "array", "items": _ref("Untag")}, "limit": {"type": "integer"},
        "offset": {"type": "integer"}, "next_cursor": STR_OR_NULL}},
    "Accepted": {"type": "object", "required": ["request"], "properties": {
        "request": _ref("OperatorRequest"), "created": {"type": "boolean"}, "message": {"type": "string"}}},
    "RequestDetail": {"type": "object", "required": ["request"], "properties": {
        "request": _ref("OperatorRequest"), "untag": _ref("Untag")}},
    "ReconcileRequest": {"type": "object", "required": ["id", "project", "state", "projects"], "properties": {
        "id": {"type": "integer"},
        "project": {**STR_OR_NULL, "description": "the project caught up; null for every configured one"},
        "state": {"type": "string", "enum": ["pending", "running", "done", "failed"],
                  "description": "done: it ran (each project says whether it went well); failed: the run broke"},
        "requested_by": {"type": "string"}, "requested_at": TIME, "finished_at": TIME,
        "error": {**STR_OR_NULL, "description": "why the run broke (state failed)"},
        "projects": {"type": ["array", "null"], "description": "once done: per project what it found",
                     "items": {"type": "object", "required": ["project", "ok", "summary", "plans"], "properties": {
                         "project": {"type": "string"}, "ok": {"type": "boolean"}, "summary": {"type": "string"},
                         "skipped": STR_OR_NULL, "error": STR_OR_NULL, "more": {"type": "boolean"},
                         "plans": {"type": "array", "items": _ref("Plan"),
                                   "description": "the plans it made, as they are now"}}}}}},
    "ReconcileAccepted": {"type": "object", "required": ["request", "created"], "properties": {
        "request": _ref("ReconcileRequest"), "created": {"type": "boolean"}, "message": {"type": "string"}}},
    "ReconcileDetail": {"type": "object", "required": ["request"], "properties": {
        "request": _ref("ReconcileRequest")}},
    "Counters": {"type": "object", "properties": {
        **{k: {"type": "integer"} for k in ("created", "untagged", "scheduled", "held", "failed", "dry_run",
                                            "restored")},
        "ratio": {"type": "number", "description": "untagged / created"},
        "untagged_image_bytes": {"type": ["integer", "null"],
                                 "description": "bytes the untagged images reference (from saved manifests)"}}},
    "ProjectProblem": {"type": "object", "required": ["kind", "message"], "properties": {
        "kind": {"type": "string", "enum": list(model.PROJECT_PROBLEM_KINDS),
                 "description": "no_delete_permission: the project's token may not untag"},
        "message": {"type": "string", "description": "what was found and how to fix it"},
        "since": TIME, "last_seen_at": TIME}},
    "ProjectStatus": {"allOf": [_ref("Counters"), {"type": "object", "properties": {
        "configured": {"type": "boolean"}, "dry_run_mode": {"type": ["boolean", "null"]},
        "last_events": {"type": "object", "additionalProperties": {"type": "string", "format": "date-time"}},
        "last_event_at": TIME,
        "configured_since": {**TIME, "description": "when a worker first ran with the project's entry configured"},
        "quiet": {"type": "boolean", "description": "no event for over 24 hours, configured for at least a day"},
        "misconfigured": {"type": "boolean", "description": "the worker found something wrong with its setup"},
        "problems": {"type": "array", "items": _ref("ProjectProblem"),
                     "description": "what is wrong, until an untag of the project succeeds"}}}]},
    "Status": {"type": "object", "required": ["projects", "total", "queue"], "properties": {
        "generated_at": TIME,
        "projects": {"type": "object", "additionalProperties": _ref("ProjectStatus")},
        "total": _ref("Counters"),
        "queue": {"type": "object", "properties": {"depth": {"type": "integer"},
                                                   "oldest_pending_age_seconds": {"type": ["number", "null"]}}},
        "plans": {"type": "object", "additionalProperties": {"type": "integer"}},
        "operator_requests_open": {"type": "integer"},
        "registry_notifications": {"type": "object", "properties": {"last_event_at": TIME}},
        "ignored_deliveries": {
            "type": "object", "required": list(model.IGNORED_REASONS),
            "description": "authentic GitLab deliveries answered 200 ignored, per reason (unconfigured_project:"
                           " it names a project no entry configures; unused_kind: a kind the janitor does not"
                           " use); counts only rise",
            "additionalProperties": {"type": "object", "required": ["count"], "properties": {
                "count": {"type": "integer", "minimum": 0}, "last_at": TIME, "last_project": STR_OR_NULL,
                "last_kind": STR_OR_NULL}}},
        "worker": {"type": "object", "properties": {"heartbeat_age_seconds": {"type": ["number", "null"]},
                                                    "fresh": {"type": "boolean"}}},
        "workers": _ref("Workers"),
        "dry_run_projects": {"type": "array", "items": {"type": "string"}},
        "misconfigured_projects": {"type": "array", "items": {"type": "string"}},
        "stuck_pipelines": _ref("StuckPipelines"),
        "unusable_events": _ref("UnusableEvents")}},
    "Workers": {
        "type": "array", "description": "every worker heard from in the last 10 minutes, the latest started first",
        "items": {"type": "object", "required": ["id", "host", "pid", "started_at", "heartbeat_age_seconds", "fresh",
                                                 "plan"],
                  "properties": {"id": {"type": "string", "description": "host:pid:run"},
                                 "host": {"type": "string"}, "pid": {"type": "integer"}, "started_at": TIME,
                                 "heartbeat_age_seconds": {"type": "number"}, "fresh": {"type": "boolean"},
                                 "plan": {"type": ["integer", "null"], "description": "the plan it runs now"}}}},
    "UnusableEvents": {
        "type": "object", "required": ["count", "events"],
        "description": "stored events the worker could not apply and set aside, so that the events after them"
                       " went on (their writes undone); the count only rises",
        "properties": {
            "count": {"type": "integer", "minimum": 0},
            "events": {"type": "array", "description": "the newest first (at most 20)", "items": {
                "type": "object", "required": ["id", "source", "kind", "received_at", "error"],
                "properties": {"id": {"type": "integer"}, "source": {"type": "string", "enum": ["gitlab", "registry"]},
                               "kind": {"type": "string"}, "project": STR_OR_NULL, "received_at": TIME,
                               "set_aside_at": TIME,
                               "error": {"type": "string", "description": "what applying it raised"}}}}}},
    "StuckPipelines": {
        "type": "object", "required": ["after_seconds", "count", "pipelines"],
        "description": "pipelines unfinished for longer than worker.stuck_pipeline_after since the janitor last"
                       " heard of them (their pipeline-lifetime tags wait for a finish)",
        "properties": {
            "after_seconds": {"type": "number", "description": "worker.stuck_pipeline_after"},
            "after": {"type": "string", "description": "worker.stuck_pipeline_after as configured (14d, 1h30m)"},
            "count": {"type": "integer", "description": "how many there are"},
            "pipelines": {"type": "array", "description": "the longest waiting first (at most 50)", "items": {
                "type": "object", "required": ["project", "pipeline_id", "ref", "status", "since"],
                "properties": {"project": {"type": "string"}, "pipeline_id": {"type": "integer"},
                               "ref": {"type": "string"},
                               "status": {"type": "string", "description": "GitLab's: manual, created, ..."},
                               "since": {**TIME, "description": "when the janitor last heard of it"},
                               "age_seconds": {"type": "number"}}}}}},
    "Stored": {"type": "object", "properties": {"status": {"type": "string",
                                                           "enum": ["stored", "duplicate", "ignored"]},
                                                "kind": {"type": "string"}, "pushes": {"type": "integer"},
                                                "reason": {"type": "string", "enum": list(model.IGNORED_REASONS),
                                                           "description": "why a GitLab delivery was ignored"}}},
    "CiImage": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "description": "<registry host>/<repository>:<tag>",
                  "example": "registry.example.com/group/app:mr-42"},
        "digest": {"type": "string", "description": "optional, pushes only: sha256:<hex>"}}},
    "CiPush": {"type": "object", "properties": {
        "status": {"type": "string", "enum": ["recorded", "already_recorded"]},
        "push_record_id": {"type": "integer"}, "lifetime": {"type": "string"},
        "evidence": {"type": "string", "enum": ["registry_notification", "digest_changed", "gitlab_created_at"],
                     "description": "what showed that this job pushed the tag"}}},
    "CiUntag": {"type": "object", "properties": {
        "status": {"type": "string", "enum": ["accepted"]}, "untag_id": {"type": "integer"},
        "plan_id": {"type": "integer"}, "outcome": {"type": "string"}, "reason": STR_OR_NULL}},
}


def _op(operation_id: str | None) -> dict[str, str]:
    """The ``operationId`` entry: unique across the document, camelCase, what generated clients name the call."""
    return {"operationId": operation_id} if operation_id else {}


def _admin_get(summary: str, schema: str, *, params: list[dict[str, Any]] | None = None,
               not_found: bool = False, bad_query: bool = False, op: str | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": _json(_ref(schema), summary), **ADMIN_ERRORS}
    if not_found:
        responses["404"] = _error("no such id")
        responses["400"] = _error(ID_OUT_OF_RANGE)
    if bad_query:
        responses["400"] = _error("a query parameter is malformed (limit, offset or cursor out of range)")
    return {"get": {"summary": summary, **_op(op), "security": ADMIN, "parameters": params or [],
                    "responses": responses}}


def _admin_action(summary: str, param: dict[str, Any], ok: str, schema: str, conflict: str, *,
                  op: str | None = None) -> dict[str, Any]:
    return {"post": {"summary": summary, **_op(op), "security": ADMIN, "parameters": [param],
                     "responses": {ok: _json(_ref(schema), summary), "400": _error(ID_OUT_OF_RANGE),
                                   "404": _error("no such id"),
                                   "409": _error(conflict), **ADMIN_ERRORS}}}


def _dashboard_action(summary: str, param: dict[str, Any], *, op: str | None = None) -> dict[str, Any]:
    return {"post": {
        "summary": summary, **_op(op), "security": ADMIN, "parameters": [param], "tags": ["dashboard"],
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "required": ["csrf"], "properties": {"csrf": {"type": "string"}}}}}},
        "responses": {"303": {"description": "back to /dashboard with a flash message"},
                      "403": _error("CSRF token missing or wrong, or a cross-site request"), **ADMIN_ERRORS}}}


def _paths() -> dict[str, Any]:
    plan_id, untag_id = _id("plan_id", "plan id"), _id("untag_id", "untag id")
    ci_auth: list[dict[str, list[str]]] = [{"jobToken": []}]
    ci_errors = {"400": _error("malformed body"), "401": _error("job token missing or refused by GitLab"),
                 "403": _error("repository outside the job's project"),
                 "429": {**_error("GitLab refused too many job tokens from this address lately"
                                  " (too_many_refused_tokens); retry after Retry-After"),
                         "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
                 "503": _error("GitLab unreachable; retry")}
    return {
        "/webhooks/gitlab": {"post": {
            "summary": "GitLab project, group or system hook (pipeline, merge request, push events)",
            "operationId": "receiveGitlabWebhook",
            "security": [{"gitlabToken": []}],
            "parameters": [{"name": "X-Gitlab-Event", "in": "header", "schema": {"type": "string"}},
                           {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                           {"name": "X-Gitlab-Event-UUID", "in": "header", "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {JSON: {"schema": {"type": "object"}}}},
            "responses": {"202": _json(_ref("Stored"), "stored durably"),
                          "200": _json(_ref("Stored"), "duplicate delivery, or an authentic one the janitor"
                                                         " ignores (a project no entry configures, a kind it"
                                                         " does not use): GitLab disables a hook that answers"
                                                         " 4xx"),
                          "400": _error("not JSON GitLab sends (NaN, Infinity, numbers beyond a float, nesting"
                                        " too deep), or an event with values GitLab never sends (wrong types,"
                                        " ids beyond 63 bits, nesting deeper than 20 levels): the message"
                                        " names the field"),
                          "401": _error("the token matches no configured secret, or is another configured"
                                        " project's"),
                          "413": _error("body over server.max_body_bytes"), "415": _error("not JSON")}}},
        "/webhooks/registry": {"post": {
            "summary": "Registry notifications (v1 and v2 envelopes)", "operationId": "receiveRegistryNotification",
            "security": [{"registryBearer": []}],
            "requestBody": {"required": True, "content": {JSON: {"schema": {"type": "object"}},
                                                          "application/vnd.docker.distribution.events.v1+json":
                                                              {"schema": {"type": "object"}}}},
            "responses": {"202": _json(_ref("Stored"), "stored (or nothing to store)"),
                          "400": _error("malformed envelope, or a push event's target with a field that is"
                                        " not a string (the message names it)"),
                          "413": _error("body over server.max_body_bytes"),
                          "401": _error("not Bearer <server.registry_notification_token>"),
                          "415": _error("not JSON")}}},
        "/api/v1/ci/pushes": {"post": {
            "summary": "A CI job records a tag its pipeline pushed", "operationId": "recordCiPush",
            "security": ci_auth,
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("CiImage")}}},
            "responses": {"201": _json(_ref("CiPush"), "recorded"),
                          "200": _json(_ref("CiPush"), "already recorded"), **ci_errors,
                          "409": _error("nothing shows this job pushed the tag: the registry holds no such tag"
                                        " (tag_not_found), the janitor cannot read its digest: send"
                                        " \"digest\" (digest_required), or no evidence shows the push was"
                                        " this job's (no_evidence: no registry notification of it since the"
                                        " job started, GitLab's created_at is older, and the tag had that"
                                        " digest before)"),
                          "503": {**_error("GitLab or the registry could not be asked; nothing was recorded,"
                                           " record again after Retry-After"),
                                  "headers": {"Retry-After": {"schema": {"type": "integer"}}}}}}},
        "/api/v1/ci/untag": {"post": {
            "summary": "A CI job asks to untag one tag a pipeline of its project and ref pushed",
            "operationId": "requestCiUntag",
            "security": ci_auth,
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("CiImage")}}},
            "responses": {"202": _json(_ref("CiUntag"), "accepted, with the untag id"), **ci_errors,
                          "403": _error("not owned by this project and ref, or another project"),
                          "409": _error("protected tag"),
                          "429": {**_error("ci_untag_per_pipeline used up, or GitLab refused too many job"
                                           " tokens from this address lately (too_many_refused_tokens)"),
                                  "headers": {"Retry-After": {"schema": {"type": "integer"}}}}}}},
        "/api/v1/status": _admin_get("Per-project and total counters, queue, plans, webhook health",
                                     "Status", op="getStatus"),
        "/api/v1/plans": _admin_get("Plans, newest first", "PlanPage", bad_query=True, op="listPlans", params=[
            _query("state", "only plans in this state", {"type": "string", "enum": PLAN_STATES}),
            _query("project", "only this project path", {"type": "string"}), *PAGING]),
        "/api/v1/plans/{plan_id}": _admin_get("One plan with its untags", "PlanDetail", params=[plan_id],
                                              not_found=True, op="getPlan"),
        "/api/v1/plans/{plan_id}/approve": _admin_action(
            "Approve a held plan: it runs on the worker's next tick", plan_id, "200", "Plan", "plan is not held",
            op="approvePlan"),
        "/api/v1/plans/{plan_id}/reject": _admin_action(
            "Reject a held plan, or a scheduled one during its grace period: it is cancelled, nothing is "
            "untagged", plan_id, "200", "Plan",
            "not_cancellable: the plan is neither held nor scheduled, or a worker has already started it",
            op="rejectPlan"),
        "/api/v1/untags": _admin_get("The untag log (audit), newest first", "UntagPage", bad_query=True,
                                     op="listUntags", params=[
            _query("project", "only this project path", {"type": "string"}),
            _query("outcome", "only this outcome", {"type": "string", "enum": OUTCOMES}),
            _query("since", "finished since: a duration back from now (2h, 7d), an ISO date or date-time",
                   {"type": "string"}), *PAGING]),
        "/api/v1/untags/{untag_id}": _admin_get("One untag", "Untag", params=[untag_id], not_found=True,
                                                op="getUntag"),
        "/api/v1/untags/{untag_id}/restore": _admin_action(
            "Ask the worker to put the tag back at its saved manifest", untag_id, "202", "Accepted",
            "not restorable: not carried out, already restored, or no saved manifest", op="restoreUntag"),
        "/api/v1/untags/{untag_id}/retry": _admin_action(
            "Ask the worker to retry a failed untag", untag_id, "202", "Accepted", "the untag is not failed",
            op="retryUntag"),
        "/api/v1/requests/{request_id}": _admin_get(
            "A restore or retry request and its outcome", "RequestDetail",
            params=[_id("request_id", "operator request id")], not_found=True, op="getOperatorRequest"),
        "/api/v1/reconcile": {"post": {
            "summary": "Ask a worker to catch up from the GitLab API now (one project, or every one), with the"
                       " daemon's settings",
            "operationId": "requestReconcile", "security": ADMIN,
            "requestBody": {"required": False, "content": {JSON: {"schema": {
                "type": "object", "additionalProperties": False, "properties": {
                    "project": {**STR_OR_NULL, "description": "a configured project; absent or null: all"}}}}}},
            "responses": {"202": {**_json(_ref("ReconcileAccepted"), "recorded (or the same one still open);"
                                          " poll the Location"),
                                  "headers": {"Location": {"schema": {"type": "string"},
                                                           "description": "/api/v1/reconcile/{request_id}"}}},
                          "400": _error("the body is not {\"project\": \"group/app\"} (or empty, or {})"),
                          "404": _error("the project is not configured (or, under a group/* entry, not in the"
                                        " ledger)"), **ADMIN_ERRORS}}},
        "/api/v1/reconcile/{request_id}": _admin_get(
            "A reconcile request and, once it ran, what it found per project", "ReconcileDetail",
            params=[_id("request_id", "reconcile request id")], not_found=True, op="getReconcileRequest"),
        "/api/v1/openapi.json": {"get": {"summary": "This document", "operationId": "getOpenApiDocument",
                                         "security": [],
                                         "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics (text format 0.0.4), read from storage, and this process's own",
            "operationId": "getMetrics",
            "description": "Needs the admin token when server.metrics_require_token is true.",
            "security": [{}, *ADMIN],
            "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **ADMIN_ERRORS}}},
        "/healthz": {"get": {"summary": "Liveness", "operationId": "getLiveness", "security": [],
                             "responses": {"200": _json({"type": "object"}, "alive")}}},
        "/readyz": {"get": {"summary": "Readiness: this web can store events (the newest heartbeat and every live "
                                       "worker are reported, not judged: each worker has its own probe)",
                             "operationId": "getReadiness", "security": [],
                            "responses": {"200": _json({"type": "object", "properties": {
                                "status": {"type": "string"}, "workers": _ref("Workers")}}, "ready"),
                                          "503": _error("storage_unavailable: events cannot be stored")}}},
        "/dashboard": {"get": {
            "summary": "The operators' page (HTML)", "operationId": "getDashboard", "security": ADMIN,
            "tags": ["dashboard"],
            "parameters": [{"name": "refresh", "in": "query", "required": False,
                            "description": "reload the page every this many seconds (off when absent or out of range)",
                            "schema": {"type": "integer", "minimum": 10, "maximum": 3600}}],
            "responses": {"200": {"description": "the page",
                                  "content": {"text/html": {"schema": {"type": "string"}}}}, **ADMIN_ERRORS}}},
        "/dashboard/plans/{plan_id}/approve": _dashboard_action("Approve a held plan (form)", plan_id,
                                                                 op="dashboardApprovePlan"),
        "/dashboard/plans/{plan_id}/reject": _dashboard_action("Reject a held or scheduled plan (form)",
                                                                plan_id, op="dashboardRejectPlan"),
        "/dashboard/untags/{untag_id}/restore": {
            **_dashboard_action("Ask for a restore (form)", untag_id, op="dashboardRestoreUntag"),
            "get": {"summary": "The confirmation step before a restore (HTML): the tag, the digest it goes back to, "
                               "Restore and Cancel; nothing is requested", "operationId": "dashboardConfirmRestore",
                    "security": ADMIN, "parameters": [untag_id], "tags": ["dashboard"],
                    "responses": {"200": {"description": "the confirmation page",
                                          "content": {"text/html": {"schema": {"type": "string"}}}},
                                  "404": {"description": "no such untag (HTML)"},
                                  "409": {"description": "the untag cannot be restored, and why (HTML)"},
                                  **ADMIN_ERRORS}}},
        "/dashboard/untags/{untag_id}/retry": _dashboard_action("Ask for a retry (form)", untag_id,
                                                                 op="dashboardRetryUntag"),
    }


def document() -> dict[str, Any]:
    try:
        app_version = version("registry-janitor")
    except PackageNotFoundError:
        app_version = "0"
    return {
        "openapi": "3.1.0",
        "info": {"title": "registry-janitor", "version": app_version,
                 "description": "Untags exactly the image tags a GitLab pipeline pushed. Every error body is "
                                "JSON {\"error\": \"<code>\", \"message\": \"<what to do>\"}."},
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "adminBearer": {"type": "http", "scheme": "bearer",
                                "description": "Authorization: Bearer <server.admin_token>"},
                "adminBasic": {"type": "http", "scheme": "basic",
                               "description": "any user name, server.admin_token as the password"},
                "gitlabToken": {"type": "apiKey", "in": "header", "name": "X-Gitlab-Token",
                                "description": "the project's webhook_secret, or gitlab.system_hook_secret with"
                                               " X-Gitlab-Event: System Hook"},
                "registryBearer": {"type": "http", "scheme": "bearer",
                                   "description": "server.registry_notification_token"},
                "jobToken": {"type": "apiKey", "in": "header", "name": "JOB-TOKEN",
                             "description": "the job's $CI_JOB_TOKEN, verified with GitLab"},
            },
        },
    }


@bp.get("/api/v1/openapi.json")
def openapi() -> ResponseReturnValue:
    return jsonify(document())
