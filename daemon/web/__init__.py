"""The web process: Flask app factory. It verifies, stores and answers; it never untags and never writes
to the registry (the worker owns every registry write); its one registry read is the CI gate's manifest
HEAD for a record sent without a digest. GitLab is called only to verify CI job tokens."""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask
from werkzeug.exceptions import HTTPException

from daemon.config import Settings
from daemon.store import Store
from daemon.web.errors import json_error


def create_app(settings: Settings, store: Store, *, clock: Callable[[], float] = time.time,
               **services: object) -> Flask:
    """Build the app from already-built parts (tests pass their own store, clock and GitLab client)."""
    from daemon.web import api, ci, dashboard, health, metrics, openapi, webhooks

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.server.max_body_bytes
    app.extensions["janitor"] = {"settings": settings, "store": store, "clock": clock, **services}

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        code = exc.code or 500
        names = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                 413: "payload_too_large", 415: "unsupported_media_type"}
        return json_error(code, names.get(code, "http_error"), exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        app.logger.exception("unhandled error")
        return json_error(500, "internal_error", "the janitor failed on this request; see its log")

    app.register_blueprint(webhooks.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(ci.bp)
    for blueprint in (api.bp, dashboard.bp, metrics.bp, openapi.bp):
        app.register_blueprint(blueprint)
    return app
