"""Sending one HTTP request to the registry (or its token service) with rate limiting and retries.

Owns: the limiter call before every registry request, ``429`` with ``Retry-After`` (seconds or an HTTP
date), exponential backoff with full jitter for 5xx and connection errors, and turning a final
unsuccessful answer into the error tree (a request that got no answer reads as
``daemon.registry.failures.connection_failure`` says: ``registry unreachable at http://host:port:
connection refused``, the library's exception kept as the cause). Must not: know about tokens, scopes
or untag methods (that is ``auth``, ``project`` and ``untag``), or sleep any way but through the injected ``sleep``.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import requests

from daemon.registry.errors import PermanentRegistryError, RegistryError, TransientRegistryError
from daemon.registry.failures import connection_failure
from daemon.registry.ratelimit import RateLimiter

log = logging.getLogger(__name__)

#: Called after every answer (or connection failure, status 0) with (HTTP method, status, seconds).
Observer = Callable[[str, int, float], None]


@dataclass
class RetryPolicy:
    max_retries: int = 4
    backoff_base: float = 0.2
    backoff_cap: float = 5.0
    #: A ``Retry-After`` longer than this is not slept through: the item fails as transient instead.
    max_retry_after: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        return self.rng.uniform(0.0, min(self.backoff_cap, self.backoff_base * (2**attempt)))


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (a wall-clock timestamp); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def error_codes(resp: requests.Response) -> tuple[str, ...]:
    """The registry's error codes from an ``{"errors": [{"code": ...}]}`` body (empty if none)."""
    try:
        body = resp.json()
    except ValueError:
        return ()
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return ()
    return tuple(str(e["code"]) for e in errors if isinstance(e, dict) and "code" in e)


def describe(resp: requests.Response) -> str:
    """A short text for an unsuccessful answer: status plus the registry's error codes or body start
    (on one line)."""
    codes = error_codes(resp)
    body = " ".join(resp.text[:120].split())
    detail = ", ".join(codes) if codes else (resp.reason or "") if body.startswith("<") else body  # an HTML page
    return f"HTTP {resp.status_code}" + (f" {detail}" if detail else "")


def raise_for_status(resp: requests.Response, what: str) -> None:
    """Raise the error-tree exception for a non-2xx answer; ``what`` names the operation for the message."""
    if resp.status_code < 300:
        return
    cls = TransientRegistryError if resp.status_code >= 500 or resp.status_code == 429 else (PermanentRegistryError)
    raise cls(f"{what}: registry answered {describe(resp)}", status=resp.status_code, codes=error_codes(resp))


class Transport:
    """One keep-alive session, the limiter and the retry policy; thread safe as ``requests.Session`` is."""

    def __init__(
        self,
        session: requests.Session,
        *,
        limiter: RateLimiter | None,
        policy: RetryPolicy,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
        timeout: float = 30.0,
        observer: Observer | None = None,
    ) -> None:
        self.session = session
        self.limiter = limiter
        self.policy = policy
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self.timeout = timeout
        self._observer = observer

    def wall_time(self) -> float:
        """The janitor's wall-clock time (Unix seconds), to read absolute times a server sent."""
        return self._wall_clock()

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        limited: bool = True,
        follow_redirects: bool = True,
    ) -> requests.Response:
        """Send until an answer that is neither 429 nor 5xx, or raise ``TransientRegistryError``.

        Every other answer (2xx, 401, 404, other 4xx) is returned for the caller to interpret.
        ``limited`` is False only for the token service, which is not the registry; so is
        ``follow_redirects`` (a 3xx is then returned as it came).
        """
        policy = self.policy
        for attempt in range(policy.max_retries + 1):
            last = attempt == policy.max_retries
            if limited and self.limiter is not None:
                self.limiter.acquire()
            started = self._clock()
            try:
                resp = self.session.request(
                    method,
                    url,
                    headers=dict(headers or {}),
                    data=data,
                    params=params,
                    auth=auth,
                    timeout=self.timeout,
                    allow_redirects=follow_redirects,
                )
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                self._observe(method, 0, started)
                if last:
                    code, sentence = connection_failure(exc, url, timeout=self.timeout,
                                                        server="registry" if limited else "token service")
                    log.debug("%s %s: no answer after %d attempts: %s", method, url, attempt + 1, exc)
                    raise TransientRegistryError(sentence, code=code) from exc
                self._pause(policy.backoff(attempt), f"{method} {url}: {exc.__class__.__name__}")
                continue
            except requests.RequestException as exc:
                raise RegistryError(f"the request {method} {url} could not be sent ({type(exc).__name__})"
                                    ) from exc
            self._observe(method, resp.status_code, started)
            if resp.status_code == 429:
                delay = retry_after_seconds(resp.headers.get("Retry-After"), self._wall_clock())
                if delay is not None and delay > policy.max_retry_after:
                    raise TransientRegistryError(
                        f"{method} {url}: rate limited by the registry, Retry-After {delay:.0f}s; "
                        "lower registry.requests_per_second",
                        status=429,
                        codes=error_codes(resp),
                        code="registry_rate_limited",
                    )
                if last:
                    raise TransientRegistryError(
                        f"{method} {url}: still rate limited (429) after {attempt + 1} attempts; "
                        "lower registry.requests_per_second",
                        status=429,
                        codes=error_codes(resp),
                        code="registry_rate_limited",
                    )
                self._pause(policy.backoff(attempt) if delay is None else delay, f"{method} {url}: 429")
                continue
            if resp.status_code >= 500:
                if last:
                    raise TransientRegistryError(
                        f"{method} {url}: registry answered {describe(resp)} after {attempt + 1} attempts",
                        status=resp.status_code,
                        codes=error_codes(resp),
                    )
                # a 503 may say when to come back; otherwise back off, never longer than the cap allows
                hint = retry_after_seconds(resp.headers.get("Retry-After"), self._wall_clock())
                delay = policy.backoff(attempt) if hint is None else min(hint, policy.max_retry_after)
                self._pause(delay, f"{method} {url}: HTTP {resp.status_code}")
                continue
            return resp
        raise AssertionError("unreachable: the last attempt always returns or raises")

    def _pause(self, seconds: float, why: str) -> None:
        log.debug("retrying in %.2fs after %s", seconds, why)
        self._sleep(seconds)

    def _observe(self, method: str, status: int, started: float) -> None:
        if self._observer is not None:
            self._observer(method, status, self._clock() - started)
