"""The registry client: one per registry, handing out ``ProjectRegistry`` views scoped to one project.

Owns: building what every project on one registry shares (a ``RegistrySite``: the keep-alive session,
limiter and retries in a ``Transport``, the token cache, the remembered challenge, what the janitor has
learnt about the registry) and handing out views over it. Must not: send requests itself
(``ProjectRegistry`` does, each scoped to its project, S6), decide what to untag, or touch storage.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

import requests
from requests.adapters import HTTPAdapter

from daemon.registry.auth import TokenCache
from daemon.registry.project import ProjectRegistry
from daemon.registry.ratelimit import RateLimiter
from daemon.registry.realms import TokenRealms
from daemon.registry.site import RegistrySite
from daemon.registry.transport import Observer, RetryPolicy, Transport
from daemon.registry.types import TagDeleter

__all__ = ["UNTAG_LANES", "ProjectRegistry", "RegistryClient", "new_session"]

#: The untag lanes of the janitor's clients (``daemon.wiring``): a placeholder batch's tags are guarded
#: and parked four at a time over keep-alive connections, within the rate limit every request still
#: waits for. A client built without it works one tag after another.
UNTAG_LANES = 4


def new_session(pool_size: int = 16, user_agent: str = "registry-janitor") -> requests.Session:
    """A keep-alive session whose connection pool fits ``pool_size`` concurrent worker threads."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = user_agent
    return session


class RegistryClient:
    """One registry: its session, limiter, retries, challenge and tokens, shared by all threads.

    A project's ``registry_token`` goes only to a token service on ``gitlab_url``'s origin or on one of
    ``token_realms`` (``gitlab.url`` and ``registry.token_realms``; there is no default that trusts
    more), over https unless the realm is loopback."""

    def __init__(
        self,
        base_url: str,
        session: requests.Session,
        *,
        gitlab_url: str,
        token_realms: Sequence[str] = (),
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
        untag_lanes: int = 1,
    ) -> None:
        policy = RetryPolicy(max_retries, backoff_base, backoff_cap, max_retry_after, rng or random.Random())
        transport = Transport(
            session,
            limiter=limiter,
            policy=policy,
            sleep=sleep,
            clock=clock,
            wall_clock=wall_clock,
            timeout=timeout,
            observer=observer,
        )
        self.site = RegistrySite(
            base_url,
            transport,
            TokenCache(clock, token_margin),
            realms=TokenRealms(gitlab_url, token_realms),
            tag_deleter=tag_deleter,
            placeholder_batch=placeholder_batch,
            untag_lanes=untag_lanes,
        )

    def for_project(
        self, project_path: str, registry_token: str, *, tag_deleter: TagDeleter | None = None
    ) -> ProjectRegistry:
        """A view whose every request is scoped to ``project_path`` and authenticated with its token."""
        return ProjectRegistry(self.site, project_path, registry_token, tag_deleter or self.site.tag_deleter)
