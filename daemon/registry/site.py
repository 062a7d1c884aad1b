"""What every project view of one registry shares: where it is, how to reach it, and what was learnt about it.

Owns: the base URL, the ``Transport`` (session, limiter, retries), the token cache, the token services a
credential may go to (``TokenRealms``), the remembered Bearer challenge (only ever one whose realm those
allow), the default tag deleter, the placeholder batch size, the untag lanes (threads that guard and park
the tags of a placeholder batch side by side, sharing the session, tokens and limiter), and what the
janitor has learnt about the registry at run time (it cannot delete a tag, so ``auto`` parks tags on
placeholders; it does delete manifests, so the placeholder probe is done). Thread safe: every worker
thread's view reads and updates the same instance. Must not: send requests (the project view does,
scoped to its project, S6), hold any project's credential, or decide what to untag.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import requests

from daemon.registry.auth import Challenge, TokenCache, parse_challenge
from daemon.registry.errors import RegistryAuthError, TokenRealmRefusedError
from daemon.registry.realms import TokenRealms
from daemon.registry.transport import Transport
from daemon.registry.types import TagDeleter

log = logging.getLogger(__name__)


class RegistrySite:
    """One registry as every project sees it: its address, transport, tokens and learnt behaviour."""

    def __init__(
        self,
        base_url: str,
        transport: Transport,
        tokens: TokenCache,
        *,
        realms: TokenRealms,
        tag_deleter: TagDeleter | None = None,
        placeholder_batch: int = 50,
        untag_lanes: int = 1,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.transport = transport
        self.tokens = tokens
        #: Where a project's registry_token may be sent: a challenge naming another realm is refused.
        self.realms = realms
        self.tag_deleter = tag_deleter
        #: Most tags parked on one placeholder before it is deleted (bounds how long they show an empty
        #: image to someone pulling them).
        self.placeholder_batch = max(1, placeholder_batch)
        #: How many tags of a placeholder batch are guarded and parked at once (1: one after another).
        self.untag_lanes = max(1, untag_lanes)
        self._lanes: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._serves_without_token = False
        self._tag_delete_unsupported = False
        self._placeholder_delete_works = False

    def lanes(self) -> ThreadPoolExecutor | None:
        """The threads untags run in side by side (made on first use, kept for the site's life, so each
        lane keeps its keep-alive connection); None with one lane."""
        if self.untag_lanes < 2:
            return None
        with self._lock:
            if self._lanes is None:
                self._lanes = ThreadPoolExecutor(self.untag_lanes, thread_name_prefix="untag-lane")
            return self._lanes

    @property
    def auto_method(self) -> str:
        """What ``auto`` uses on this registry now: ``oci`` until the registry refused a tag delete."""
        with self._lock:
            return "placeholder" if self._tag_delete_unsupported else "oci"

    def remember_tag_delete_unsupported(self) -> None:
        """The registry refused a tag delete: from now on ``auto`` parks tags on placeholders."""
        with self._lock:
            self._tag_delete_unsupported = True

    @property
    def placeholder_delete_works(self) -> bool:
        """True once a placeholder was deleted here: tags are never parked where deletes are disabled."""
        with self._lock:
            return self._placeholder_delete_works

    def remember_placeholder_delete_works(self) -> None:
        """A placeholder was deleted here: later placeholder batches skip the probe."""
        with self._lock:
            self._placeholder_delete_works = True

    @property
    def challenge(self) -> Challenge | None:
        """The registry's Bearer challenge once a 401 taught it; None before (requests go without a token)."""
        with self._lock:
            return self._challenge

    @property
    def serves_without_token(self) -> bool:
        """True once the registry answered a request sent without a token with anything but 401 (a
        registry without auth): there is no token whose grants could be read."""
        with self._lock:
            return self._serves_without_token

    def remember_serves_without_token(self) -> None:
        with self._lock:
            self._serves_without_token = True

    def learn_challenge(self, resp: requests.Response) -> None:
        """Remember the registry's Bearer challenge so later requests send a token upfront.

        A challenge whose realm ``realms`` refuses raises ``TokenRealmRefusedError`` and is not
        remembered: the challenge known before (if any) stays, and no credential goes to that realm."""
        header = resp.headers.get("WWW-Authenticate")
        found = parse_challenge(header)
        if found is None or found.scheme != "bearer" or not found.realm:
            raise RegistryAuthError(
                f"registry {self.base_url} answered 401 with challenge {header!r}; the janitor supports "
                "Bearer token auth (GitLab's registry setup) only",
                status=401,
            )
        try:
            self.realms.check(found.realm, status=401)
        except TokenRealmRefusedError as exc:
            log.warning("registry %s: %s", self.base_url, exc)
            raise
        kept = {k: v for k, v in found.params.items() if k in ("realm", "service")}
        with self._lock:
            self._challenge = Challenge("bearer", kept)
