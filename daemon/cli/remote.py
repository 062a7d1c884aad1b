"""The admin commands' way to a running janitor: its admin API (``--url``/``$JANITOR_URL``, with the admin
token from ``--token``/``$JANITOR_ADMIN_TOKEN`` as a Bearer token).

``RemoteJanitor`` answers the same questions as the local store does for ``daemon.cli.admin`` (the status
snapshot, plans, untags, operator and reconcile requests) with the very JSON documents the API sends, so
one renderer prints both. Every refusal becomes a ``CommandFailed`` with the janitor's own message and the
exit code the command ends with. Must not: decide anything; the daemon that answers does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import requests

#: The API's largest page (``daemon.web.api.MAX_LIMIT``); longer lists are read page by page.
PAGE = 500
TIMEOUT = (5.0, 30.0)


class CommandFailed(Exception):
    """An admin command cannot go on: ``message`` says why and what to do; the command exits ``exit_code``.
    ``status`` is the HTTP status the janitor answered with, when it answered."""

    def __init__(self, message: str, exit_code: int = 1, status: int | None = None) -> None:
        super().__init__(message)
        self.message, self.exit_code, self.status = message, exit_code, status


def base_url(url: str) -> str:
    """``url`` without a trailing slash; CommandFailed (exit 2) unless it is an http(s) URL with a host."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise CommandFailed(f"--url {url[:200]!r} is not the janitor's base URL; give one like "
                            "https://janitor.example.com", 2)
    return url.strip().rstrip("/")


class RemoteJanitor:
    """The admin API of the janitor at ``url``."""

    def __init__(self, url: str, token: str | None, session: requests.Session | None = None,
                 timeout: tuple[float, float] = TIMEOUT) -> None:
        self.url = base_url(url)
        if not token:
            raise CommandFailed(f"give the admin token of the janitor at {self.url}: --token T or "
                                "$JANITOR_ADMIN_TOKEN (its server.admin_token)", 2)
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    # HTTP ------------------------------------------------------------------------------------------
    def call(self, method: str, path: str, *, params: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None) -> Any:
        """The JSON document the janitor answers; CommandFailed when it cannot be reached or refuses."""
        try:
            response = self.session.request(method, self.url + path, params=params, json=body,
                                            timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise CommandFailed(f"cannot reach the janitor at {self.url}: {exc}", 1) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.ok and data is not None:
            return data
        message = data.get("message") if isinstance(data, dict) else None
        status = response.status_code
        if response.ok or not isinstance(message, str):
            raise CommandFailed(f"the janitor at {self.url} answered {method} {path} with HTTP {status} and no "
                                "admin API answer; is the URL the janitor's base URL (no /api/v1)?", 1, status)
        if status in (401, 403):
            raise CommandFailed(f"the janitor at {self.url} refused the admin token (HTTP {status}): {message} "
                                "(--token or $JANITOR_ADMIN_TOKEN)", 2, status)
        if status == 503 and isinstance(data, dict) and data.get("error") == "admin_token_unset":
            raise CommandFailed(f"the janitor at {self.url}: {message}", 2, status)
        raise CommandFailed(message, 2 if status == 400 else 1, status)

    def _pages(self, path: str, key: str, params: dict[str, Any], limit: int) -> Iterator[dict[str, Any]]:
        """Up to ``limit`` items of a paged list, newest first."""
        cursor: str | None = None
        left = limit
        while left > 0:
            page = self.call("GET", path, params={**params, "limit": min(left, PAGE),
                                                  **({"cursor": cursor} if cursor else {})})
            items = page.get(key) or []
            yield from items[:left]
            left -= len(items)
            cursor = page.get("next_cursor")
            if not cursor or not items:
                return

    # what the admin commands ask -------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = self.call("GET", "/api/v1/status")
        return data

    def worker(self) -> tuple[float | None, bool]:
        """(seconds since the worker's last heartbeat or None, fresh?) as the janitor judges it."""
        worker = self.status().get("worker") or {}
        return worker.get("heartbeat_age_seconds"), bool(worker.get("fresh"))

    def plans(self, state: str | None, project: str | None, limit: int) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("state", state), ("project", project)) if v is not None}
        return list(self._pages("/api/v1/plans", "plans", params, limit))

    def decide(self, plan_id: int, approve: bool) -> dict[str, Any]:
        data: dict[str, Any] = self.call("POST", f"/api/v1/plans/{plan_id}/{'approve' if approve else 'reject'}")
        return data

    def untags(self, project: str | None, since: float | None, outcome: str | None,
               limit: int) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("project", project), ("outcome", outcome),
                                    ("since", None if since is None else repr(since))) if v is not None}
        return list(self._pages("/api/v1/untags", "untags", params, limit))

    def restore(self, untag_id: int) -> tuple[dict[str, Any], bool, str]:
        """(the restore request, whether it is new, the image) once recorded."""
        accepted = self.call("POST", f"/api/v1/untags/{untag_id}/restore")
        req = accepted["request"]
        untag = self.call("GET", f"/api/v1/requests/{req['id']}").get("untag") or {}
        return req, bool(accepted.get("created")), untag.get("image") or f"untag {untag_id}"

    def request(self, request_id: int) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.call("GET", f"/api/v1/requests/{request_id}").get("request")
        return found

    def ask_reconcile(self, project: str | None) -> tuple[dict[str, Any], bool]:
        accepted = self.call("POST", "/api/v1/reconcile", body={"project": project})
        return accepted["request"], bool(accepted.get("created"))

    def reconcile_request(self, request_id: int) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.call("GET", f"/api/v1/reconcile/{request_id}").get("request")
        return found

    def close(self) -> None:
        self.session.close()
