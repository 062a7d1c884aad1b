"""``POST /webhooks/gitlab`` and ``POST /webhooks/registry``: authenticate, store raw, answer.

The hot path does the least that keeps the promise: check the secret in constant time, parse enough to
reject malformed input with 400, write one row, answer. Everything else happens in the worker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from functools import lru_cache
from typing import Any

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from daemon.config import Settings
from daemon.domain.events import MalformedEvent, event_kind, parse_gitlab, parse_registry, project_path_of
from daemon.web.context import janitor, now, settings, store
from daemon.web.errors import json_error

bp = Blueprint("webhooks", __name__)
STORED_KINDS = frozenset({"pipeline", "merge_request", "push", "tag_push"})
_KEPT_HEADERS = ("X-Gitlab-Event", "X-Gitlab-Event-UUID", "X-Gitlab-Instance", "Idempotency-Key",
                 "Content-Type")


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


def _webhook_secrets(parts: dict[str, Any]) -> tuple[bytes, ...]:
    """Every project's webhook secret as bytes, computed once per app and settings."""
    conf = parts["settings"]
    cached = parts.get("webhook_secrets")
    if cached is None or cached[0] is not conf:
        cached = parts["webhook_secrets"] = (
            conf, tuple(p.webhook_secret.get_secret_value().encode() for p in conf.projects))
    return cached[1]


@lru_cache(maxsize=64)
def _status_body(status: str, kind: str) -> bytes:
    return json.dumps({"status": status, "kind": kind}).encode()


def _answer(code: int, status: str, kind: str) -> Response:
    """The hot path's answers, without building them through jsonify each time."""
    return Response(_status_body(status, kind), code, mimetype="application/json")


def _json_body() -> tuple[Any, ResponseReturnValue | None]:
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        return None, json_error(415, "unsupported_media_type", "send the body as application/json")
    try:
        return json.loads(request.get_data(cache=True)), None
    except (ValueError, UnicodeDecodeError):
        return None, json_error(400, "malformed_json", "the body is not valid JSON")


def delivery_key(source: str, body: bytes) -> str:
    """S8: the same delivery is the same ``Idempotency-Key``, else ``X-Gitlab-Event-UUID``, else body."""
    for header in ("Idempotency-Key", "X-Gitlab-Event-UUID"):
        value = request.headers.get(header)
        if value:
            return f"{source}:{header.lower()}:{value}"
    return f"{source}:sha256:{hashlib.sha256(body).hexdigest()}"


@bp.post("/webhooks/gitlab")
def gitlab_hook() -> ResponseReturnValue:
    headers = request.headers
    token = headers.get("X-Gitlab-Token")
    parts = janitor()
    conf: Settings = parts["settings"]
    # Constant time over every configured secret, before the body is even read.
    given = token.encode() if token is not None else None
    known = [given is not None and hmac.compare_digest(given, secret) for secret in _webhook_secrets(parts)]
    if not any(known):
        return json_error(401, "bad_token", "X-Gitlab-Token does not match any configured webhook_secret")
    payload, error = _json_body()
    if error is not None:
        return error
    path = project_path_of(payload)
    project = conf.project_for(path) if path else None
    if project is None:
        return json_error(401, "unknown_project",
                          f"project {path!r} is not configured; add it under 'projects'")
    if not _same(token, project.webhook_secret.get_secret_value()):
        return json_error(401, "bad_token", f"X-Gitlab-Token is not the webhook_secret of {path}")
    header = headers.get("X-Gitlab-Event")
    kind = event_kind(header, payload)
    if kind not in STORED_KINDS:
        return _answer(200, "ignored", kind)
    received_at = float(parts["clock"]())
    try:
        parse_gitlab(header, payload, received_at)
    except MalformedEvent as exc:
        return json_error(400, "malformed_event", f"{kind} event: {exc}")
    body = request.get_data(cache=True)
    kept = {h: v for h in _KEPT_HEADERS if (v := headers.get(h))}
    stored = parts["store"].add_event(delivery_key=delivery_key("gitlab", body), source="gitlab", kind=kind,
                                      project_path=path, headers=kept, body=body, received_at=received_at)
    if not stored:
        return _answer(200, "duplicate", kind)
    return _answer(202, "stored", kind)


@bp.post("/webhooks/registry")
def registry_hook() -> ResponseReturnValue:
    expected = settings().server.registry_notification_token
    auth = request.headers.get("Authorization", "")
    given = auth[7:] if auth.startswith("Bearer ") else None
    if expected is None or not _same(given, expected.get_secret_value()):
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
    return jsonify({"status": "stored" if stored else "duplicate", "pushes": len(pushes)}), 202
