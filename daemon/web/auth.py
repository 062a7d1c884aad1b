"""The admin token: ``Authorization: Bearer <server.admin_token>``, or HTTP Basic with it as the password
(any user name), compared in constant time.

Owns the check and its refusals: JSON 401 with ``WWW-Authenticate: Basic realm="registry-janitor"`` (so a
browser asks for it), or 503 when no admin token is configured (admin routes stay shut rather than open).
Must not: read any other credential, or log the token.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import g, request
from flask.typing import ResponseReturnValue

from daemon.web.context import settings
from daemon.web.errors import json_error

REALM = 'Basic realm="registry-janitor"'
F = TypeVar("F", bound=Callable[..., Any])


def admin_token() -> str | None:
    token = settings().server.admin_token
    return token.get_secret_value() if token is not None else None


def presented_credential() -> tuple[str, str] | None:
    """(user, secret) from the Authorization header: Bearer gives user ``admin``; Basic any user."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return "admin", value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        if sep:
            return (user.strip() or "admin"), password
    return None


def refusal() -> ResponseReturnValue | None:
    """None when the request carries the admin token; otherwise the answer to send."""
    expected = admin_token()
    if expected is None:
        return json_error(503, "admin_token_unset",
                          "admin routes are disabled: set server.admin_token (e.g. admin_token: "
                          "${JANITOR_ADMIN_TOKEN}) and restart")
    given = presented_credential()
    if given is None or not hmac.compare_digest(given[1].encode(), expected.encode()):
        return json_error(401, "unauthorized",
                          "send the admin token: 'Authorization: Bearer <server.admin_token>', or HTTP "
                          "Basic with it as the password", WWW_Authenticate=REALM)
    g.janitor_admin = given[0]
    return None


def admin_name() -> str:
    """Who is acting, for notes like 'approved by alice': the Basic user name, else ``admin``."""
    return str(g.get("janitor_admin", "admin"))


def admin_required(view: F) -> F:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        refused = refusal()
        if refused is not None:
            return refused
        return view(*args, **kwargs)

    return cast(F, wrapped)
