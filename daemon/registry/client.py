"""The registry client: one per registry, handing out ``ProjectRegistry`` views scoped to one project.

Owns what is shared by every project on one registry: the keep-alive session, limiter and retries (in a
``Transport``), the remembered auth challenge, the token cache, and what the janitor has learnt about the
registry (``auto`` found it cannot delete a tag; it does delete manifests). Must not: send requests
itself (``ProjectRegistry`` does, each scoped to its project, S6), decide what to untag, or touch storage.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import requests
from requests.adapters import HTTPAdapter

from daemon.registry.auth import Challenge, TokenCache, parse_challenge
from daemon.registry.errors import RegistryAuthError
from daemon.registry.project import ProjectRegistry
from daemon.registry.ratelimit import RateLimiter
from daemon.registry.transport import Observer, RetryPolicy, Transport
from daemon.registry.types import TagDeleter

__all__ = ["ProjectRegistry", "RegistryClient", "new_session"]


def new_session(pool_size: int = 16, user_agent: str = "registry-janitor") -> requests.Session:
    """A keep-alive session whose connection pool fits ``pool_size`` concurrent worker threads."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = user_agent
    return session


class RegistryClient:
    """One registry: its session, limiter, retries, challenge and tokens, shared by all threads."""

    def __init__(
        self,
        base_url: str,
        session: requests.Session,
        *,
        limiter: RateLimiter | None = None,
        max_retries: int = 4,
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        token_margin: float = 30.0,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        max_retry_after: float = 60.0,
        timeout: float = 30.0,
        observer: Observer | None = None,
        tag_deleter: TagDeleter | None = None,
        placeholder_batch: int = 50,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        policy = RetryPolicy(max_retries, backoff_base, backoff_cap, max_retry_after, rng or random.Random())
        self.transport = Transport(
            session,
            limiter=limiter,
            policy=policy,
            sleep=sleep,
            clock=clock,
            wall_clock=wall_clock,
            timeout=timeout,
            observer=observer,
        )
        self.tokens = TokenCache(clock, token_margin)
        self.tag_deleter = tag_deleter
        #: Most tags parked on one placeholder before it is deleted (bounds how long they show an empty
        #: image to someone pulling them).
        self.placeholder_batch = max(1, placeholder_batch)
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._tag_delete_unsupported = False
        self._placeholder_delete_works = False

    def for_project(
        self, project_path: str, registry_token: str, *, tag_deleter: TagDeleter | None = None
    ) -> ProjectRegistry:
        """A view whose every request is scoped to ``project_path`` and authenticated with its token."""
        return ProjectRegistry(self, project_path, registry_token, tag_deleter or self.tag_deleter)

    @property
    def auto_method(self) -> str:
        """What ``auto`` uses on this registry now: ``oci`` until the registry refused a tag delete."""
        with self._lock:
            return "placeholder" if self._tag_delete_unsupported else "oci"

    def remember_tag_delete_unsupported(self) -> None:
        with self._lock:
            self._tag_delete_unsupported = True

    @property
    def placeholder_delete_works(self) -> bool:
        """True once a placeholder was deleted here: tags are never parked where deletes are disabled."""
        with self._lock:
            return self._placeholder_delete_works

    def remember_placeholder_delete_works(self) -> None:
        with self._lock:
            self._placeholder_delete_works = True

    @property
    def challenge(self) -> Challenge | None:
        with self._lock:
            return self._challenge

    def learn_challenge(self, resp: requests.Response) -> None:
        """Remember the registry's Bearer challenge so later requests send a token upfront."""
        header = resp.headers.get("WWW-Authenticate")
        found = parse_challenge(header)
        if found is None or found.scheme != "bearer" or not found.realm:
            raise RegistryAuthError(
                f"registry {self.base_url} answered 401 with challenge {header!r}; the janitor supports "
                "Bearer token auth (GitLab's registry setup) only",
                status=401,
            )
        kept = {k: v for k, v in found.params.items() if k in ("realm", "service")}
        with self._lock:
            self._challenge = Challenge("bearer", kept)
