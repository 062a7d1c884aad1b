"""``POST /webhooks/gitlab`` and ``POST /webhooks/registry``: authenticate, store raw, answer.

The hot path does the least that keeps the promise: check the secret in constant time, parse enough to
reject malformed input with 400, write one row, answer. Everything else happens in the worker.

GitLab counts every answer but 2xx/3xx as a failed delivery and disables a project hook after a few in a
row (``app/models/concerns/web_hooks/auto_disabling.rb``), so an authentic delivery is never refused for
being unwanted: one that names a project no entry configures (group and system hooks, renamed or
transferred projects, the hook settings' Test button) or is of a kind the janitor does not use answers
``200 {"status": "ignored", "reason"}`` and is counted. Only a token that matches no configured secret,
or another configured project's secret, gets 401.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from functools import lru_cache
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from daemon.config import ProjectSettings, Settings
from daemon.domain.events import (
    MalformedEvent,
    delivery_id,
    event_kind,
    parse_gitlab,
    parse_registry,
    project_path_of,
)
from daemon.domain.model import IgnoredReason
from daemon.domain.policy import SAME_BODY_WINDOW
from daemon.web.access import access_logged, note_outcome, request_id
from daemon.web.bodies import BadJson, load_json
from daemon.web.context import janitor, now, settings, store
from daemon.web.errors import json_error

bp = Blueprint("webhooks", __name__)
log = logging.getLogger(__name__)
STORED_KINDS = frozenset({"pipeline", "merge_request", "push", "tag_push"})
_KEPT_HEADERS = ("X-Gitlab-Event", "X-Gitlab-Event-UUID", "X-Gitlab-Instance", "Idempotency-Key",
                 "Content-Type")
#: ``X-Gitlab-Event`` of every system hook delivery, whatever the event (``WebHookService.hook_to_event``).
SYSTEM_HOOK = "System Hook"


def _log(level: int, message: str, *args: object, project: str | None = None) -> None:
    """What became of this delivery, with its project (when known) and GitLab's name for it. A refusal is a
    line of its own (WARNING); what was stored, found a duplicate or ignored is said by the request's access
    line (one line per delivery: a second one would cost every webhook more than its write)."""
    if level < logging.WARNING:
        if access_logged():
            note_outcome(message % args if args else message,
                         {"project": project, "delivery": delivery_id(request.headers)})
    elif log.isEnabledFor(level):
        log.log(level, message, *args,
                extra={"project": project, "delivery": delivery_id(request.headers), "request_id": request_id()})


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class _Secrets:
    """Every configured webhook secret, by its SHA-256: a token is looked up once, in time that depends on
    neither how many projects are configured nor how much of a secret it shares (a lookup compares
    digests, which say nothing of the secrets), instead of compared with each secret in turn."""

    def __init__(self, conf: Settings) -> None:
        self.settings = conf
        self._of: dict[str, bytes] = {p.path: _digest(p.webhook_secret.get_secret_value()) for p in conf.projects}
        self.projects = frozenset(self._of.values())
        system = conf.gitlab.system_hook_secret
        self.system = None if system is None else _digest(system.get_secret_value())

    def of(self, project: ProjectSettings) -> bytes:
        return self._of[project.path]


def _webhook_secrets(parts: dict[str, Any]) -> _Secrets:
    """The secrets of the app's settings, computed once per app and settings."""
    cached: _Secrets | None = parts.get("webhook_secrets")
    if cached is None or cached.settings is not parts["settings"]:
        cached = parts["webhook_secrets"] = _Secrets(parts["settings"])
    return cached


@lru_cache(maxsize=64)
def _status_body(status: str, kind: str) -> bytes:
    return json.dumps({"status": status, "kind": kind}).encode()


def _answer(code: int, status: str, kind: str) -> Response:
    """The hot path's answers, without building them through jsonify each time."""
    return Response(_status_body(status, kind), code, mimetype="application/json")


@lru_cache(maxsize=64)
def _ignored_body(kind: str, reason: str) -> bytes:
    return json.dumps({"status": "ignored", "kind": kind, "reason": reason}).encode()


def _ignored(parts: dict[str, Any], reason: IgnoredReason, kind: str, project_path: str | None) -> Response:
    """200 for an authentic delivery the janitor has no use for, counted for the metrics and the dashboard.
    A failure to count it must not fail the delivery: GitLab would count that against the hook."""
    try:
        parts["store"].count_ignored(reason, project_path, kind, float(parts["clock"]()))
    except Exception:
        current_app.logger.warning("could not count an ignored delivery (%s)", reason, exc_info=True)
    _log(logging.INFO, "%s delivery ignored: %s", kind, reason, project=project_path)
    return Response(_ignored_body(kind, reason), 200, mimetype="application/json")


def _json_body() -> tuple[Any, ResponseReturnValue | None]:
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        return None, json_error(415, "unsupported_media_type", "send the body as application/json")
    try:
        return load_json(request.get_data(cache=True)), None
    except BadJson as exc:
        return None, json_error(400, "malformed_json", str(exc))


def delivery_key(source: str, body: bytes) -> str:
    """S8: the same delivery is the same ``Idempotency-Key``, else ``X-Gitlab-Event-UUID``, else body."""
    for header in ("Idempotency-Key", "X-Gitlab-Event-UUID"):
        value = request.headers.get(header)
        if value:
            return f"{source}:{header.lower()}:{value}"
    return f"{source}:sha256:{hashlib.sha256(body).hexdigest()}"


