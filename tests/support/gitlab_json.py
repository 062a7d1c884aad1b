"""The stand-in's records and their JSON, shaped as GitLab's REST API docs show them.

Pure: dataclasses in, dicts out. Shapes follow doc/api/{projects,jobs,merge_requests,notes,branches,
pipelines,project_webhooks,container_registry,personal_access_tokens}.md. Fields the janitor never reads
are kept where cheap, so python-gitlab objects look as they do against GitLab.

Also GitLab's authorization tables the stand-in enforces, from GitLab's source:
`SCOPE_ABILITIES` (`lib/gitlab/auth.rb`, `abilities_for_scopes`), `JOB_ABILITIES`
(`build_authentication_abilities`, same file) and `ROLE_ABILITIES` (`app/policies/project_policy.rb`,
container-image abilities by role).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]
#: RFC 3339 date-time: date and time, optional fraction, and `Z` or an offset.
_RFC3339 = re.compile(r"\A(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z")

#: Token scope -> authentication abilities (lib/gitlab/auth.rb, `abilities_for_scopes`); scopes not listed
#: (read_user, sudo, ...) give none.
_READ_ONLY = frozenset({"read_project", "download_code", "read_container_image"})
SCOPE_ABILITIES: dict[str, frozenset[str]] = {
    "api": _READ_ONLY | {"push_code", "create_container_image", "admin_container_image"},
    "read_api": _READ_ONLY,
    "read_registry": frozenset({"read_container_image"}),
    "write_registry": frozenset({"create_container_image"}),
    "read_repository": frozenset({"download_code"}),
    "write_repository": frozenset({"download_code", "push_code"}),
}
#: The scopes a personal, project or group access token may carry (lib/gitlab/auth.rb).
TOKEN_SCOPES = (
    "api",
    "read_api",
    "read_user",
    "read_repository",
    "write_repository",
    "read_registry",
    "write_registry",
    "create_runner",
    "manage_runner",
    "k8s_proxy",
    "self_rotate",
    "ai_features",
    "sudo",
    "admin_mode",
)
#: A running job's abilities (lib/gitlab/auth.rb, `build_authentication_abilities`).
JOB_ABILITIES = frozenset(
    {
        "read_project",
        "build_download_code",
        "build_push_code",
        "build_read_container_image",
        "build_create_container_image",
        "build_destroy_container_image",
    }
)
#: Abilities any of which lets a credential log in to the registry at all
#: (app/services/auth/container_registry_authentication_service.rb, REGISTRY_LOGIN_ABILITIES).
REGISTRY_LOGIN_ABILITIES = frozenset(
    {
        "read_container_image",
        "create_container_image",
        "destroy_container_image",
        "update_container_image",
        "admin_container_image",
        "build_read_container_image",
        "build_create_container_image",
        "build_destroy_container_image",
    }
)
ROLES = ("reporter", "developer", "maintainer", "owner")
#: Container-image abilities a project member has by role (app/policies/project_policy.rb).
ROLE_ABILITIES: dict[str, frozenset[str]] = {
    "reporter": frozenset({"read_container_image"}),
    "developer": frozenset(
        {"read_container_image", "create_container_image", "update_container_image", "destroy_container_image"}
    ),
}
ROLE_ABILITIES["maintainer"] = ROLE_ABILITIES["developer"] | {"admin_container_image"}
ROLE_ABILITIES["owner"] = ROLE_ABILITIES["maintainer"]


def scope_abilities(scopes: tuple[str, ...] | list[str]) -> frozenset[str]:
    """Every authentication ability `scopes` give together."""
    return frozenset().union(*(SCOPE_ABILITIES.get(s, frozenset()) for s in scopes))

HOOK_EVENT_FIELDS = (
    "push_events",
    "issues_events",
    "confidential_issues_events",
    "merge_requests_events",
    "tag_push_events",
    "note_events",
    "confidential_note_events",
    "job_events",
    "pipeline_events",
    "wiki_page_events",
    "deployment_events",
    "releases_events",
    "milestone_events",
    "feature_flag_events",
    "emoji_events",
    "resource_access_token_events",
    "repository_update_events",
)


def iso(moment: dt.datetime | None) -> str | None:
    """GitLab's API timestamp form: 2024-01-02T03:04:05.678Z."""
    if moment is None:
        return None
    moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def fake_sha(*parts: object) -> str:
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()


