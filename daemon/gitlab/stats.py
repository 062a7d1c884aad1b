"""GitLab API request counters and latency, per endpoint and status, added to storage as they happen.

:func:`observe_session` times every request a ``requests.Session`` sends (status 0 when no answer came) and
hands the endpoint, status and seconds to an observer; :class:`GitLabStats` is that observer: it adds
each request to storage at once (the web's CI gate and the worker's catch-up both ask GitLab, and any web
process answers ``/metrics``), keeping what storage refused for the next request.

The endpoint is a name from a fixed list (``jobs``, ``projects``, ``merge_requests``, ``notes``,
``pipelines``, ``branches``, ``hooks``, ...), never a URL with ids or paths in it, so the label stays small.
Must not: send requests itself, or let a storage failure fail the request it counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests

from daemon.domain.measures import Buckets, Counts, RequestTally

log = logging.getLogger(__name__)

GitLabObserver = Callable[[str, int, float], None]

#: Path segments that name a collection in GitLab's REST API (each followed by an id, except those in
#: ``_NO_ID``), mapped to the endpoint label.
_RESOURCES = {"job": "jobs", "jobs": "jobs", "projects": "projects", "merge_requests": "merge_requests",
              "notes": "notes", "pipelines": "pipelines", "branches": "branches", "hooks": "hooks",
              "groups": "groups", "personal_access_tokens": "personal_access_tokens",
              "repositories": "registry_repositories", "tags": "tags", "user": "user", "version": "version"}
_NO_ID = {"job", "user", "version"}
#: Segments that group collections without an id of their own (``repository/branches``,
#: ``registry/repositories``).
_GROUPING = {"repository", "registry"}
OTHER = "other"


def endpoint_of(url: str) -> str:
    """The endpoint label of a GitLab API URL: ``.../api/v4/projects/g%2Fapp/merge_requests/7/notes`` is
    ``notes``; ``.../registry/repositories/3/tags/v1`` is ``registry_tags``; anything else ``other``."""
    path = urlsplit(url).path
    _, found, rest = path.partition("/api/v4/")
    if not found:
        return OTHER
    segments = [s for s in rest.split("/") if s]
    endpoint, registry, i = OTHER, False, 0
    while i < len(segments):
        segment = segments[i]
        if segment in _GROUPING:
            registry = registry or segment == "registry"
            i += 1
            continue
        label = _RESOURCES.get(segment)
        if label is None:
            return OTHER
        endpoint = "registry_tags" if label == "tags" and registry else label
        i += 1 if segment in _NO_ID else 2
    return endpoint


def observe_session(session: requests.Session, observer: GitLabObserver) -> requests.Session:
    """Time every request ``session`` sends (python-gitlab sends through ``Session.request``) and tell
    ``observer`` the endpoint, the status (0 when no answer came) and the seconds it took."""
    send = session.request

    def request(method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        started = time.monotonic()
        status = 0
        try:
            response = send(method, url, *args, **kwargs)
            status = response.status_code
            return response
        finally:
            target = url.decode() if isinstance(url, bytes) else str(url)
            observer(endpoint_of(target), status, time.monotonic() - started)

    session.request = request  # type: ignore[method-assign]
    return session


class GitLabObservationSink(Protocol):
    def add_gitlab_observations(self, counts: Counts, buckets: Buckets) -> None: ...


class GitLabStats:
    """An observer for :func:`observe_session` that adds each request to ``sink`` (the store) at once;
    counts storage did not take are kept and added with the next request."""

    def __init__(self, sink: GitLabObservationSink) -> None:
        self.sink = sink
        self._tally = RequestTally()

    def __call__(self, endpoint: str, status: int, seconds: float) -> None:
        self._tally.observe(endpoint, status, seconds)
        self.flush()

    def flush(self) -> int:
        """Add what was counted and not yet stored; returns how many requests (0 when storage failed:
        they are kept for the next flush)."""
        try:
            return self._tally.hand_over(self.sink.add_gitlab_observations)
        except Exception as exc:
            log.warning("GitLab request counters not stored (kept for the next request): %s", exc)
            return 0