def gitlab_delivery_keys(project_path: str, body: bytes, received_at: float) -> tuple[str, str]:
    """S8 for GitLab, scoped by project: (delivery key, body key). The delivery is its ``Idempotency-Key``
    (GitLab 17.4+, ``app/services/web_hook_service.rb``: the same on retries and manual resends), else its
    ``X-Gitlab-Event-UUID``, else its body at this time. The body key finds the same body again within
    ``SAME_BODY_WINDOW``: before 17.4 a manual resend came with a new ``X-Gitlab-Event-UUID``."""
    body_key = f"gitlab:{project_path}:sha256:{hashlib.sha256(body).hexdigest()}"
    for header in ("Idempotency-Key", "X-Gitlab-Event-UUID"):
        value = request.headers.get(header)
        if value:
            return f"gitlab:{project_path}:{header.lower()}:{value}", body_key
    return f"{body_key}@{received_at!r}", body_key


@bp.post("/webhooks/gitlab")
def gitlab_hook() -> ResponseReturnValue:
    headers = request.headers
    token = headers.get("X-Gitlab-Token")
    parts = janitor()
    conf: Settings = parts["settings"]
    secrets = _webhook_secrets(parts)
    # Before the body is even read.
    given = _digest(token) if token is not None else None
    system = given is not None and secrets.system is not None and hmac.compare_digest(given, secrets.system)
    if not system and given not in secrets.projects:
        _log(logging.WARNING, "GitLab delivery refused: X-Gitlab-Token matches no configured secret")
        return json_error(401, "bad_token", "X-Gitlab-Token does not match any configured webhook_secret"
                          " (or gitlab.system_hook_secret)")
    payload, error = _json_body()
    if error is not None:
        return error
    if not isinstance(payload, dict):
        return json_error(400, "malformed_event", "the body must be a JSON object")
    header = headers.get("X-Gitlab-Event")
    kind = event_kind(header, payload)
    path = project_path_of(payload)
    project = conf.project_for(path) if path else None
    if project is None and path:
        return _ignored(parts, "unconfigured_project", kind, path)
    if project is not None and not ((given is not None and hmac.compare_digest(given, secrets.of(project)))
                                    or (system and header == SYSTEM_HOOK)):
        _log(logging.WARNING, "%s delivery refused: X-Gitlab-Token is not the project's webhook_secret", kind,
             project=path)
        return json_error(401, "bad_token", f"X-Gitlab-Token is not the webhook_secret of {path}"
                          + (" (gitlab.system_hook_secret is only for system hooks)" if system else ""))
    if kind not in STORED_KINDS:
        return _ignored(parts, "unused_kind", kind, path)
    received_at = float(parts["clock"]())
    try:
        parse_gitlab(header, payload, received_at)
    except MalformedEvent as exc:
        _log(logging.WARNING, "%s delivery refused as malformed: %s", kind, exc, project=path)
        return json_error(400, "malformed_event", f"{kind} event: {exc}")
    if not path:
        _log(logging.WARNING, "%s delivery refused: it names no project", kind)
        return json_error(400, "malformed_event", f"{kind} event: 'project.path_with_namespace' is missing")
    body = request.get_data(cache=True)
    kept = {h: v for h in _KEPT_HEADERS if (v := headers.get(h))}
    key, body_key = gitlab_delivery_keys(path, body, received_at)
    stored = parts["store"].add_event(delivery_key=key, source="gitlab", kind=kind, project_path=path,
                                      headers=kept, body=body, received_at=received_at, body_key=body_key,
                                      same_body_since=received_at - SAME_BODY_WINDOW)
    if not stored:
        _log(logging.INFO, "%s delivery is a duplicate; not stored again", kind, project=path)
        return _answer(200, "duplicate", kind)
    _log(logging.INFO, "%s delivery stored", kind, project=path)
    return _answer(202, "stored", kind)


@bp.post("/webhooks/registry")
def registry_hook() -> ResponseReturnValue:
    expected = settings().server.registry_notification_token
    auth = request.headers.get("Authorization", "")
    given = auth[7:] if auth.startswith("Bearer ") else None
    if expected is None or not _same(given, expected.get_secret_value()):
        _log(logging.WARNING, "registry notification refused: its Authorization is not the configured token")
        return json_error(401, "bad_token",
                          "Authorization must be 'Bearer <server.registry_notification_token>'")
    envelope, error = _json_body()
    if error is not None:
        return error
    try:
        pushes = parse_registry(envelope, now())
    except MalformedEvent as exc:
        return json_error(400, "malformed_event", str(exc))
    if not pushes:
        return jsonify({"status": "ignored", "kind": "registry"}), 202
    body = request.get_data(cache=True)
    stored = store().add_event(delivery_key=delivery_key("registry", body), source="registry",
                               kind="registry_push", project_path=None,
                               headers={"Content-Type": request.content_type or ""}, body=body,
                               received_at=now())
    _log(logging.INFO, "registry notification of %d push(es) %s", len(pushes),
         "stored" if stored else "is a duplicate; not stored again")
    return jsonify({"status": "stored" if stored else "duplicate", "pushes": len(pushes)}), 202
