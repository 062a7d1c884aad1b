"""The access log: one line per request the app answers, through the ``daemon.web.access`` logger, with the
fields ``request_id``, ``method``, ``path``, ``status``, ``duration_ms``, ``remote`` and ``agent``, and what the
route did with the request when it says so (``note_outcome``: a webhook's ``pipeline delivery stored`` with
its ``project`` and ``delivery``).

What a request carries as a secret is never written: no header value but the User-Agent's first word
(so never ``Authorization``, ``X-Gitlab-Token``, ``JOB-TOKEN`` or ``PRIVATE-TOKEN``), and the path without
its query string (where a ``token`` parameter would be). The probes (``/healthz``, ``/readyz``) are logged
at DEBUG, every other request at INFO.
"""

from __future__ import annotations

import logging
import random
import re
import time

from flask import Flask, Response, g, request

log = logging.getLogger(__name__)

PROBES = frozenset({"/healthz", "/readyz"})
#: A request id a proxy in front sent (``X-Request-Id``) is kept when it looks like one; else one is made.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_AGENT = re.compile(r"[^\s/]{1,48}(?:/[^\s]{1,24})?")
#: The longest path written; gunicorn bounds the request line, a test client does not.
MAX_PATH_CHARS = 512


def request_id() -> str:
    """This request's id, as its access log line and the route's own lines carry it."""
    rid: str | None = g.get("request_id")
    if rid is None:
        given = request.headers.get("X-Request-Id", "")
        # Not a secret, only unique enough to tell lines apart: no system call for random bytes.
        rid = g.request_id = given if _REQUEST_ID.fullmatch(given) else f"{random.getrandbits(64):016x}"
    return rid


def _level() -> int:
    """The level of this request's access line."""
    return logging.DEBUG if request.path in PROBES else logging.INFO


def access_logged() -> bool:
    """Whether this request's access line will be written (its level is enabled): a route need not say
    what became of a request (``note_outcome``) when nobody will read it."""
    return log.isEnabledFor(_level())


def note_outcome(text: str, fields: dict[str, str | None]) -> None:
    """What the route did with this request (``pipeline delivery stored``) and its fields (project,
    delivery), said at the end of its access line instead of a line of its own."""
    g.access_outcome = (text, fields)


def _started() -> None:
    g.access_started = time.perf_counter()


def _agent() -> str | None:
    found = _AGENT.match(request.headers.get("User-Agent", ""))
    return found.group() if found else None


def _logged(response: Response) -> Response:
    level = _level()
    if log.isEnabledFor(level):
        started = g.get("access_started")
        duration = round((time.perf_counter() - started) * 1000, 1) if started is not None else None
        path = request.path[:MAX_PATH_CHARS]
        noted: tuple[str, dict[str, str | None]] | None = g.get("access_outcome")
        outcome, fields = noted if noted is not None else ("", {})
        log.log(level, "%s %s %s%s", request.method, path, response.status_code, f": {outcome}" if outcome else "",
                extra={**fields, "request_id": request_id(), "method": request.method, "path": path,
                       "status": response.status_code, "duration_ms": duration, "remote": request.remote_addr,
                       "agent": _agent()})
    return response


def log_requests(app: Flask) -> None:
    """Time each request from before the app's own checks, and log it when its answer is made (errors
    included: the app answers every one)."""
    app.before_request(_started)
    app.after_request(_logged)
