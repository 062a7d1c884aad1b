"""The GitLab lookups the webhook and CI paths make: verifying a CI job token (``GET /api/v4/job``) and
asking whether a branch still exists (S4's live-owner lookups), each with a bounded cache.

Owns: building python-gitlab clients (:func:`connect`), :class:`TTLCache`, and :class:`GitLab`, the base
client :class:`daemon.gitlab.api.GitLabAPI` extends.
Must not: answer "deleted" for a branch it could not ask about (a token that cannot see the project gets a
404 for every branch: that is "unknown", None, which callers treat as live), or map python-gitlab's
exceptions itself (``daemon.gitlab.errors`` does).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Self
from urllib.parse import urlsplit

import gitlab
import requests

from daemon.config import GitLabSettings
from daemon.domain.events import time_or_none
from daemon.domain.model import Job
from daemon.errors import GitLabError, JobTokenError
from daemon.gitlab.errors import GitLabAPIError, gitlab_errors, job_token_errors
from daemon.gitlab.stats import GitLabObserver, observe_session


def connect(url: str, *, private_token: str | None = None, job_token: str | None = None,
            timeout: float = 10.0, session: requests.Session | None = None) -> gitlab.Gitlab:
    """A python-gitlab client that never retries on its own (the worker and the callers decide when)."""
    return gitlab.Gitlab(url, private_token=private_token, job_token=job_token, timeout=timeout,
                         session=session, retry_transient_errors=False)


def project_path_from_job_url(gitlab_url: str, web_url: str) -> str | None:
    """``https://gitlab.example.com/group/app/-/jobs/8`` -> ``group/app`` (GitLab may live under a path)."""
    base = urlsplit(gitlab_url).path.rstrip("/")
    path = urlsplit(web_url).path
    if base and path.startswith(base + "/"):
        path = path[len(base):]
    head, sep, _ = path.partition("/-/jobs/")
    return head.strip("/") or None if sep else None


class TTLCache:
    """A small thread-safe cache with a time to live and a size bound (least recently used goes)."""

    def __init__(self, ttl: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.size, self.clock = ttl, size, clock
        self._data: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is None or hit[0] < self.clock():
                self._data.pop(key, None)
                return None
            self._data.move_to_end(key)
            return hit[1]

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key] = (self.clock() + self.ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


class GitLab:
    """One GitLab (``gitlab.url``): job tokens verified and branch answers kept for a while, so a burst of
    CI calls or events costs GitLab one request per job and per branch."""

    def __init__(self, url: str, *, api_token: str | None = None, timeout: float = 10.0,
                 session: requests.Session | None = None, job_cache_ttl: float = 60.0,
                 job_refusal_ttl: float = 60.0, ref_cache_ttl: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, observer: GitLabObserver | None = None) -> None:
        self.url = url.rstrip("/")
        self.api_token = api_token
        self.timeout = timeout
        self.session = session or requests.Session()
        if observer is not None:  # every request counted and timed (GitLabStats: janitor_gitlab_requests_total)
            observe_session(self.session, observer)
        self._jobs = TTLCache(job_cache_ttl, 4096, clock)
        #: Tokens GitLab refused, by hash, with what it said: asked again only once ``job_refusal_ttl`` passed.
        self._refused_jobs = TTLCache(job_refusal_ttl, 4096, clock)
        self._refs = TTLCache(ref_cache_ttl, 8192, clock)

    @classmethod
    def from_settings(cls, settings: GitLabSettings, observer: GitLabObserver | None = None) -> Self:
        """A client for the configured GitLab (``gitlab.url``, ``api_token``, ``timeout``); ``observer`` is
        told of every request it sends."""
        token = settings.api_token.get_secret_value() if settings.api_token else None
        return cls(settings.url, api_token=token, timeout=settings.timeout, observer=observer)

    def _client(self, *, private_token: str | None = None, job_token: str | None = None) -> gitlab.Gitlab:
        return connect(self.url, private_token=private_token, job_token=job_token, timeout=self.timeout,
                       session=self.session)

    def verify_job(self, job_token: str) -> Job:
        """The job this token belongs to, as GitLab says; JobTokenError if GitLab refuses it, GitLabError
        if GitLab cannot say. Answers are kept: a job for ``job_cache_ttl``, a refusal for
        ``job_refusal_ttl`` (the same wrong token again costs GitLab nothing)."""
        key = hashlib.sha256(job_token.encode()).hexdigest()
        cached = self._jobs.get(key)
        if cached is not None:
            return cached
        refused = self._refused_jobs.get(key)
        if refused is not None:
            raise JobTokenError(refused)
        try:
            with job_token_errors(self.url):
                data = self._client(job_token=job_token).http_get("/job")
        except JobTokenError as exc:
            self._refused_jobs.put(key, str(exc))
            raise
        job = self._job(data)
        self._jobs.put(key, job)
        return job

    def _job(self, data: Any) -> Job:
        try:
            pipeline = data["pipeline"]
            path = project_path_from_job_url(self.url, data.get("web_url", ""))
            if not path:
                raise KeyError("web_url")
            return Job(id=int(data["id"]), project_id=int(pipeline["project_id"]), project_path=path,
                       pipeline_id=int(pipeline["id"]), ref=str(pipeline.get("ref") or data["ref"]),
                       sha=str(pipeline.get("sha") or ""), is_tag=bool(data.get("tag")),
                       status=str(data.get("status") or ""), started_at=time_or_none(data.get("started_at")))
        except (KeyError, TypeError, ValueError) as exc:
            raise GitLabError(f"GitLab's job answer lacks {exc}; is gitlab.url right?") from None

    def branch_exists(self, project_path: str, branch: str, token: str | None, *,
                      fresh: bool = False) -> bool | None:
        """True/False from GitLab, None when it cannot be asked (no token, unreachable, token refused, project
        hidden from the token): callers treat None as live, the safe side. Answers are kept a while;
        ``fresh`` asks GitLab again (and keeps the new answer)."""
        token = self.api_token or token
        if not token:
            return None
        key = f"{project_path}\0{branch}"
        cached = None if fresh else self._refs.get(key)
        if cached is not None:
            return bool(cached)
        client = self._client(private_token=token)
        try:
            with gitlab_errors(f"look up branch {branch} of {project_path}", subject=project_path, url=self.url):
                client.projects.get(project_path, lazy=True).branches.get(branch)
            exists = True
        except GitLabAPIError as exc:
            if exc.status != 404 or not self._sees_project(client, project_path):
                return None  # a token that cannot see the project gets 404 for every branch too
            exists = False
        self._refs.put(key, exists)
        return exists

    def _sees_project(self, client: gitlab.Gitlab, project_path: str) -> bool:
        try:
            with gitlab_errors(f"read project {project_path}", subject=project_path, url=self.url):
                client.projects.get(project_path)
            return True
        except GitLabAPIError:
            return False
