"""The GitLab API calls of catching up (SPEC 11), webhook management (SPEC 9 ``hooks``), ``check-config
--online`` and the CI gate's evidence (SPEC 14): merge requests, pipelines, branches, a group's projects,
project webhooks, whether a token can read a project, a token's scopes, and a registry tag's details.

Owns: :class:`GitLabAPI` and the values it returns (:class:`MergeRequestInfo`, :class:`PipelineInfo`,
:class:`HookInfo`).
Must not: answer "unknown" for a call that failed (these callers report per project, so every failure is
raised as :class:`GitLabAPIError` through ``daemon.gitlab.errors``), cache (catching up wants today's
answer), or decide what a hook should look like (``daemon.gitlab.hooks`` does).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from daemon.domain.events import time_or_none
from daemon.domain.model import TagDetails
from daemon.gitlab.client import GitLab
from daemon.gitlab.errors import GitLabAPIError, gitlab_errors

__all__ = ["HOOK_EVENTS", "GitLab", "GitLabAPI", "GitLabAPIError", "HookInfo", "MergeRequestInfo",
           "PipelineInfo", "insufficient_scope"]

HOOK_EVENTS = ("push_events", "merge_requests_events", "pipeline_events")


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
class PipelineInfo:
    """One pipeline as the API shows it; times are GitLab's own ISO 8601 strings. The listing does not say
    whether the ref is a git tag: ``tag`` is None there, and known from the single pipeline's answer."""

    id: int
    iid: int | None
    project_id: int | None
    sha: str
    ref: str
    status: str
    source: str
    created_at: str
    updated_at: str
    tag: bool | None = None


@dataclass(frozen=True)
class HookInfo:
    """A project webhook as GitLab shows it (never its secret token: the API does not return it)."""

    id: int
    url: str
    events: dict[str, bool]
    enable_ssl_verification: bool
    push_events_branch_filter: str | None
    alert_status: str | None


def _merge_request_info(attrs: dict[str, Any]) -> MergeRequestInfo:
    return MergeRequestInfo(iid=int(attrs["iid"]), state=str(attrs.get("state") or ""),
                            source_branch=str(attrs.get("source_branch") or ""),
                            source_project_id=_maybe_int(attrs.get("source_project_id")),
                            target_project_id=_maybe_int(attrs.get("target_project_id")),
                            updated_at=str(attrs.get("updated_at") or ""))


def _pipeline_info(attrs: dict[str, Any]) -> PipelineInfo:
    tag = attrs.get("tag")
    return PipelineInfo(id=int(attrs["id"]), iid=_maybe_int(attrs.get("iid")),
                        project_id=_maybe_int(attrs.get("project_id")), sha=str(attrs.get("sha") or ""),
                        ref=str(attrs.get("ref") or ""), status=str(attrs.get("status") or ""),
                        source=str(attrs.get("source") or ""), created_at=str(attrs.get("created_at") or ""),
                        updated_at=str(attrs.get("updated_at") or ""),
                        tag=tag if isinstance(tag, bool) else None)


def _hook_info(obj: Any) -> HookInfo:
    attrs = obj.attributes if hasattr(obj, "attributes") else dict(obj)
    return HookInfo(id=int(attrs["id"]), url=str(attrs.get("url") or ""),
                    events={name: bool(attrs.get(name)) for name in HOOK_EVENTS},
                    enable_ssl_verification=bool(attrs.get("enable_ssl_verification")),
                    push_events_branch_filter=attrs.get("push_events_branch_filter") or None,
                    alert_status=attrs.get("alert_status"))


def insufficient_scope(exc: GitLabAPIError) -> bool:
    """GitLab's answer to a token whose scopes do not reach the API at all (``read_registry`` and
    ``write_registry`` tokens): 403 with ``{"error": "insufficient_scope"}`` (``lib/api/api_guard.rb``)."""
    return exc.status == 403 and exc.detail == "insufficient_scope"


def _maybe_int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


