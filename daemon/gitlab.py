"""GitLab's API: the only module that imports python-gitlab.

Owns: verifying a CI job token (``GET /api/v4/job``) with a bounded cache, asking whether a branch still
exists (S4's live-owner lookups), listing merge requests for catching up, and project webhooks.
Raises :class:`daemon.errors.GitLabError` (or :class:`JobTokenError`) with a message saying what to do.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import gitlab
import gitlab.exceptions
import requests

from daemon.errors import GitLabError, JobTokenError


@dataclass(frozen=True)
class Job:
    """A running CI job as GitLab vouches for it: project, pipeline and ref come from GitLab only."""

    id: int
    project_id: int
    project_path: str
    pipeline_id: int
    ref: str
    sha: str
    is_tag: bool
    status: str


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
    def __init__(self, url: str, *, api_token: str | None = None, timeout: float = 10.0,
                 session: requests.Session | None = None, job_cache_ttl: float = 60.0,
                 ref_cache_ttl: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url.rstrip("/")
        self.api_token = api_token
        self.timeout = timeout
        self.session = session or requests.Session()
        self._jobs = TTLCache(job_cache_ttl, 4096, clock)
        self._refs = TTLCache(ref_cache_ttl, 8192, clock)

    def _client(self, *, private_token: str | None = None, job_token: str | None = None) -> gitlab.Gitlab:
        return gitlab.Gitlab(self.url, private_token=private_token, job_token=job_token,
                             timeout=self.timeout, session=self.session, retry_transient_errors=False)

    def verify_job(self, job_token: str) -> Job:
        """The job this token belongs to, as GitLab says; JobTokenError if GitLab refuses it."""
        key = hashlib.sha256(job_token.encode()).hexdigest()
        cached = self._jobs.get(key)
        if cached is not None:
            return cached
        try:
            data = self._client(job_token=job_token).http_get("/job")
        except gitlab.exceptions.GitlabAuthenticationError:
            raise JobTokenError("GitLab does not accept this job token (expired, or its job finished)") \
                from None
        except gitlab.exceptions.GitlabHttpError as exc:
            if exc.response_code in (401, 403, 404):
                raise JobTokenError(f"GitLab refused the job token ({exc.response_code})") from None
            raise GitLabError(f"GitLab could not verify the job token: {exc.error_message}") from exc
        except (requests.RequestException, gitlab.exceptions.GitlabError) as exc:
            raise GitLabError(f"GitLab at {self.url} could not be reached to verify the job: {exc}") from exc
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
                       status=str(data.get("status") or ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise GitLabError(f"GitLab's job answer lacks {exc}; is gitlab.url right?") from None

    def branch_exists(self, project_path: str, branch: str, token: str | None) -> bool | None:
        """True/False from GitLab, None when it cannot be asked (no token, unreachable): callers treat
        None as live, the safe side."""
        token = self.api_token or token
        if not token:
            return None
        key = f"{project_path}\0{branch}"
        cached = self._refs.get(key)
        if cached is not None:
            return bool(cached)
        try:
            self._client(private_token=token).projects.get(project_path, lazy=True).branches.get(branch)
            exists = True
        except gitlab.exceptions.GitlabGetError as exc:
            if exc.response_code != 404:
                return None
            exists = False
        except (requests.RequestException, gitlab.exceptions.GitlabError):
            return None
        self._refs.put(key, exists)
        return exists