@dataclass
class Branch:
    name: str
    sha: str
    created_at: dt.datetime


@dataclass
class MergeRequest:
    id: int
    iid: int
    project_id: int
    source_branch: str
    target_branch: str
    state: str
    source_project_id: int
    title: str
    sha: str
    created_at: dt.datetime
    updated_at: dt.datetime
    merged_at: dt.datetime | None = None
    closed_at: dt.datetime | None = None


@dataclass
class Note:
    """A note (comment) on a merge request; `author` is the user JSON of whoever posted it."""

    id: int
    mr_iid: int
    body: str
    author: JSON
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass
class Pipeline:
    """A pipeline: `id` is instance-wide, `iid` counts per project; `ref` is the branch, the tag, or for a
    merge request pipeline `refs/merge-requests/<iid>/head`."""

    id: int
    iid: int
    project_id: int
    ref: str
    sha: str
    status: str
    source: str
    tag: bool
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


@dataclass
class Hook:
    id: int
    project_id: int
    url: str
    created_at: dt.datetime
    token: str | None = None
    enable_ssl_verification: bool = True
    push_events_branch_filter: str | None = None
    name: str | None = None
    description: str | None = None
    events: dict[str, bool] = field(default_factory=lambda: {"push_events": True})
    #: WebHooks::AutoDisabling's columns: failed deliveries in a row, and until when the hook is backed off.
    recent_failures: int = 0
    disabled_until: dt.datetime | None = None
    backoff_count: int = 0


@dataclass
class AccessToken:
    """A personal or project access token: its scopes, the role of its (bot) user, and its state."""

    id: int
    token: str
    name: str
    scopes: tuple[str, ...]
    role: str
    user_id: int
    username: str
    created_at: dt.datetime
    expires_at: dt.date | None
    revoked: bool = False
    description: str | None = None
    last_used_at: dt.datetime | None = None

    def expired(self, now: dt.datetime) -> bool:
        """A token expires at the start (UTC) of its `expires_at` day."""
        return self.expires_at is not None and self.expires_at <= now.astimezone(dt.UTC).date()

    def active(self, now: dt.datetime) -> bool:
        return not self.revoked and not self.expired(now)


