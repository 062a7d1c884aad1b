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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import urlsplit

import gitlab
import gitlab.exceptions
import requests

from daemon.config import GitLabSettings
from daemon.domain.model import Job
from daemon.errors import GitLabError, JobTokenError


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

    @classmethod
    def from_settings(cls, settings: GitLabSettings) -> Self:
        """A client for the configured GitLab (``gitlab.url``, ``api_token``, ``timeout``)."""
        token = settings.api_token.get_secret_value() if settings.api_token else None
        return cls(settings.url, api_token=token, timeout=settings.timeout)

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
        client = self._client(private_token=token)
        try:
            client.projects.get(project_path, lazy=True).branches.get(branch)
            exists = True
        except gitlab.exceptions.GitlabGetError as exc:
            if exc.response_code != 404 or not self._sees_project(client, project_path):
                return None  # a token that cannot see the project gets 404 for every branch too
            exists = False
        except (requests.RequestException, gitlab.exceptions.GitlabError):
            return None
        self._refs.put(key, exists)
        return exists

    def _sees_project(self, client: gitlab.Gitlab, project_path: str) -> bool:
        try:
            client.projects.get(project_path)
            return True
        except (requests.RequestException, gitlab.exceptions.GitlabError):
            return False


# Catching up and webhooks (SPEC 9 `hooks`, 11) ------------------------------------------------------------

HOOK_EVENTS = ("push_events", "merge_requests_events", "pipeline_events")


class GitLabAPIError(GitLabError):
    """GitLab answered an API call with an error; ``status`` is its HTTP code (None: not reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class MergeRequestInfo:
    """One merge request as the API lists it; ``updated_at`` is GitLab's own ISO 8601 string."""

    iid: int
    state: str
    source_branch: str
    source_project_id: int | None
    target_project_id: int | None
    updated_at: str


@dataclass(frozen=True)
class HookInfo:
    """A project webhook as GitLab shows it (never its secret token: the API does not return it)."""

    id: int
    url: str
    events: dict[str, bool]
    enable_ssl_verification: bool
    push_events_branch_filter: str | None
    alert_status: str | None


def _api_error(exc: Exception, what: str, project_path: str) -> GitLabAPIError:
    """Turn python-gitlab's and requests' exceptions into one message that says what to do."""
    if isinstance(exc, requests.RequestException | gitlab.exceptions.GitlabConnectionError):
        return GitLabAPIError(f"GitLab could not be reached to {what} of {project_path}: {exc}")
    code = getattr(exc, "response_code", None)
    detail = getattr(exc, "error_message", None) or str(exc)
    if code == 401:
        return GitLabAPIError(f"GitLab refused the token used for {project_path} (401: expired, revoked, or"
                              " not a token); set gitlab.api_token or the project's registry_token", 401)
    if code == 403:
        return GitLabAPIError(f"GitLab forbids the token to {what} of {project_path} (403)", 403)
    if code == 404:
        return GitLabAPIError(f"GitLab does not show {project_path} to this token (404: wrong path, or the"
                              " token has no access to it)", 404)
    return GitLabAPIError(f"GitLab could not {what} of {project_path} ({code or 'error'}: {detail})", code)


def _hook_info(obj: Any) -> HookInfo:
    attrs = obj.attributes if hasattr(obj, "attributes") else dict(obj)
    return HookInfo(id=int(attrs["id"]), url=str(attrs.get("url") or ""),
                    events={name: bool(attrs.get(name)) for name in HOOK_EVENTS},
                    enable_ssl_verification=bool(attrs.get("enable_ssl_verification")),
                    push_events_branch_filter=attrs.get("push_events_branch_filter") or None,
                    alert_status=attrs.get("alert_status"))