class GitLabAPI(GitLab):
    """The calls that catching up, webhook management and the online config check make. Unlike the lookups
    of :class:`GitLab`, these raise :class:`GitLabAPIError` instead of answering "unknown": their callers
    report per project."""

    def _project(self, project_path: str, token: str) -> Any:
        return self._client(private_token=token).projects.get(project_path, lazy=True)

    def check_project(self, project_path: str, token: str) -> str:
        """``check-config --online``: can ``token`` read the project through GitLab's API? Returns a short
        description of what GitLab answered."""
        with gitlab_errors(f"read project {project_path}", subject=project_path, url=self.url):
            project = self._client(private_token=token).projects.get(project_path)
        return f"project #{project.get_id()} readable"

    def token_scopes(self, token: str) -> tuple[str, ...]:
        """``check-config --online``: the scopes of ``token`` (``GET /personal_access_tokens/self``, which
        personal, project and group access tokens may call whatever their scopes), sorted. A token GitLab
        keeps from the API altogether raises :class:`GitLabAPIError` with status 403 and detail
        ``insufficient_scope``; one that is not an access token (OAuth) gets a 400, an old GitLab a 404."""
        with gitlab_errors("read the token's scopes", subject="the token's own record", url=self.url):
            answer = self._client(private_token=token).http_get("/personal_access_tokens/self")
        scopes = answer.get("scopes") if isinstance(answer, dict) else None
        if not isinstance(scopes, list):
            raise GitLabAPIError(f"GitLab at {self.url} answered no scopes for the token; is gitlab.url right?")
        return tuple(sorted(str(s) for s in scopes))

    def check_access(self, project_path: str, token: str) -> None:
        """Raise unless ``token`` can read the project (so a later 404 means the thing asked about is gone,
        not that the project is hidden from the token)."""
        with gitlab_errors(f"read project {project_path}", subject=project_path, url=self.url):
            self._client(private_token=token).projects.get(project_path)

    def merge_requests_since(self, project_path: str, token: str, updated_after: str,
                             per_page: int = 100) -> Iterator[MergeRequestInfo]:
        """Every MR (any state) updated at or after ``updated_after``, oldest update first, page by page
        (stop iterating to stop fetching)."""
        with gitlab_errors(f"list the merge requests of {project_path}", subject=project_path, url=self.url):
            listing = self._project(project_path, token).mergerequests.list(
                iterator=True, state="all", updated_after=updated_after, order_by="updated_at", sort="asc",
                per_page=per_page)
            for mr in listing:
                yield _merge_request_info(mr.attributes)

    def merge_request(self, project_path: str, token: str, iid: int) -> MergeRequestInfo:
        """One MR (``GET /projects/:id/merge_requests/:iid``)."""
        with gitlab_errors(f"read merge request !{iid} of {project_path}", subject=project_path, url=self.url):
            return _merge_request_info(self._project(project_path, token).mergerequests.get(iid).attributes)

    def pipelines_since(self, project_path: str, token: str, updated_after: str,
                        per_page: int = 100) -> Iterator[PipelineInfo]:
        """Every pipeline (any status; child pipelines excepted, as GitLab lists them) updated at or after
        ``updated_after``, oldest update first, page by page (stop iterating to stop fetching)."""
        with gitlab_errors(f"list the pipelines of {project_path}", subject=project_path, url=self.url):
            listing = self._project(project_path, token).pipelines.list(
                iterator=True, updated_after=updated_after, order_by="updated_at", sort="asc", per_page=per_page)
            for pipeline in listing:
                yield _pipeline_info(pipeline.attributes)

    def pipeline(self, project_path: str, token: str, pipeline_id: int) -> PipelineInfo:
        """One pipeline (``GET /projects/:id/pipelines/:pipeline_id``), which says whether its ref is a tag."""
        with gitlab_errors(f"read pipeline {pipeline_id} of {project_path}", subject=project_path, url=self.url):
            return _pipeline_info(self._project(project_path, token).pipelines.get(pipeline_id).attributes)

    def registry_tag(self, project_path: str, token: str, repository: str, tag: str) -> TagDetails | None:
        """GitLab's details of ``repository:tag`` (``GET /projects/:id/registry/repositories/:repository_id/
        tags/:tag_name``, the repository's id found in ``GET /projects/:id/registry/repositories``): its digest
        and ``created_at``. None when GitLab lists no such repository or tag in the project. GitLab wants
        ``read_container_image``: a token with the ``api`` or ``read_api`` scope and the Reporter role."""
        with gitlab_errors(f"list the registry repositories of {project_path}", subject=project_path,
                           url=self.url):
            found = next((r for r in self._project(project_path, token).repositories.list(iterator=True)
                          if r.attributes.get("path") == repository), None)
        if found is None:
            return None
        try:
            with gitlab_errors(f"read tag {repository}:{tag}", subject=f"tag {repository}:{tag}", url=self.url):
                attrs = found.tags.get(tag).attributes
        except GitLabAPIError as exc:
            if exc.status == 404:  # the project is visible (its repositories were listed): the tag is gone
                return None
            raise
        digest = attrs.get("digest")
        return TagDetails(digest=digest if isinstance(digest, str) and digest else None,
                          created_at=time_or_none(attrs.get("created_at")))

    def branch_present(self, project_path: str, branch: str, token: str) -> bool:
        """Whether the branch exists now (no cache: catching up wants today's answer). A 404 for the project
        itself is raised, never taken for a deleted branch."""
        try:
            with gitlab_errors(f"look up branch {branch} of {project_path}", subject=project_path,
                               url=self.url):
                self._project(project_path, token).branches.get(branch)
            return True
        except GitLabAPIError as exc:
            if exc.status == 404 and "project" not in exc.detail.lower():
                return False
            raise

    def group_projects(self, group: str, token: str) -> Iterator[str]:
        """Paths of the projects in ``group`` and its subgroups, page by page."""
        with gitlab_errors(f"list the projects of group {group}", subject=f"group {group}", url=self.url):
            listing = self._client(private_token=token).groups.get(group, lazy=True).projects.list(
                iterator=True, include_subgroups=True, per_page=100)
            for project in listing:
                yield str(project.attributes["path_with_namespace"])

    def hooks(self, project_path: str, token: str) -> list[HookInfo]:
        with gitlab_errors(f"list the webhooks of {project_path}", subject=project_path, url=self.url):
            return [_hook_info(h) for h in self._project(project_path, token).hooks.list(iterator=True)]

    def create_hook(self, project_path: str, token: str, attrs: dict[str, Any]) -> HookInfo:
        with gitlab_errors(f"create a webhook in {project_path}", subject=project_path, url=self.url):
            return _hook_info(self._project(project_path, token).hooks.create(attrs))

    def update_hook(self, project_path: str, token: str, hook_id: int, attrs: dict[str, Any]) -> HookInfo:
        with gitlab_errors(f"update webhook {hook_id} of {project_path}", subject=project_path, url=self.url):
            return _hook_info(self._project(project_path, token).hooks.update(hook_id, attrs))

    def delete_hook(self, project_path: str, token: str, hook_id: int) -> None:
        with gitlab_errors(f"delete webhook {hook_id} of {project_path}", subject=project_path, url=self.url):
            self._project(project_path, token).hooks.delete(hook_id)

    def create_mr_note(self, project_path: str, token: str, iid: int, body: str) -> int:
        """Post a note on merge request !iid (``POST /projects/:id/merge_requests/:iid/notes``); returns
        GitLab's id of the note. GitLab wants the ``api`` scope (``read_api``: 403 insufficient_scope) and a
        role that may read the merge request (Reporter); an archived project or a locked discussion the
        token's user is no member of answers 403, a merge request GitLab does not show 404."""
        with gitlab_errors(f"post a note on merge request !{iid} of {project_path}",
                           subject=f"merge request !{iid} of {project_path}", url=self.url):
            note = self._project(project_path, token).mergerequests.get(iid, lazy=True).notes.create({"body": body})
        return int(note.get_id())

    def find_mr_note(self, project_path: str, token: str, iid: int, marker: str) -> int | None:
        """The id of the newest note on merge request !iid whose body holds ``marker``
        (``GET /projects/:id/merge_requests/:iid/notes``, newest first, page by page until found)."""
        with gitlab_errors(f"list the notes of merge request !{iid} of {project_path}",
                           subject=f"merge request !{iid} of {project_path}", url=self.url):
            listing = self._project(project_path, token).mergerequests.get(iid, lazy=True).notes.list(
                iterator=True, sort="desc", order_by="created_at", per_page=100)
            for note in listing:
                if marker in str(note.attributes.get("body") or ""):
                    return int(note.get_id())
        return None