@dataclass
class Project:
    id: int
    path: str
    default_branch: str
    created_at: dt.datetime
    tokens: list[AccessToken] = field(default_factory=list)
    branches: dict[str, Branch] = field(default_factory=dict)
    merge_requests: dict[int, MergeRequest] = field(default_factory=dict)
    hooks: dict[int, Hook] = field(default_factory=dict)
    #: Notes on each merge request (by iid), oldest first; kept apart from the merge request, which
    #: `set_mr` replaces.
    notes: dict[int, list[Note]] = field(default_factory=dict)
    #: Archived (ArchivedAbilities): readable, but no notes, no registry pushes or deletes.
    archived: bool = False
    pipelines: dict[int, Pipeline] = field(default_factory=dict)

    @property
    def token(self) -> str:
        """The project's first access token (the one `add_project` made)."""
        return self.tokens[0].token

    @property
    def role(self) -> str:
        return self.tokens[0].role

    @property
    def scopes(self) -> tuple[str, ...]:
        return self.tokens[0].scopes

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def namespace(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""

    def owns_repository(self, repository: str) -> bool:
        return repository == self.path or repository.startswith(self.path + "/")


@dataclass
class Job:
    id: int
    token: str
    project_id: int
    pipeline_id: int
    ref: str
    status: str
    tag: bool
    sha: str
    name: str
    stage: str
    created_at: dt.datetime
    #: When a runner picked the job up (`GET /job`'s `started_at`).
    started_at: dt.datetime | None = None


ROOT_USER: JSON = {
    "id": 1,
    "username": "root",
    "name": "Administrator",
    "state": "active",
    "locked": False,
    "avatar_url": None,
}


def user_json(base_url: str, user: JSON = ROOT_USER) -> JSON:
    return {**user, "web_url": f"{base_url}/{user['username']}"}


def bot_user_json(base_url: str, token: AccessToken) -> JSON:
    """The bot user GitLab creates for each project access token (named after the token)."""
    return {
        "id": token.user_id,
        "username": token.username,
        "name": token.name,
        "state": "active",
        "locked": False,
        "avatar_url": None,
        "web_url": f"{base_url}/{token.username}",
        "bot": True,
    }


def access_token_json(token: AccessToken, now: dt.datetime) -> JSON:
    """GET /personal_access_tokens/self (lib/api/entities/personal_access_token.rb): `expires_at` is a
    date; `active` is false once revoked or expired."""
    return {
        "id": token.id,
        "name": token.name,
        "revoked": token.revoked,
        "created_at": iso(token.created_at),
        "description": token.description,
        "scopes": list(token.scopes),
        "user_id": token.user_id,
        "last_used_at": iso(token.last_used_at),
        "active": token.active(now),
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
    }


def project_json(base_url: str, project: Project, registry_host: str | None) -> JSON:
    web_url = f"{base_url}/{project.path}"
    namespace_path = project.namespace
    return {
        "id": project.id,
        "description": None,
        "name": project.name,
        "name_with_namespace": " / ".join(project.path.split("/")),
        "path": project.name,
        "path_with_namespace": project.path,
        "created_at": iso(project.created_at),
        "default_branch": project.default_branch,
        "tag_list": [],
        "topics": [],
        "ssh_url_to_repo": f"git@127.0.0.1:{project.path}.git",
        "http_url_to_repo": f"{web_url}.git",
        "web_url": web_url,
        "readme_url": None,
        "avatar_url": None,
        "forks_count": 0,
        "star_count": 0,
        "last_activity_at": iso(project.created_at),
        "namespace": {
            "id": int(fake_sha(namespace_path)[:6], 16),
            "name": namespace_path.rsplit("/", 1)[-1],
            "path": namespace_path.rsplit("/", 1)[-1],
            "kind": "group",
            "full_path": namespace_path,
            "parent_id": None,
            "avatar_url": None,
            "web_url": f"{base_url}/groups/{namespace_path}",
        },
        "container_registry_image_prefix": f"{registry_host}/{project.path}" if registry_host else None,
        "_links": {
            "self": f"{base_url}/api/v4/projects/{project.id}",
            "merge_requests": f"{base_url}/api/v4/projects/{project.id}/merge_requests",
            "repo_branches": f"{base_url}/api/v4/projects/{project.id}/repository/branches",
        },
        "empty_repo": False,
        "archived": False,
        "visibility": "private",
        "container_registry_enabled": True,
        "container_registry_access_level": "enabled",
        "merge_requests_enabled": True,
        "jobs_enabled": True,
    }


def job_json(base_url: str, project: Project, job: Job) -> JSON:
    """GET /job: note `pipeline.project_id`, which the single-job and job-token examples carry."""
    return {
        "commit": {
            "author_email": "admin@example.com",
            "author_name": "Administrator",
            "created_at": iso(job.created_at),
            "id": job.sha,
            "message": "Build it.",
            "short_id": job.sha[:8],
            "title": "Build it.",
        },
        "coverage": None,
        "allow_failure": False,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": None,
        "erased_at": None,
        "duration": None,
        "queued_duration": 0.1,
        "artifacts_expire_at": None,
        "tag_list": [],
        "id": job.id,
        "name": job.name,
        "pipeline": {
            "id": job.pipeline_id,
            "project_id": project.id,
            "ref": job.ref,
            "sha": job.sha,
            "status": "running" if job.status in {"running", "pending", "created"} else job.status,
        },
        "ref": job.ref,
        "artifacts": [],
        "runner": None,
        "stage": job.stage,
        "status": job.status,
        "failure_reason": None,
        "tag": job.tag,
        "web_url": f"{base_url}/{project.path}/-/jobs/{job.id}",
        "project": {"ci_job_token_scope_enabled": True},
        "user": user_json(base_url),
    }


def merge_request_json(base_url: str, project: Project, mr: MergeRequest) -> JSON:
    user = user_json(base_url)
    return {
        "id": mr.id,
        "iid": mr.iid,
        "project_id": project.id,
        "title": mr.title,
        "description": "",
        "state": mr.state,
        "created_at": iso(mr.created_at),
        "updated_at": iso(mr.updated_at),
        "merged_by": user if mr.state == "merged" else None,
        "merge_user": user if mr.state == "merged" else None,
        "merged_at": iso(mr.merged_at),
        "closed_by": user if mr.state == "closed" else None,
        "closed_at": iso(mr.closed_at),
        "target_branch": mr.target_branch,
        "source_branch": mr.source_branch,
        "user_notes_count": 0,
        "upvotes": 0,
        "downvotes": 0,
        "author": user,
        "assignees": [],
        "assignee": None,
        "reviewers": [],
        "source_project_id": mr.source_project_id,
        "target_project_id": project.id,
        "labels": [],
        "draft": False,
        "work_in_progress": False,
        "milestone": None,
        "merge_when_pipeline_succeeds": False,
        "merge_status": "can_be_merged",
        "detailed_merge_status": "mergeable" if mr.state == "opened" else "not_open",
        "sha": mr.sha,
        "merge_commit_sha": fake_sha("merge", project.id, mr.iid) if mr.state == "merged" else None,
        "squash_commit_sha": None,
        "discussion_locked": None,
        "should_remove_source_branch": None,
        "force_remove_source_branch": False,
        "reference": f"!{mr.iid}",
        "references": {"short": f"!{mr.iid}", "relative": f"!{mr.iid}", "full": f"{project.path}!{mr.iid}"},
        "web_url": f"{base_url}/{project.path}/-/merge_requests/{mr.iid}",
        "time_stats": {
            "time_estimate": 0,
            "total_time_spent": 0,
            "human_time_estimate": None,
            "human_total_time_spent": None,
        },
        "squash": False,
        "squash_on_merge": False,
        "task_completion_status": {"count": 0, "completed_count": 0},
        "has_conflicts": False,
        "blocking_discussions_resolved": True,
    }


def pipeline_json(base_url: str, project: Project, pipeline: Pipeline) -> JSON:
    """A pipeline as GET /projects/:id/pipelines lists it (Entities::Ci::PipelineBasic)."""
    return {
        "id": pipeline.id,
        "iid": pipeline.iid,
        "project_id": project.id,
        "status": pipeline.status,
        "source": pipeline.source,
        "ref": pipeline.ref,
        "sha": pipeline.sha,
        "name": None,
        "web_url": f"{base_url}/{project.path}/-/pipelines/{pipeline.id}",
        "created_at": iso(pipeline.created_at),
        "updated_at": iso(pipeline.updated_at),
    }


_DETAILED_STATUS = {  # status -> (icon, text, group); GitLab's label and tooltip follow the text
    "success": ("status_success", "passed", "success"),
    "failed": ("status_failed", "failed", "failed"),
    "canceled": ("status_canceled", "canceled", "canceled"),
    "skipped": ("status_skipped", "skipped", "skipped"),
    "manual": ("status_manual", "blocked", "manual"),
    "created": ("status_created", "created", "created"),
    "pending": ("status_pending", "pending", "pending"),
    "running": ("status_running", "running", "running"),
}


def pipeline_detail_json(base_url: str, project: Project, pipeline: Pipeline) -> JSON:
    """GET /projects/:id/pipelines/:pipeline_id (Entities::Ci::PipelineWithMetadata): the listing's
    fields and `tag`, `before_sha`, `user`, the run's times and `detailed_status`."""
    icon, text, group = _DETAILED_STATUS.get(pipeline.status, (f"status_{pipeline.status}", pipeline.status,
                                                              pipeline.status))
    duration = None
    if pipeline.started_at is not None and pipeline.finished_at is not None:
        duration = int((pipeline.finished_at - pipeline.started_at).total_seconds())
    return {
        **pipeline_json(base_url, project, pipeline),
        "before_sha": "0" * 40,
        "tag": pipeline.tag,
        "yaml_errors": None,
        "user": user_json(base_url),
        "started_at": iso(pipeline.started_at),
        "finished_at": iso(pipeline.finished_at),
        "committed_at": None,
        "duration": duration,
        "queued_duration": None,
        "coverage": None,
        "detailed_status": {
            "icon": icon,
            "text": text,
            "label": text,
            "group": group,
            "tooltip": text,
            "has_details": False,
            "details_path": f"/{project.path}/-/pipelines/{pipeline.id}",
            "illustration": None,
            "favicon": f"/assets/ci_favicons/favicon_{icon}.png",
        },
    }


def note_json(project: Project, mr: MergeRequest, note: Note) -> JSON:
    """A merge request note as doc/api/notes.md shows it (Entities::Note)."""
    return {
        "id": note.id,
        "type": None,
        "body": note.body,
        "attachment": None,
        "author": note.author,
        "created_at": iso(note.created_at),
        "updated_at": iso(note.updated_at),
        "system": False,
        "noteable_id": mr.id,
        "noteable_type": "MergeRequest",
        "project_id": project.id,
        "noteable_iid": mr.iid,
        "commit_id": None,
        "resolvable": False,
        "confidential": False,
        "internal": False,
        "imported": False,
        "imported_from": "none",
    }


def branch_json(base_url: str, project: Project, branch: Branch) -> JSON:
    created = iso(branch.created_at)
    return {
        "name": branch.name,
        "merged": False,
        "protected": branch.name == project.default_branch,
        "default": branch.name == project.default_branch,
        "developers_can_push": False,
        "developers_can_merge": False,
        "can_push": True,
        "web_url": f"{base_url}/{project.path}/-/tree/{branch.name}",
        "commit": {
            "id": branch.sha,
            "short_id": branch.sha[:8],
            "created_at": created,
            "parent_ids": [fake_sha("parent", branch.sha)],
            "title": "Add a feature",
            "message": "Add a feature",
            "author_name": "Administrator",
            "author_email": "admin@example.com",
            "authored_date": created,
            "committer_name": "Administrator",
            "committer_email": "admin@example.com",
            "committed_date": created,
            "trailers": {},
            "extended_trailers": {},
            "web_url": f"{base_url}/{project.path}/-/commit/{branch.sha}",
        },
    }


def hook_json(hook: Hook, alert_status: str = "executable") -> JSON:
    """The token is write-only in GitLab: never part of the answer. `alert_status` is the hook's
    (`executable`, `temporarily_disabled`, `disabled`), which depends on GitLab's version and clock."""
    body: JSON = {
        "id": hook.id,
        "url": hook.url,
        "name": hook.name,
        "description": hook.description,
        "project_id": hook.project_id,
        "push_events_branch_filter": hook.push_events_branch_filter,
        "branch_filter_strategy": "wildcard",
        "enable_ssl_verification": hook.enable_ssl_verification,
        "alert_status": alert_status,
        "disabled_until": iso(hook.disabled_until),
        "url_variables": [],
        "custom_webhook_template": None,
        "custom_headers": [],
        "created_at": iso(hook.created_at),
    }
    for name in HOOK_EVENT_FIELDS:
        body[name] = hook.events.get(name, False)
    return body


def registry_repository_json(
    repository_id: int, project: Project, repository: str, registry_host: str, created_at: dt.datetime
) -> JSON:
    return {
        "id": repository_id,
        "name": repository[len(project.path) + 1 :] if repository != project.path else "",
        "path": repository,
        "project_id": project.id,
        "location": f"{registry_host}/{repository}",
        "created_at": iso(created_at),
        "cleanup_policy_started_at": None,
        "status": None,
    }


def registry_tag_json(repository: str, tag: str, registry_host: str) -> JSON:
    return {"name": tag, "path": f"{repository}:{tag}", "location": f"{registry_host}/{repository}:{tag}"}


def config_created(config: Any) -> dt.datetime | None:
    """`ContainerRegistry::Tag#created_at` (lib/container_registry/tag.rb): the image config's `created`,
    read as RFC 3339 (`DateTime.rfc3339`); None when it has none or it does not parse."""
    value = config.get("created") if isinstance(config, dict) else None
    if not isinstance(value, str):
        return None
    match = _RFC3339.match(value)
    if match is None:
        return None
    date, fraction, zone = match.groups()
    offset = "+00:00" if zone in ("Z", "z") else zone
    try:
        return dt.datetime.fromisoformat(date + (fraction or "")[:7] + offset)
    except ValueError:
        return None


def datetime_json(moment: dt.datetime | None) -> str | None:
    """A DateTime as GitLab's API renders it (ActiveSupport, 3 fraction digits, the value's own offset):
    `2019-01-06T16:49:51.272+00:00` (doc/api/container_registry.md, tag details' `created_at`)."""
    if moment is None:
        return None
    text = moment.isoformat(timespec="milliseconds")
    return text if moment.utcoffset() is not None else text + "+00:00"
