"""How a failure reads where people see it: a short code, then one sentence
(``registry_unreachable: registry unreachable at http://127.0.0.1:5000: connection refused``). The whole
exception, with the library's own wording, is for the log (``failure_detail``), never for a stored reason.

Owns: the one translation of a ``requests`` exception (connection refused or reset, DNS failure, timeout,
TLS, an answer cut off) into a code and a sentence (``connection_failure``), used for the registry and
for GitLab's API alike; the stored reason of an untag or request that failed with an exception
(``failure_reason``). Must not: send requests, or decide whether to retry.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from daemon.registry.errors import RegistryError

#: Codes of a request that got no answer.
UNREACHABLE, TIMEOUT, TLS_ERROR = "unreachable", "timeout", "tls_error"
#: Longest sentence kept in a stored reason (what is cut is in the log).
MAX_SENTENCE = 400
_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-f]+>|\b[A-Za-z]+(Pool|Connection|Error)\(")


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url`` (what a person needs to find the server), without path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.scheme and parts.netloc else url


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception behind it: causes, contexts, urllib3's ``reason`` and wrapped args."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        yield current
        reason = getattr(current, "reason", None)
        found = [reason, current.__cause__, current.__context__, *current.args]
        todo.extend(e for e in found if isinstance(e, BaseException))


def _tls_problem(causes: list[BaseException]) -> str:
    for exc in causes:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"certificate not trusted ({exc.verify_message})" if exc.verify_message else \
                "certificate not trusted"
        if isinstance(exc, ssl.SSLError) and exc.reason:
            return str(exc.reason).lower().replace("_", " ")
    return "TLS handshake failed"


def _socket_problem(causes: list[BaseException], host: str) -> str:
    for exc in causes:
        if isinstance(exc, socket.gaierror | urllib3.exceptions.NameResolutionError):
            return f"host name {host} could not be resolved (DNS)"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
            return "connection reset by the server"
        if isinstance(exc, urllib3.exceptions.ProtocolError | requests.exceptions.ChunkedEncodingError) \
                or type(exc).__name__ == "RemoteDisconnected":
            return "the server closed the connection before answering in full"
        if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH,
                                                      errno.EADDRNOTAVAIL):
            return os.strerror(exc.errno).lower()
    return "connection failed"


def connection_problem(exc: requests.RequestException, timeout: float | None = None) -> tuple[str, str]:
    """(kind, words) for a request that got no answer: ``unreachable`` (refused, reset, DNS, no route),
    ``timeout`` or ``tls_error``, and a few words a person reads (``connection refused``)."""
    causes = list(_causes(exc))
    url = exc.request.url if exc.request is not None else None
    host = urlsplit(url or "").hostname or "?"
    within = f" within {timeout:g}s" if timeout else ""
    if isinstance(exc, requests.exceptions.SSLError) or any(isinstance(e, ssl.SSLError) for e in causes):
        return TLS_ERROR, f"TLS failed: {_tls_problem(causes)}"
    if isinstance(exc, requests.ConnectTimeout):
        return TIMEOUT, f"no connection{within}"
    if isinstance(exc, requests.Timeout):
        return TIMEOUT, f"no answer{within}"
    return UNREACHABLE, _socket_problem(causes, host)


def connection_failure(exc: requests.RequestException, url: str, *, server: str = "registry",
                       timeout: float | None = None) -> tuple[str, str]:
    """(code, sentence) for a request to ``url`` that got no answer, e.g. (``registry_unreachable``,
    ``registry unreachable at http://127.0.0.1:5000: connection refused``); ``server`` names it (the
    registry, or its token service)."""
    kind, words = connection_problem(exc, timeout)
    at, prefix = origin(url), server.replace(" ", "_")
    if kind == UNREACHABLE:
        return f"{prefix}_unreachable", f"{server} unreachable at {at}: {words}"
    if kind == TIMEOUT:
        return f"{prefix}_timeout", f"{server} at {at} timed out: {words}"
    return f"{prefix}_tls_error", f"{server} at {at}: {words}"


def sentence(text: str) -> str:
    """``text`` on one line, at most ``MAX_SENTENCE`` characters."""
    one = " ".join(text.split())
    return one if len(one) <= MAX_SENTENCE else one[: MAX_SENTENCE - 1].rstrip() + "…"


def failure_reason(exc: BaseException) -> str:
    """The stored reason of an untag or request that failed with ``exc``: ``<code>: <one sentence>``."""
    code, text = failure_parts(exc)
    return f"{code}: {text}"


def failure_parts(exc: BaseException) -> tuple[str, str]:
    """(code, sentence) of ``exc``. The registry's errors carry their code; a bare ``requests`` exception
    is read by ``connection_failure``; anything else is ``unexpected_error``, named by its type when its
    text is a library's repr (that text is for the log)."""
    if isinstance(exc, RegistryError):
        return exc.code, sentence(str(exc) or type(exc).__name__)
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return connection_failure(exc, exc.request.url if exc.request is not None and exc.request.url else "?")
    text = str(exc)
    if not text or _REPR.search(text):
        return "unexpected_error", f"{type(exc).__name__} (the worker's log has the details)"
    return "unexpected_error", sentence(text)


def failure_detail(exc: BaseException) -> str:
    """Everything ``exc`` says, with the exceptions it was raised from, for the log."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and not any(current is c for c in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return " <- ".join(f"{type(e).__name__}: {e}" for e in chain)
