"""The web process: Flask app factory. It verifies, stores and answers; it never untags and never writes
to the registry (the worker owns every registry write); its one registry read is the CI gate's manifest
HEAD for a record sent without a digest. GitLab is called only to verify CI job tokens.

Whatever a client sends, the answer is JSON ``{"error", "message"}`` for every 4xx and 5xx (werkzeug's
own HTTP errors and 431 included), and hostile shapes are 4xx: a body over ``server.max_body_bytes``
(sent with a ``Content-Length`` or chunked) is 413, a header field over ``MAX_HEADER_BYTES`` is 431, and an
id in a URL beyond what storage holds is 400."""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask, request
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge, RequestHeaderFieldsTooLarge
from werkzeug.routing import IntegerConverter

from daemon.config import Settings
from daemon.domain.events import MAX_ID
from daemon.store import Store
from daemon.web.access import log_requests
from daemon.web.errors import json_error

#: The longest header field (name and value) the app reads, as gunicorn's default limit: longer is 431.
MAX_HEADER_BYTES = 8190
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_CONTENT_KEYS = frozenset({"CONTENT_TYPE", "CONTENT_LENGTH"})
_ERROR_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                415: "unsupported_media_type", 431: "request_header_fields_too_large"}


class StoredId(IntegerConverter):
    """``<int:...>`` in every route: an id as storage keeps it. One beyond ``MAX_ID`` is 400, not a failed
    query; one that matches nothing stored is the route's 404."""

    def to_python(self, value: str) -> int:
        if len(value) > len(str(MAX_ID)) or int(value) > MAX_ID:
            raise BadRequest(f"ids in URLs are whole numbers from 1 to {MAX_ID}")
        number: int = super().to_python(value)
        return number


def _check_limits(max_body_bytes: int) -> None:
    """431 for a header field over ``MAX_HEADER_BYTES``; 413 for a body over ``max_body_bytes``, whether it
    says its length or comes chunked (werkzeug would cut a chunked body short at the limit, unnoticed)."""
    # The WSGI environ's names are at least as long as the fields' own (HTTP_ before each): only when one
    # of them is over the limit are the fields themselves measured, to say which.
    if any((key[:5] == "HTTP_" or key in _CONTENT_KEYS) and len(key) + len(value) > MAX_HEADER_BYTES
           for key, value in request.environ.items()):
        for name, value in request.headers.items():
            if len(name) + len(value) > MAX_HEADER_BYTES:
                raise RequestHeaderFieldsTooLarge(f"header {name[:64]!r} is over {MAX_HEADER_BYTES} bytes")
    length = request.content_length
    if length is None and request.method in _BODY_METHODS:
        length = len(request.get_data(cache=True))
    if length is not None and length > max_body_bytes:
        raise RequestEntityTooLarge(f"the body is over server.max_body_bytes ({max_body_bytes} bytes)")


def create_app(settings: Settings, store: Store, *, clock: Callable[[], float] = time.time,
               **services: object) -> Flask:
    """Build the app from already-built parts (tests pass their own store, clock and GitLab client)."""
    from daemon.web import api, ci, dashboard, health, metrics, openapi, webhooks

    app = Flask(__name__)
    app.url_map.converters["int"] = StoredId
    max_body = settings.server.max_body_bytes
    # One byte more than allowed is read, so that a chunked body over the limit shows it is.
    app.config["MAX_CONTENT_LENGTH"] = max_body + 1
    app.extensions["janitor"] = {"settings": settings, "store": store, "clock": clock, **services}
    log_requests(app)  # first: a request the limits refuse is logged too
    app.before_request(lambda: _check_limits(max_body))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        code = exc.code or 500
        if code < 400:  # a redirect werkzeug's routing asks for
            return exc
        name = _ERROR_CODES.get(code) or "_".join(exc.name.lower().replace("'", "").split()) or "http_error"
        return json_error(code, name, exc.description or exc.name)

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
