"""Bearer token auth for the registry: reading the challenge, asking the token service, caching tokens.

Owns: parsing ``WWW-Authenticate``, the GET to the realm with HTTP Basic (the project's
``registry_token`` as password) and ``scope=repository:<repo>:pull,push,delete`` (only to a realm
``realms.TokenRealms`` allows, and never following a redirect away from it), and a thread-safe
cache per (project, repository) that keeps a token until ``margin`` before its lifetime ends. GitLab's
``/jwt/auth`` answers only ``{"token": ...}``, so the lifetime comes from ``expires_in`` when a token service
sends it, else from the JWT itself (``exp - iat``, or ``exp`` against the janitor's wall clock). Must not: decide
whether a repository is in scope (``project`` checks S6 before asking for any token), ever ask for
``*`` or for more than one repository per token, or log a token or a password.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.registry.errors import PermanentRegistryError, RegistryAuthError
from daemon.registry.realms import TokenRealms
from daemon.registry.transport import Transport, describe

TOKEN_USERNAME = "registry-janitor"
TOKEN_ACTIONS = "pull,push,delete"
#: The token spec's default when the service does not say ``expires_in``.
DEFAULT_TOKEN_LIFETIME = 60.0

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


@dataclass(frozen=True)
class Challenge:
    """A ``WWW-Authenticate`` header: scheme (lower case) and its parameters."""

    scheme: str
    params: dict[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")


def parse_challenge(header: str | None) -> Challenge | None:
    """``Bearer realm="https://gl/jwt/auth",service="container_registry"`` -> Challenge; None if absent."""
    if not header or not header.strip():
        return None
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()})


def scope_for(repository: str) -> str:
    return f"repository:{repository}:{TOKEN_ACTIONS}"


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The unverified claims of a JWT, only to read its lifetime and grants; None for opaque tokens.
    (The registry verifies the signature; the janitor only reads what it was given.)"""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    return payload if isinstance(payload, dict) else None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def token_lifetime(answer: dict[str, Any], token: str, now: float | None = None) -> float:
    """Seconds the token is valid: ``expires_in``, else the JWT's ``exp - iat``, else its ``exp - now``
    (``now``: the janitor's wall clock, Unix seconds), else the spec's 60.

    ``exp - iat`` is measured on the issuer's clock alone, so it is preferred; ``exp - now`` trusts the
    two clocks to agree, and an ``exp`` already past by the janitor's clock falls back to the 60."""
    expires_in = _number(answer.get("expires_in"))
    if expires_in is not None and expires_in > 0:
        return expires_in
    claims = _jwt_claims(token)
    if claims is not None:
        exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
        if exp is not None and iat is not None and exp > iat:
            return exp - iat
        if exp is not None and iat is None and now is not None and exp > now:
            return exp - now
    return DEFAULT_TOKEN_LIFETIME


def granted_actions(token: str, repository: str) -> frozenset[str] | None:
    """The actions a registry token grants on ``repository``, read from its JWT ``access`` claim; None
    when the token says nothing the janitor can read (an opaque token).

    GitLab's ``/jwt/auth`` never refuses an action it will not grant: it issues a token with fewer
    actions (``app/services/auth/container_registry_authentication_service.rb``), so what was asked for
    says nothing about what may be done.
    """
    claims = _jwt_claims(token)
    if claims is None or not isinstance(claims.get("access"), list):
        return None
    granted: set[str] = set()
    for entry in claims["access"]:
        if (isinstance(entry, dict) and entry.get("type") == "repository" and entry.get("name") == repository
                and isinstance(entry.get("actions"), list)):
            granted.update(a for a in entry["actions"] if isinstance(a, str))
    return frozenset(granted)


@dataclass
class _Cached:
    token: str
    valid_until: float


class TokenCache:
    """Tokens per (project, repository); one fetch at a time per key, so threads never ask twice."""

    def __init__(self, clock: Callable[[], float], margin: float) -> None:
        self._clock = clock
        self._margin = margin
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str], _Cached] = {}
        self._fetching: dict[tuple[str, str], threading.Lock] = {}

    def get(self, key: tuple[str, str], fetch: Callable[[], tuple[str, float]]) -> tuple[str, bool]:
        """(token, fresh): the cached token, or a new one from ``fetch`` (then ``fresh`` is True)."""
        cached = self._valid(key)
        if cached is not None:
            return cached, False
        with self._lock:
            key_lock = self._fetching.setdefault(key, threading.Lock())
        with key_lock:
            cached = self._valid(key)
            if cached is not None:
                return cached, False
            token, lifetime = fetch()
            # Keep it until `margin` before expiry; a lifetime shorter than the margin keeps half of it.
            keep = max(lifetime - self._margin, lifetime / 2)
            with self._lock:
                self._tokens[key] = _Cached(token, self._clock() + keep)
            return token, True

    def peek(self, key: tuple[str, str]) -> str | None:
        """The cached token for ``key`` while it is valid; never fetches."""
        return self._valid(key)

    def invalidate(self, key: tuple[str, str], token: str) -> None:
        """Forget ``token`` for ``key`` (unless another thread already replaced it)."""
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.token == token:
                del self._tokens[key]

    def _valid(self, key: tuple[str, str]) -> str | None:
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and self._clock() < cached.valid_until:
                return cached.token
            return None


def fetch_token(
    transport: Transport, challenge: Challenge, project_path: str, repository: str, registry_token: str,
    *, realms: TokenRealms,
) -> tuple[str, float]:
    """Ask the challenge's realm for a token on one repository; returns (token, lifetime in seconds).

    ``TokenRealmRefusedError`` before anything is sent when ``realms`` does not allow the realm; a
    redirect from the token service is not followed (the credential would go along)."""
    if not challenge.realm:
        raise RegistryAuthError(f"the registry's Bearer challenge names no realm: {challenge.params}")
    realms.check(challenge.realm)
    params = {"scope": scope_for(repository)}
    if challenge.service:
        params["service"] = challenge.service
    resp = transport.send("GET", challenge.realm, params=params, auth=(TOKEN_USERNAME, registry_token), limited=False,
                          follow_redirects=False)
    if resp.is_redirect:
        raise RegistryAuthError(
            f"the token service {challenge.realm} redirected to {resp.headers.get('Location')!r}; the janitor "
            "sends a project's registry_token only to the realm itself; set the registry's auth.token.realm "
            "to the address it redirects to",
            status=resp.status_code,
        )
    if resp.status_code in (401, 403):
        raise RegistryAuthError(
            f"the token service {challenge.realm} refused project {project_path}'s credential "
            f"({describe(resp)}); check the project's registry_token",
            status=resp.status_code,
        )
    if resp.status_code != 200:
        raise PermanentRegistryError(
            f"token service {challenge.realm} answered {describe(resp)} for {repository}",
            status=resp.status_code,
        )
    try:
        answer = resp.json()
    except ValueError as exc:
        raise PermanentRegistryError(f"token service {challenge.realm} answered no JSON") from exc
    token = answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        raise RegistryAuthError(
            f"token service {challenge.realm} gave project {project_path} no token for {repository}; "
            "check the project's registry_token"
        )
    return token, token_lifetime(answer, token, transport.wall_time())
