"""Which token services may be sent a project's ``registry_token``: the realm a registry's challenge names.

Owns the rule (SPEC 14): the realm's origin (scheme, host and port) is ``gitlab.url``'s, or one of those
listed in ``registry.token_realms``; and it is https unless its host is loopback (127.0.0.0/8, ::1,
``localhost``). GitLab's token service is ``/jwt/auth`` on GitLab itself whatever host the registry has
(``registry.gitlab.com`` names ``https://gitlab.com/jwt/auth``; a self-managed registry on its own host
names GitLab's), so ``gitlab.url`` alone covers GitLab's registries. A realm with user info, a backslash,
white space or a port that is not a number is never trusted: the host the janitor would compare is then
not surely the host a request would reach. Must not: send anything, or read config (``wiring`` passes
``gitlab.url`` and ``registry.token_realms`` as plain values).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from daemon.domain.names import is_loopback
from daemon.registry.errors import TokenRealmRefusedError

#: Origins are (scheme, host, port) with the scheme's default port filled in.
Origin = tuple[str, str, int]

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: How much of a refused realm a message shows (it comes from the registry, not from the operator).
_SHOWN = 200


def origin(url: str) -> Origin | None:
    """``(scheme, host, port)`` of an absolute http(s) URL (host in lower case, default port filled in);
    None for anything else, or for a URL whose host is not plain (user info, backslash, white space)."""
    if not url or any(ch.isspace() or not ch.isprintable() or ch == "\\" for ch in url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or "@" in parts.netloc or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def transport_refusal(url: str) -> str | None:
    """Why a credential may not be sent to ``url`` whatever the allow-list says (not an http(s) URL
    with a plain host, or plain http to a host that is not loopback); None when it may."""
    found = origin(url)
    if found is None:
        return "is not an http(s) URL with a plain host name"
    scheme, host, _ = found
    if scheme != "https" and not is_loopback(host):
        return "is plain http to a host that is not loopback"
    return None


def _netloc(found: Origin) -> str:
    scheme, host, port = found
    shown = f"[{host}]" if ":" in host else host
    return shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"


class TokenRealms:
    """The token services a project's ``registry_token`` may go to: ``gitlab_url``'s origin and each of
    ``listed`` (URLs or bare origins; only their origin counts)."""

    def __init__(self, gitlab_url: str, listed: Iterable[str] = ()) -> None:
        self.gitlab_url = gitlab_url
        self.listed = tuple(listed)
        self._gitlab = origin(gitlab_url)
        self._allowed = frozenset(o for o in (self._gitlab, *map(origin, self.listed)) if o is not None)

    def __repr__(self) -> str:
        return f"TokenRealms({self.gitlab_url!r}, {self.listed!r})"

    def refusal(self, realm: str) -> str | None:
        """Why the registry credential may not be sent to ``realm`` (a message naming the fix); None when
        it may."""
        shown = realm if len(realm) <= _SHOWN and origin(realm) is not None else repr(realm[:_SHOWN])
        why = transport_refusal(realm)
        if why is not None:
            return (f"the registry's token service {shown} {why}; the janitor sends a project's registry_token "
                    "only over https (or to a loopback address), so it was not sent")
        if origin(realm) in self._allowed:
            return None
        home = _netloc(self._gitlab) if self._gitlab is not None else repr(self.gitlab_url)
        return (f"the registry's token service {shown} is not on gitlab.url's host ({home}); add it to "
                "registry.token_realms if it is yours (the project's registry_token was not sent to it)")

    def check(self, realm: str, *, status: int | None = None) -> None:
        """Raise ``TokenRealmRefusedError`` unless the registry credential may be sent to ``realm``."""
        why = self.refusal(realm)
        if why is not None:
            raise TokenRealmRefusedError(why, realm=realm, status=status)