class GitLabAPI(GitLab):
    """The calls that catching up and webhook management make. Unlike the lookups above, these raise
    :class:`GitLabAPIError` instead of answering "unknown": their callers report per project."""

    def _project(self, project_path: str, token: str) -> Any:
        return self._client(private_token=token).projects.get(project_path, lazy=True)

    def check_access(self, project_path: str, token: str) -> None:
        """Raise unless ``token`` can read the project (so a later 404 means the thing asked about is gone,
        not that the project is hidden from the token)."""
        try:
            self._client(private_token=token).projects.get(project_path)
        except (requests.RequestException, gitlab.exceptions.GitlabError) as exc:
            raise _api_error(exc, "read the project", project_path) from exc

    def merge_requests_since(self, project_path: str, token: str, updated_after: str,
                             per_page: int = 100) -> Iterator[MergeRequestInfo]:
        """Every MR (any state) updated at or after ``updated_after``, oldest update first, page by page
        (stop iterating to stop fetching)."""
        try:
            listing = self._project(project_path, token).mergerequests.list(
                iterator=True, state="all", updated_after=updated_after, order_by="updated_at", sort="asc",
                per_page=per_page)
            for mr in listing:
                a = mr.attributes
                yield MergeRequestInfo(iid=int(a["iid"]), state=str(a.get("state") or ""),
                                       source_branch=str(a.get("source_branch") or ""),
                                       source_project_id=_maybe_int(a.get("source_project_id")),
                                       target_project_id=_maybe_int(a.get("target_project_id")),
                                       updated_at=str(a.get("updated_at") or ""))
        except (requests.RequestException, gitlab.exceptions.GitlabError) as exc:
            raise _api_error(exc, "list the merge requests", project_path) from exc

    def branch_present(self, project_path: str, branch: str, token: str) -> bool:
        """Whether the branch exists now (no cache: catching up wants today's answer)."""
        try:
            self._project(project_path, token).branches.get(branch)
            return True
        except gitlab.exceptions.GitlabGetError as exc:
            if exc.response_code == 404 and "project" not in str(exc.error_message).lower():
                return False
            raise _api_error(exc, f"look up branch {branch}", project_path) from exc
        except (requests.RequestException, gitlab.exceptions.GitlabError) as exc:
            raise _api_error(exc, f"look up branch {branch}", project_path) from exc

    def group_projects(self, group: str, token: str) -> Iterator[str]:
        """Paths of the projects in ``group`` and its subgroups, page by page."""
        try:
            listing = self._client(private_token=token).groups.get(group, lazy=True).projects.list(
                iterator=True, include_subgroups=True, per_page=100)
            for project in listing:
                yield str(project.attributes["path_with_namespace"])
        except (requests.RequestException, gitlab.exceptions.GitlabError) as exc:
            raise _api_error(exc, "list the projects", f"group {group}") from exc

    def hooks(self, project_path: str, token: str) -> list[HookInfo]:
        try:
            return [_hook_info(h) for h in self._project(project_path, token).hooks.list(iterator=True)]
        except (requests.RequestException, gitlab.exceptions.GitlabError) as exc:
            raise _api_error(exc, "list the webhooks", project_path) from exc

    def create_hook(self, project_path: str, token: str, attrs: dict[str, Any]) -> HookInfo:
        try:
            return _hook_info(self._project(project_path, token).hooks.create(attrs))
        except (requests.RequestException, gitlab.exceptions.GitlabError) as exc:
            raise _api_error(exc, "create a webhook", project_path) from exc

    def update_hook(self, project_path: str, token: str, hook_id: int, attrs: dict[str, Any]) -> HookInfo:
        try:
            return _hook_info(self._project(project_path, token).hooks.update(hook_id, attrs))
        except (requests.RequestException, gitlab.exceptions.GitlabError) as exc:
            raise _api_error(exc, f"update webhook {hook_id}", project_path) from exc

    def delete_hook(self, project_path: str, token: str, hook_id: int) -> None:
        try:
            self._project(project_path, token).hooks.delete(hook_id)
        except (requests.RequestException, gitlab.exceptions.GitlabError) as exc:
            raise _api_error(exc, f"delete webhook {hook_id}", project_path) from exc


def _maybe_int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def check_project(gitlab_url: str, project_path: str, token: str, *, timeout: float = 10.0) -> str:
    """``check-config --online``: can ``token`` read the project through GitLab's API? Returns a short
    description of what GitLab answered; raises :class:`GitLabError` saying what failed and what to do."""
    client = gitlab.Gitlab(gitlab_url, private_token=token, timeout=timeout, retry_transient_errors=False)
    try:
        project = client.projects.get(project_path)
    except gitlab.exceptions.GitlabAuthenticationError:
        raise GitLabError(f"GitLab at {gitlab_url} refused the token (401: expired, revoked or not a "
                          "token); set gitlab.api_token or the project's registry_token") from None
    except gitlab.exceptions.GitlabGetError as exc:
        if exc.response_code == 404:
            raise GitLabError(f"GitLab does not show {project_path} to this token (404: wrong path, or the "
                              "token has no access to it)") from None
        raise GitLabError(f"GitLab answered {exc.response_code} for {project_path}: {exc.error_message}") from None
    except (requests.RequestException, gitlab.exceptions.GitlabError) as exc:
        raise GitLabError(f"GitLab at {gitlab_url} could not be reached: {exc}") from exc
    return f"project #{project.get_id()} readable"


class GitLabTagDeleter:
    """The ``gitlab-api`` untag method's write: GitLab's own registry tag delete
    (``DELETE /projects/:id/registry/repositories/:repository_id/tags/:tag``) with one project's token.
    Registry repositories are looked up once each and kept."""

    def __init__(self, gitlab_url: str, token: str, *, timeout: float = 10.0,
                 session: requests.Session | None = None) -> None:
        self._client = gitlab.Gitlab(gitlab_url, private_token=token, timeout=timeout, session=session,
                                     retry_transient_errors=False)
        self._repositories: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def delete_tag(self, project_path: str, repository: str, tag: str) -> None:
        from daemon.registry.errors import PermanentRegistryError, TagNotFoundError, TransientRegistryError

        try:
            self._repository(project_path, repository).tags.delete(tag)
        except gitlab.exceptions.GitlabDeleteError as exc:
            if exc.response_code == 404:
                raise TagNotFoundError(f"GitLab has no tag {repository}:{tag}") from None
            error = TransientRegistryError if (exc.response_code or 0) >= 500 else PermanentRegistryError
            raise error(f"GitLab refused to delete {repository}:{tag} ({exc.response_code}): "
                        f"{exc.error_message}") from None
        except (requests.RequestException, gitlab.exceptions.GitlabError) as exc:
            raise TransientRegistryError(f"GitLab could not delete {repository}:{tag}: {exc}") from exc

    def _repository(self, project_path: str, repository: str) -> Any:
        from daemon.registry.errors import TagNotFoundError

        key = (project_path, repository)
        with self._lock:
            if key in self._repositories:
                return self._repositories[key]
        project = self._client.projects.get(project_path, lazy=True)
        for repo in project.repositories.list(iterator=True):
            if repo.path == repository:
                with self._lock:
                    self._repositories[key] = repo
                return repo
        raise TagNotFoundError(f"GitLab lists no registry repository {repository} in {project_path}")
