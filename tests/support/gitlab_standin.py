"""A GitLab stand-in: the routes registry-janitor uses, shaped as GitLab's API docs show them.

Serves `/jwt/auth` (registry tokens), `/api/v4/job`, `/api/v4/personal_access_tokens/self`, projects,
merge requests, branches, pipelines, project hooks and registry repositories/tags (the tag delete is
performed on the real registry, tag only), plus `/registry-relay`, which forwards registry notifications
to the current test's target. Tests drive it through Python and read `calls`; pipelines are made with
`add_pipeline(project, ref=..., status=...)` and moved on with `set_pipeline_status`.

As strict as GitLab about credentials (each rule from GitLab's source):

- Project access tokens carry scopes and a role. `add_project(path, role="maintainer", scopes=("api",))`
  makes the project's first token (`project.token`); `add_token(project, role=..., scopes=(...))`
  returns another token of the same project, with its own bot user. `revoke_token(token)` revokes one;
  `add_token(..., expires_at=date)` sets its expiry (a token expires at the start of that day, UTC).
- `/jwt/auth` (app/controllers/jwt_controller.rb,
  app/services/auth/container_registry_authentication_service.rb) answers exactly `{"token": jwt}`.
  It never refuses an action it will not grant: each requested action is kept only when both the
  token's scopes (lib/gitlab/auth.rb, `abilities_for_scopes`) and its role (app/policies/project_policy.rb)
  give the ability: `pull` read_container_image (api, read_api, read_registry; Reporter+), `push`
  create_container_image (api, write_registry; Developer+), `delete` and `*` admin_container_image
  (api only; Maintainer+). A scope entry left with no action is dropped from `access`; so is any
  repository no project owns, and `registry:catalog:*` for anyone but the admin. A running job's
  CI_JOB_TOKEN (user `gitlab-ci-token` only) gets pull, push and delete on its own project's
  repositories. Credentials without any registry ability (e.g. only `read_user`), and anonymous
  requests granted nothing, get 403 `DENIED`; an unknown, revoked or expired token gets 401.
- `/api/v4` (lib/api/api.rb, lib/api/api_guard.rb, lib/gitlab/auth/auth_finders.rb): a token needs the
  `api` scope, or `read_api` for GET/HEAD (`read_user` also reads `/user` and `/version`); otherwise
  403 `{"error": "insufficient_scope", "error_description": ..., "scope": "api read_api"}`.
  `/personal_access_tokens/self` takes any scope. Revoked or expired tokens get 401 `invalid_token`.
  Roles gate as GitLab does: hooks need Maintainer, the tag delete Developer.
- Registry tag details (`GET .../registry/repositories/:repository_id/tags/:tag_name`, lib/api/
  project_container_repositories.rb) need read_container_image (`api` or `read_api`, Reporter; a job's
  token on its own project); `created_at` is `ContainerRegistry::Tag#created_at`, the image config's
  `created` (null for an index), rendered as GitLab renders a DateTime (`2019-01-06T16:49:51.272+00:00`).
- Jobs: `add_job(project, pipeline_id=..., ref=..., started_at=...)`; `GET /job` answers `started_at`
  (now unless given).
- The tag delete (lib/api/project_container_repositories.rb,
  app/services/projects/container_repository/third_party/delete_tags_service.rb) moves the tag to an
  empty manifest, then deletes that manifest by digest; when either registry call fails it answers
  400 `{"message": "400 Bad request"}`. `fail_tag_deletes(n, after_placeholder=False)` makes the next
  `n` tag deletes fail that way: on the first call (nothing changed), or with `after_placeholder=True`
  on the second (the tag is left on the empty manifest, as GitLab leaves it).
- Merge request notes (lib/api/notes.rb, lib/api/helpers/notes_helpers.rb): `GET` lists them (newest
  first by default, `order_by` `created_at`/`updated_at`, `sort`), `POST` needs the `api` scope and
  `create_note` on a merge request the token can read (app/policies/merge_request_policy.rb: Reporter in
  a private project), else 404; a missing `body` is 400 `{"error": "body is missing"}`, a blank or
  longer than 1,000,000 characters 400 `{"message": "400 Bad request - Note {...}"}`; 201 with the note.
  `archive_project(project)` archives a project as GitLab does (app/policies/concerns/archived_abilities.rb):
  still readable, but notes are 403 and registry pushes and deletes are no longer granted (the API tag
  delete: 403). `fail_note_posts(n, status=500)` makes the next `n` note posts answer `status`;
  `mr_notes(project, iid)` reads an MR's notes, `add_note(project, iid, body)` adds one as the admin.
- Hook deliveries (tests/support/hook_delivery.py has each rule and its GitLab source): `add_hook(project,
  url, token=..., events=...)` and `add_system_hook(url, token=..., events=...)` make hooks;
  `deliver(project, "pipeline_hooks", data)` posts an event to the project's executable hooks for that
  trigger with GitLab's headers (`X-Gitlab-Event`, `X-Gitlab-Token`, `X-Gitlab-Event-UUID`,
  `Idempotency-Key` since 17.4, ...), `deliver_system(...)` to the system hooks, `resend(delivery)` resends
  one from the hook's log, `test_hook(hook, "push_events")` is the settings' Test button. Each answer is
  recorded on the hook as `WebHooks::AutoDisabling` of `version` (default 18.0) records it:
  `recent_failures`, `disabled_until`, and `alert_status` in the hooks API; a disabled hook is sent
  nothing. `deliveries` lists every request made.

Deliberately not GitLab: no users or groups (a token's bot user is a member of its project only), no
rate limits, and every project is private.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import re
import secrets
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import requests
from flask import Flask, Response, jsonify, request

from . import gitlab_json as gj
from . import hook_delivery as hd
from . import images
from .gitlab_json import ROLES, AccessToken, Branch, Hook, Job, MergeRequest, Project
from .servers import ServerThread
from .tokens import AdminRegistryAuth, TokenIssuer, parse_scopes

#: The ability each registry action needs (app/services/auth/container_registry_authentication_service.rb,
#: `can_access?`): `delete` and `*` need admin_container_image, not destroy_container_image.
ACTION_ABILITIES = {
    "pull": "read_container_image",
    "push": "create_container_image",
    "delete": "admin_container_image",
    "*": "admin_container_image",
}
#: A job's registry actions on its own project (`build_can_pull?`, `build_can_push?`, `build_can_delete?`).
JOB_ACTIONS = {
    "pull": "build_read_container_image",
    "push": "build_create_container_image",
    "delete": "build_destroy_container_image",
}
CI_JOB_USER = "gitlab-ci-token"
#: Scopes an API route accepts, as (scope, GET/HEAD only) in the order GitLab registers them
#: (lib/api/api.rb: `api`, and `read_api` for GET/HEAD; lib/api/users.rb and lib/api/version.rb add
#: `read_user` for GET/HEAD).
API_SCOPES: tuple[tuple[str, bool], ...] = (("api", False), ("read_api", True))
USER_API_SCOPES: tuple[tuple[str, bool], ...] = (("read_user", True), *API_SCOPES)
INSUFFICIENT_SCOPE = "The request requires higher privileges than provided by the access token."
TOKEN_REVOKED = "Token was revoked. You have to re-authorize from the user."
TOKEN_EXPIRED = "Token is expired. You can either do re-authorization or token refresh."
JWT_ACCESS_DENIED = (
    "HTTP Basic: Access denied. If a password was provided for Git authentication, the password was "
    "incorrect or you're required to use a token instead of a password. If a token was provided, it was "
    "either incorrect, expired, or improperly scoped."
)
#: Ci::HasStatus::AVAILABLE_STATUSES and COMPLETED_STATUSES (app/models/concerns/ci/has_status.rb).
PIPELINE_STATUSES = (
    "created", "waiting_for_resource", "preparing", "waiting_for_callback", "pending", "running", "success",
    "failed", "canceling", "canceled", "skipped", "manual", "scheduled",
)
PIPELINE_COMPLETED = frozenset({"success", "failed", "canceled", "skipped"})
#: Ci::Pipeline.sources (app/models/concerns/enums/ci/pipeline.rb), the values `source` accepts.
PIPELINE_SOURCES = (
    "unknown", "push", "web", "trigger", "schedule", "api", "external", "pipeline", "chat", "webide",
    "merge_request_event", "external_pull_request_event", "parent_pipeline", "ondemand_dast_scan",
    "ondemand_dast_validation", "security_orchestration_policy", "container_registry_push",
    "duo_workflow", "pipeline_execution_policy_schedule",
)
#: ALLOWED_INDEXED_COLUMNS and ALLOWED_SCOPES of app/finders/ci/pipelines_finder.rb.
PIPELINE_ORDER_BY = ("id", "status", "ref", "updated_at", "user_id")
PIPELINE_SCOPES = ("running", "pending", "finished", "branches", "tags")
#: ContainerRegistry::Path#valid? (lib/container_registry/path.rb, Gitlab::Regex container repository names).
_REPOSITORY_PATH = re.compile(r"\A[a-z0-9]+(?:(?:[._/]|__|-*)[a-z0-9])*\Z")
_HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Principal:
    """Who a request authenticated as: the admin, a project access token, or a running job."""

    kind: str  # "admin" | "project" | "job"
    project: Project | None = None
    job: Job | None = None
    token: AccessToken | None = None

    def sees(self, project: Project) -> bool:
        return self.kind == "admin" or (self.project is not None and self.project.id == project.id)

    def has_role(self, role: str) -> bool:
        if self.kind == "admin":
            return True
        if self.kind == "job":
            return ROLES.index(role) <= ROLES.index("developer")
        assert self.token is not None
        return ROLES.index(self.token.role) >= ROLES.index(role)

    @property
    def abilities(self) -> frozenset[str]:
        """Authentication abilities (lib/gitlab/auth.rb): a job's, or what the token's scopes give."""
        if self.kind == "job":
            return gj.JOB_ABILITIES
        assert self.token is not None
        return gj.scope_abilities(self.token.scopes)


@dataclass(frozen=True)
class RelayedNotification:
    headers: dict[str, str]
    body: bytes
    target: str | None
    status: int


class _RegistryAccess:
    """The stand-in's own admin access to the real registry (satisfies images.RegistryLike)."""

    def __init__(self, url: str, issuer: TokenIssuer) -> None:
        self.url = url.rstrip("/")
        self.host = urlsplit(self.url).netloc
        self._auth = AdminRegistryAuth(issuer)
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        """One session per server thread: requests does not promise a Session is thread-safe."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.auth = self._auth
        return session


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        key: str = "message",
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body if body is not None else {key: message}
        self.headers = headers or {}


class _RegistryCallFailed(Exception):
    """GitLab's own call to the registry failed (an error answer, or no answer)."""


class GitLabStandin:
    """The stand-in app and its state. Thread-safe; `start()` serves it on 127.0.0.1:<free port>."""

    def __init__(self, *, issuer: TokenIssuer | None = None, token_lifetime: int = 300) -> None:
        self.issuer = issuer or TokenIssuer()
        self.default_token_lifetime = token_lifetime
        self.token_lifetime = token_lifetime
        self.now: Callable[[], dt.datetime] = _utcnow
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._admin = AccessToken(
            id=self._next_id(),
            token="glpat-admin-" + secrets.token_urlsafe(20),
            name="admin",
            scopes=("api",),
            role="owner",
            user_id=gj.ROOT_USER["id"],
            username=gj.ROOT_USER["username"],
            created_at=self.now(),
            expires_at=None,
        )
        self._tag_delete_failures: deque[bool] = deque()
        self._note_post_failures: deque[int] = deque()
        self._projects: dict[int, Project] = {}
        self._jobs: dict[str, Job] = {}
        self._calls: Counter[str] = Counter()
        self._relay_target: str | None = None
        self.relayed: deque[RelayedNotification] = deque(maxlen=2000)
        self._registry: _RegistryAccess | None = None
        self._repository_ids: dict[str, int] = {}
        self._repository_created: dict[str, dt.datetime] = {}
        self.version: hd.Version = hd.DEFAULT_VERSION
        self.system_hooks: dict[int, hd.SystemHook] = {}
        self.deliveries: list[hd.Delivery] = []
        self.app = self._build_app()
        self._server: ServerThread | None = None
        self.url = ""

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> GitLabStandin:
        self._server = ServerThread(self.app, name="gitlab-standin").start()
        self.url = self._server.url
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v4"

    @property
    def realm(self) -> str:
        return f"{self.url}/jwt/auth"

    @property
    def relay_url(self) -> str:
        return f"{self.url}/registry-relay"

    def attach_registry(self, url: str) -> None:
        """Registry routes (`/registry/repositories...`) act on this registry."""
        self._registry = _RegistryAccess(url, self.issuer)

    # -- control surface for tests --------------------------------------------------------------
    def reset(self) -> None:
        """Forget projects, jobs, counters, relayed notifications and the relay target."""
        with self._lock:
            self._projects.clear()
            self._jobs.clear()
            self._calls.clear()
            self.relayed.clear()
            self._relay_target = None
            self.token_lifetime = self.default_token_lifetime
            self.now = _utcnow
            self.version = hd.DEFAULT_VERSION
            self.system_hooks.clear()
            self.deliveries.clear()
            self._tag_delete_failures.clear()
            self._note_post_failures.clear()
            self._admin.last_used_at = None

    @property
    def calls(self) -> Counter[str]:
        """A snapshot of request counts keyed like "GET /jwt/auth" or
        "GET /api/v4/projects/:id/merge_requests" (GitLab's doc notation for path parameters)."""
        with self._lock:
            return Counter(self._calls)

    def set_relay(self, url: str | None) -> None:
        """Forward registry notifications to `url` (None: answer 200 and drop them)."""
        with self._lock:
            self._relay_target = url

    def _next_id(self) -> int:
        return next(self._ids)

    @property
    def admin_token(self) -> str:
        """An administrator's personal access token (`api` scope): sees and may do everything."""
        return self._admin.token

    def add_project(
        self,
        path: str,
        *,
        id: int | None = None,
        default_branch: str = "main",
        role: str = "maintainer",
        scopes: tuple[str, ...] | list[str] = ("api",),
    ) -> Project:
        """A project, its default branch and a first project access token (`project.token`) with `role`
        and `scopes`. The default, an `api`-scoped Maintainer token, is what untagging needs."""
        self._check_token_args(role, scopes)
        with self._lock:
            if any(p.path.lower() == path.lower() for p in self._projects.values()):
                raise ValueError(f"project {path} exists")
            project_id = id if id is not None else self._next_id()
            while id is None and project_id in self._projects:
                project_id = self._next_id()
            if project_id in self._projects:
                raise ValueError(f"project id {project_id} is taken")
            project = Project(id=project_id, path=path, default_branch=default_branch, created_at=self.now())
            self._add_token_locked(project, role=role, scopes=scopes)
            self._projects[project_id] = project
            self._add_branch_locked(project, default_branch)
            return project

    def add_token(
        self,
        project: Project,
        *,
        role: str = "maintainer",
        scopes: tuple[str, ...] | list[str] = ("api",),
        name: str | None = None,
        expires_at: dt.date | None = None,
    ) -> str:
        """Another project access token of `project` (with its own bot user); returns the token.
        `expires_at` defaults to a year after today, the longest GitLab allows."""
        self._check_token_args(role, scopes)
        with self._lock:
            return self._add_token_locked(project, role=role, scopes=scopes, name=name, expires_at=expires_at).token

    def revoke_token(self, token: str) -> None:
        """Revoke a project access token: GitLab then refuses it everywhere (401)."""
        with self._lock:
            self.token_info(token).revoked = True

    def token_info(self, token: str) -> AccessToken:
        """The record of a project access token (or of `admin_token`): scopes, role, state."""
        with self._lock:
            if token == self._admin.token:
                return self._admin
            for project in self._projects.values():
                for record in project.tokens:
                    if record.token == token:
                        return record
        raise KeyError("no such access token")

    @staticmethod
    def _check_token_args(role: str, scopes: tuple[str, ...] | list[str]) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        unknown = [s for s in scopes if s not in gj.TOKEN_SCOPES]
        if not scopes or unknown:
            raise ValueError(f"scopes must be a non-empty subset of {gj.TOKEN_SCOPES}, not {list(scopes)}")

    def _add_token_locked(
        self,
        project: Project,
        *,
        role: str,
        scopes: tuple[str, ...] | list[str],
        name: str | None = None,
        expires_at: dt.date | None = None,
    ) -> AccessToken:
        now = self.now()
        first = not project.tokens
        username = f"project_{project.id}_bot" + ("" if first else f"_{secrets.token_hex(4)}")
        record = AccessToken(
            id=self._next_id(),
            token="glpat-" + secrets.token_urlsafe(20),
            name=name or (f"{project.name} token" if first else f"{project.name} token {len(project.tokens) + 1}"),
            scopes=tuple(scopes),
            role=role,
            user_id=100000 + project.id if first else 200000 + self._next_id(),
            username=username,
            created_at=now,
            expires_at=expires_at or now.date() + dt.timedelta(days=365),
        )
        project.tokens.append(record)
        return record

    def fail_tag_deletes(self, count: int = 1, *, after_placeholder: bool = False) -> None:
        """Make GitLab's registry calls fail for the next `count` API tag deletes (400, as GitLab answers):
        on the first call (the tag is unchanged), or with `after_placeholder` on the second (the tag is
        left on the empty manifest GitLab moved it to)."""
        with self._lock:
            self._tag_delete_failures.extend([after_placeholder] * count)

    def add_job(
        self,
        project: Project,
        *,
        pipeline_id: int,
        ref: str,
        status: str = "running",
        tag: bool = False,
        sha: str | None = None,
        name: str = "build",
        stage: str = "build",
        started_at: dt.datetime | None = None,
    ) -> str:
        """A CI job of `project`'s pipeline, started (`GET /job`'s `started_at`) at `started_at`, now unless
        given; returns its CI_JOB_TOKEN."""
        with self._lock:
            token = "glcbt-" + secrets.token_urlsafe(20)
            created = self.now()
            self._jobs[token] = Job(
                id=self._next_id(),
                token=token,
                project_id=project.id,
                pipeline_id=pipeline_id,
                ref=ref,
                status=status,
                tag=tag,
                sha=sha or gj.fake_sha(project.id, pipeline_id, ref),
                name=name,
                stage=stage,
                created_at=created,
                started_at=started_at or created,
            )
            return token

    def set_job_status(self, job_token: str, status: str) -> None:
        """Only `running` jobs authenticate, as in GitLab (the token is revoked when the job ends)."""
        with self._lock:
            self._jobs[job_token].status = status

    def job(self, job_token: str) -> Job:
        with self._lock:
            return self._jobs[job_token]

    def set_mr(
        self,
        project: Project,
        iid: int,
        *,
        source_branch: str,
        state: str = "opened",
        target_branch: str = "main",
        source_project_id: int | None = None,
        merged_at: dt.datetime | None = None,
        closed_at: dt.datetime | None = None,
        updated_at: dt.datetime | None = None,
        title: str | None = None,
    ) -> MergeRequest:
        """Create or update MR !iid. Merged/closed MRs get `merged_at`/`closed_at` = now unless given."""
        if state not in {"opened", "closed", "merged", "locked"}:
            raise ValueError(f"unknown MR state {state}")
        with self._lock:
            now = self.now()
            existing = project.merge_requests.get(iid)
            mr = MergeRequest(
                id=existing.id if existing else self._next_id(),
                iid=iid,
                project_id=project.id,
                source_branch=source_branch,
                target_branch=target_branch,
                state=state,
                source_project_id=source_project_id if source_project_id is not None else project.id,
                title=title or f"Change {iid}",
                sha=gj.fake_sha(project.id, source_branch, iid),
                created_at=existing.created_at if existing else now,
                updated_at=updated_at or now,
                merged_at=merged_at or (now if state == "merged" else None),
                closed_at=closed_at or (now if state == "closed" else None),
            )
            project.merge_requests[iid] = mr
            return mr

    def add_branch(self, project: Project, name: str) -> Branch:
        with self._lock:
            return self._add_branch_locked(project, name)

    def _add_branch_locked(self, project: Project, name: str) -> Branch:
        branch = Branch(name=name, sha=gj.fake_sha(project.id, name, self._next_id()), created_at=self.now())
        project.branches[name] = branch
        return branch

    def delete_branch(self, project: Project, name: str) -> None:
        with self._lock:
            project.branches.pop(name, None)

    def add_pipeline(
        self,
        project: Project,
        *,
        ref: str,
        status: str = "created",
        source: str = "push",
        tag: bool = False,
        sha: str | None = None,
        id: int | None = None,
        created_at: dt.datetime | None = None,
        updated_at: dt.datetime | None = None,
    ) -> gj.Pipeline:
        """A pipeline of `project` (a merge request pipeline: `ref="refs/merge-requests/<iid>/head"`,
        `source="merge_request_event"`). Its id is instance-wide (`id` to choose it), its iid the next
        of the project; both times default to now."""
        if status not in PIPELINE_STATUSES:
            raise ValueError(f"unknown pipeline status {status}")
        if source not in PIPELINE_SOURCES:
            raise ValueError(f"unknown pipeline source {source}")
        with self._lock:
            pipeline_id = id if id is not None else self._next_id()
            if any(pipeline_id in p.pipelines for p in self._projects.values()):
                raise ValueError(f"pipeline id {pipeline_id} is taken")
            created = created_at or self.now()
            pipeline = gj.Pipeline(
                id=pipeline_id,
                iid=max((p.iid for p in project.pipelines.values()), default=0) + 1,
                project_id=project.id,
                ref=ref,
                sha=sha or gj.fake_sha(project.id, ref, pipeline_id),
                status=status,
                source=source,
                tag=tag,
                created_at=created,
                updated_at=updated_at or created,
            )
            self._stamp_run(pipeline, pipeline.updated_at)
            project.pipelines[pipeline_id] = pipeline
            return pipeline

    def set_pipeline_status(
        self, project: Project, pipeline_id: int, status: str, *, updated_at: dt.datetime | None = None
    ) -> gj.Pipeline:
        """Move a pipeline to `status`; GitLab touches its `updated_at` (now unless given)."""
        if status not in PIPELINE_STATUSES:
            raise ValueError(f"unknown pipeline status {status}")
        with self._lock:
            pipeline = project.pipelines[pipeline_id]
            pipeline.status = status
            pipeline.updated_at = updated_at or self.now()
            self._stamp_run(pipeline, pipeline.updated_at)
            return pipeline

    @staticmethod
    def _stamp_run(pipeline: gj.Pipeline, at: dt.datetime) -> None:
        if pipeline.status not in {"created", "waiting_for_resource", "preparing", "pending", "scheduled"}:
            pipeline.started_at = pipeline.started_at or at
        if pipeline.status in PIPELINE_COMPLETED:
            pipeline.finished_at = at

    def archive_project(self, project: Project, archived: bool = True) -> None:
        """Archive (or unarchive) a project: GitLab then refuses notes (403) and grants no registry push or
        delete in it (ArchivedAbilities prevents creating, updating and deleting notes and container images)."""
        with self._lock:
            project.archived = archived

    def fail_note_posts(self, count: int = 1, *, status: int = 500) -> None:
        """Make the next `count` note posts answer `status` (GitLab failing or rate limiting), no note made."""
        with self._lock:
            self._note_post_failures.extend([status] * count)

    def mr_notes(self, project: Project, iid: int) -> list[gj.Note]:
        """The notes on merge request !iid, oldest first."""
        with self._lock:
            return list(project.notes.get(iid, []))

    def add_note(self, project: Project, iid: int, body: str) -> gj.Note:
        """A note on merge request !iid by the administrator (someone commenting on the MR)."""
        with self._lock:
            return self._add_note_locked(project, iid, body, gj.user_json(self.url))

    def _add_note_locked(self, project: Project, iid: int, body: str, author: dict[str, Any]) -> gj.Note:
        now = self.now()
        note = gj.Note(id=self._next_id(), mr_iid=iid, body=body, author=author, created_at=now, updated_at=now)
        project.notes.setdefault(iid, []).append(note)
        return note

    def hooks(self, project: Project) -> list[Hook]:
        """The project's hooks, with their secret token (which the API never shows)."""
        with self._lock:
            return list(project.hooks.values())

    # -- hook deliveries (tests/support/hook_delivery.py) -------------------------------------------
    def add_hook(self, project: Project, url: str, *, token: str | None = None,
                 events: tuple[str, ...] = ("push_events", "merge_requests_events", "pipeline_events")) -> Hook:
        """A project hook, as `POST /projects/:id/hooks` makes it."""
        with self._lock:
            hook = Hook(id=self._next_id(), project_id=project.id, url=url, created_at=self.now(), token=token,
                        events={name: name in events for name in gj.HOOK_EVENT_FIELDS})
            project.hooks[hook.id] = hook
            return hook

    def add_system_hook(self, url: str, *, token: str | None = None,
                        events: tuple[str, ...] = ("repository_update_events",)) -> hd.SystemHook:
        """A system hook (Admin > System hooks); its triggers are only `SystemHook::AVAILABLE_HOOKS`."""
        allowed = {hd.TRIGGERS[name] for name in hd.SYSTEM_TRIGGERS}
        if set(events) - allowed:
            raise ValueError(f"system hooks have no {sorted(set(events) - allowed)}")
        with self._lock:
            hook = hd.SystemHook(id=self._next_id(), url=url, token=token, created_at=self.now(),
                                 events={name: name in events for name in allowed})
            self.system_hooks[hook.id] = hook
            return hook

    def hook_alert_status(self, hook: Hook) -> str:
        with self._lock:
            return hd.alert_status(hook, self.now(), self.version)

    def _hook_json(self, hook: Hook) -> dict[str, Any]:
        return gj.hook_json(hook, alert_status=hd.alert_status(hook, self.now(), self.version))

    def deliver(self, project: Project, hook_name: str, data: dict[str, Any], *,
                url: str | None = None) -> list[hd.Delivery]:
        """GitLab's `project.execute_hooks(data, hook_name)`: one request to each of the project's hooks
        with that trigger on (and `url`, when given) that is executable now; a disabled hook gets none."""
        flag = hd.TRIGGERS[hook_name]
        with self._lock:
            hooks = [h for h in project.hooks.values() if h.events.get(flag) and (url is None or h.url == url)
                     and hd.executable(h, self.now(), self.version)]
        return [self._send(h, hook_name, data, hd.new_idempotency_key(self.version)) for h in hooks]

    def deliver_system(self, hook_name: str, data: dict[str, Any]) -> list[hd.Delivery]:
        """`SystemHooksService`: one request to each system hook with that trigger on (system hooks are
        never auto-disabled)."""
        if hook_name not in hd.SYSTEM_TRIGGERS:
            raise ValueError(f"system hooks never send {hook_name}")
        flag = hd.TRIGGERS[hook_name]
        with self._lock:
            hooks = [h for h in self.system_hooks.values() if h.events.get(flag)]
        return [self._send(h, hook_name, data, hd.new_idempotency_key(self.version)) for h in hooks]

    def resend(self, delivery: hd.Delivery) -> hd.Delivery | None:
        """"Resend request" on a hook log entry (app/services/web_hooks/events/resend_service.rb): the same
        data and trigger with the log's `Idempotency-Key` (none before 17.4: then a new request is all it
        is); refused (None) while the hook is not executable."""
        with self._lock:
            hook = self._hook_by_id(delivery.hook_id)
            if isinstance(hook, Hook) and not hd.executable(hook, self.now(), self.version):
                return None
        return self._send(hook, delivery.hook_name, delivery.data, delivery.idempotency_key)

    def test_hook(self, hook: Hook | hd.SystemHook, trigger: str,
                  data: dict[str, Any] | None = None) -> hd.Delivery:
        """The hook settings' Test button (app/services/test_hooks/project_service.rb, system_service.rb):
        sent with `force: true`, even to a disabled hook. Push and tag push: `Push.build_sample` of the
        project (its SAMPLE_DATA when the repository is empty, and always for a system hook); a system
        hook's repository update: `Repository::SAMPLE_DATA`. Other triggers send `data` (GitLab builds it
        from the project's first note, issue, job or pipeline)."""
        hook_name = hd.TEST_TRIGGERS[trigger]
        with self._lock:
            if data is None:
                if trigger in ("push_events", "tag_push_events"):
                    if isinstance(hook, Hook):
                        data = hd.push_sample(self._projects[hook.project_id], self.url, gj.ROOT_USER)
                    else:
                        data = json.loads(json.dumps(hd.PUSH_SAMPLE_DATA))
                elif trigger == "repository_update_events" and isinstance(hook, hd.SystemHook):
                    data = json.loads(json.dumps(hd.REPOSITORY_UPDATE_SAMPLE_DATA))
                else:
                    raise ValueError(f"give the data GitLab would build for a {trigger} test")
        return self._send(hook, hook_name, data, hd.new_idempotency_key(self.version))

    def _hook_by_id(self, hook_id: int) -> Hook | hd.SystemHook:
        if hook_id in self.system_hooks:
            return self.system_hooks[hook_id]
        for project in self._projects.values():
            if hook_id in project.hooks:
                return project.hooks[hook_id]
        raise KeyError(f"no hook {hook_id}")

    def _send(self, hook: Hook | hd.SystemHook, hook_name: str, data: dict[str, Any],
              idempotency_key: str | None) -> hd.Delivery:
        system = isinstance(hook, hd.SystemHook)
        headers = hd.request_headers(self.version, self.url, hook_name, hook.token, idempotency_key, system=system)
        status, answer = hd.post(hook.url, data, headers)
        with self._lock:
            failures, alert = 0, "executable"
            if isinstance(hook, Hook):
                hd.record_answer(hook, status, self.now(), self.version)
                failures, alert = hook.recent_failures, hd.alert_status(hook, self.now(), self.version)
            delivery = hd.Delivery(hook_id=hook.id, url=hook.url, hook_name=hook_name, data=data, headers=headers,
                                   status=status, answer=answer, idempotency_key=idempotency_key,
                                   recent_failures=failures, alert_status=alert)
            self.deliveries.append(delivery)
            return delivery

    # -- lookups ----------------------------------------------------------------------------------
    def _project_by_ref(self, ref: str) -> Project | None:
        if ref.isdigit():
            return self._projects.get(int(ref))
        return next((p for p in self._projects.values() if p.path.lower() == ref.lower()), None)

    def _project_of_repository(self, repository: str) -> Project | None:
        """The project whose path is the longest prefix of `repository` (as GitLab resolves it)."""
        owners = [p for p in self._projects.values() if p.owns_repository(repository)]
        return max(owners, key=lambda p: len(p.path), default=None)

    def _access_token(self, token: str) -> tuple[AccessToken, Project | None] | None:
        """The access token with this value and its project (None for the admin's), in any state."""
        if secrets.compare_digest(token, self._admin.token):
            return self._admin, None
        for project in self._projects.values():
            for record in project.tokens:
                if secrets.compare_digest(token, record.token):
                    return record, project
        return None

    def _token_principal(self, record: AccessToken, project: Project | None) -> Principal:
        record.last_used_at = self.now()
        if project is None:
            return Principal("admin", token=record)
        return Principal("project", project=project, token=record)

    def _job_principal(self, token: str) -> Principal | None:
        job = self._jobs.get(token)
        if job is None or job.status != "running":
            return None
        return Principal("job", project=self._projects.get(job.project_id), job=job)

    # -- the app ----------------------------------------------------------------------------------
    def _build_app(self) -> Flask:
        app = Flask("gitlab_standin")
        app.json.sort_keys = False  # type: ignore[attr-defined]

        @app.errorhandler(ApiError)
        def api_error(exc: ApiError) -> tuple[Response, int]:
            response = jsonify(exc.body)
            response.headers.update(exc.headers)
            return response, exc.status

        @app.errorhandler(404)
        def not_found(_exc: Exception) -> tuple[Response, int]:
            self._count(f"{request.method} {request.path}")
            return jsonify({"error": "404 Not Found"}), 404

        @app.errorhandler(405)
        def not_allowed(_exc: Exception) -> tuple[Response, int]:
            self._count(f"{request.method} {request.path}")
            return jsonify({"error": "405 Method Not Allowed"}), 405

        app.add_url_rule("/jwt/auth", view_func=self._jwt_auth, methods=["GET"])
        app.add_url_rule("/api/v4/job", view_func=self._get_job, methods=["GET"])
        app.add_url_rule("/api/v4/user", view_func=self._get_user, methods=["GET"])
        app.add_url_rule("/api/v4/version", view_func=self._get_version, methods=["GET"])
        app.add_url_rule(
            "/api/v4/personal_access_tokens/self", view_func=self._get_token_self, methods=["GET"]
        )
        app.add_url_rule(
            "/api/v4/projects/<path:_rest>",
            view_func=self._projects_api,
            methods=["GET", "POST", "PUT", "DELETE"],
        )
        app.add_url_rule("/api/v4/projects", view_func=self._list_projects, methods=["GET"])
        app.add_url_rule("/api/v4/groups/<path:_rest>", view_func=self._group_projects, methods=["GET"])
        app.add_url_rule("/registry-relay", view_func=self._relay, methods=["POST"])
        return app

    def _count(self, key: str) -> None:
        with self._lock:
            self._calls[key] += 1

    # /jwt/auth -----------------------------------------------------------------------------------
    def _jwt_auth(self) -> Response | tuple[Response, int]:
        """GET /jwt/auth: HTTP Basic only (another scheme is anonymous); the answer is `{"token"}` alone."""
        self._count("GET /jwt/auth")
        if request.args.get("service") != self.issuer.service:
            return Response(status=404)
        auth = request.authorization
        principal: Principal | None = None
        if auth is not None and auth.type == "basic":
            with self._lock:
                principal = self._git_client_principal(auth.username or "", auth.password or "")
            if principal is None:
                return jsonify({"errors": [{"code": "UNAUTHORIZED", "message": JWT_ACCESS_DENIED}]}), 401
            if not principal.abilities & gj.REGISTRY_LOGIN_ABILITIES:
                return self._jwt_denied()
        with self._lock:
            access = [
                entry
                for kind, name, actions in parse_scopes(request.args.getlist("scope"))
                if (entry := self._grant(principal, kind, name, actions)) is not None
            ]
            lifetime = self.token_lifetime
        if principal is None and not access:
            return self._jwt_denied()
        token, _claims = self.issuer.issue(self._subject(principal), access, lifetime=lifetime)
        return jsonify({"token": token})

    @staticmethod
    def _jwt_denied() -> tuple[Response, int]:
        """The service's error hash, rendered whole by JwtController (so `http_status` is in the body)."""
        body = {"errors": [{"code": "DENIED", "message": "access forbidden"}], "http_status": 403}
        return jsonify(body), 403

    def _git_client_principal(self, login: str, password: str) -> Principal | None:
        """Gitlab::Auth.find_for_git_client: a job token only with login `gitlab-ci-token`; an access
        token (any login) only while active."""
        if not password:
            return None
        if login == CI_JOB_USER:
            job = self._job_principal(password)
            if job is not None:
                return job
        found = self._access_token(password)
        if found is None or not found[0].active(self.now()):
            return None
        return self._token_principal(*found)

    @staticmethod
    def _subject(principal: Principal | None) -> str:
        if principal is None:
            return "anonymous"
        if principal.token is not None:
            return principal.token.username
        return gj.ROOT_USER["username"]

    def _grant(
        self, principal: Principal | None, kind: str, name: str, actions: list[str]
    ) -> dict[str, Any] | None:
        """One access entry as GitLab's `process_scope` builds it, or None when it grants nothing."""
        if kind == "registry":
            admin = principal is not None and principal.kind == "admin"
            if admin and name == "catalog" and actions == ["*"]:
                return {"type": kind, "name": name, "actions": ["*"]}
            return None
        if kind != "repository" or not _REPOSITORY_PATH.match(name):
            return None
        project = self._project_of_repository(name)
        if project is None:
            return None
        granted = [a for a in actions if self._can_access(principal, project, a)]
        return {"type": kind, "name": name, "actions": granted} if granted else None

    @staticmethod
    def _can_access(principal: Principal | None, project: Project, action: str) -> bool:
        if principal is None:  # every stand-in project is private
            return False
        if project.archived and action != "pull":  # ArchivedAbilities: container images read-only
            return False
        if principal.kind == "admin":
            return action in ACTION_ABILITIES
        if principal.project is None or principal.project.id != project.id:
            return False
        if principal.kind == "job":
            return JOB_ACTIONS.get(action, "") in principal.abilities
        assert principal.token is not None
        ability = ACTION_ABILITIES.get(action)
        return ability in principal.abilities and ability in gj.ROLE_ABILITIES[principal.token.role]

    # /api/v4/job, /user, /version ---------------------------------------------------------------
    def _get_job(self) -> Response:
        self._count("GET /api/v4/job")
        token = request.headers.get("JOB-TOKEN") or request.args.get("job_token")
        if token is None and request.authorization is not None and request.authorization.type == "bearer":
            token = request.authorization.token
        with self._lock:
            job = self._jobs.get(token or "")
            if job is None or job.status != "running":
                raise ApiError(401, "401 Unauthorized")
            project = self._projects[job.project_id]
            return jsonify(gj.job_json(self.url, project, job))

    def _api_principal(
        self, *, allow_job: bool = False, scopes: tuple[tuple[str, bool], ...] | None = API_SCOPES
    ) -> Principal:
        """Who calls the API (lib/api/api_guard.rb, lib/gitlab/auth/auth_finders.rb): an access token
        (PRIVATE-TOKEN, private_token or Bearer) first, else a job token where the route takes one.
        The token must be active and hold one of `scopes` ((scope, GET/HEAD only) pairs; None: any)."""
        token = request.headers.get("PRIVATE-TOKEN") or request.args.get("private_token")
        auth = request.authorization
        if token is None and auth is not None and auth.type == "bearer":
            token = auth.token
        if token:
            with self._lock:
                found = self._access_token(token)
                if found is None:
                    raise ApiError(401, "401 Unauthorized")
                record, project = found
                now = self.now()
                if record.expired(now):
                    raise self._invalid_token(TOKEN_EXPIRED)
                if record.revoked:
                    raise self._invalid_token(TOKEN_REVOKED)
                if scopes is not None and not self._scope_allows(record, scopes):
                    body = {
                        "error": "insufficient_scope",
                        "error_description": INSUFFICIENT_SCOPE,
                        "scope": " ".join(name for name, _ in scopes),
                    }
                    raise ApiError(403, INSUFFICIENT_SCOPE, body=body)
                return self._token_principal(record, project)
        job_token = (request.headers.get("JOB-TOKEN") or request.args.get("job_token")) if allow_job else None
        if job_token:
            with self._lock:
                principal = self._job_principal(job_token)
            if principal is not None:
                return principal
        raise ApiError(401, "401 Unauthorized")

    @staticmethod
    def _scope_allows(record: AccessToken, scopes: tuple[tuple[str, bool], ...]) -> bool:
        reading = request.method in {"GET", "HEAD"}
        return any(name in record.scopes and (reading or not read_only) for name, read_only in scopes)

    @staticmethod
    def _invalid_token(description: str) -> ApiError:
        """Rack::OAuth2's Bearer 401 as GitLab's API guard renders it."""
        header = f'Bearer realm="Protected by OAuth 2.0", error="invalid_token", error_description="{description}"'
        return ApiError(
            401,
            description,
            body={"error": "invalid_token", "error_description": description},
            headers={"WWW-Authenticate": header},
        )

    def _get_user(self) -> Response:
        self._count("GET /api/v4/user")
        principal = self._api_principal(scopes=USER_API_SCOPES)
        if principal.kind == "project":
            assert principal.token is not None
            return jsonify(gj.bot_user_json(self.url, principal.token))
        return jsonify({**gj.user_json(self.url), "is_admin": True, "bot": False})

    def _get_version(self) -> Response:
        self._count("GET /api/v4/version")
        self._api_principal(scopes=USER_API_SCOPES)
        return jsonify({"version": "17.5.1", "revision": "standin", "kas": {"enabled": False}})

    def _get_token_self(self) -> Response:
        """GET /personal_access_tokens/self (lib/api/personal_access_tokens/self_information.rb): any
        scope may read its own token, project access tokens included."""
        self._count("GET /api/v4/personal_access_tokens/self")
        principal = self._api_principal(scopes=None)
        assert principal.token is not None
        with self._lock:
            return jsonify(gj.access_token_json(principal.token, self.now()))

    # /api/v4/projects/... -----------------------------------------------------------------------
    _ROUTES: tuple[tuple[str, str, str], ...] = (
        ("GET", "", "_api_project"),
        ("GET", "merge_requests", "_api_list_mrs"),
        ("GET", "merge_requests/:iid", "_api_get_mr"),
        ("GET", "merge_requests/:iid/notes", "_api_list_mr_notes"),
        ("POST", "merge_requests/:iid/notes", "_api_create_mr_note"),
        ("GET", "repository/branches", "_api_list_branches"),
        ("GET", "repository/branches/:branch", "_api_get_branch"),
        ("GET", "pipelines", "_api_list_pipelines"),
        ("GET", "pipelines/:pipeline_id", "_api_get_pipeline"),
        ("GET", "hooks", "_api_list_hooks"),
        ("POST", "hooks", "_api_create_hook"),
        ("GET", "hooks/:hook_id", "_api_get_hook"),
        ("PUT", "hooks/:hook_id", "_api_update_hook"),
        ("DELETE", "hooks/:hook_id", "_api_delete_hook"),
        ("GET", "registry/repositories", "_api_list_repositories"),
        ("GET", "registry/repositories/:repository_id/tags", "_api_list_tags"),
        ("GET", "registry/repositories/:repository_id/tags/:tag_name", "_api_get_tag"),
        ("DELETE", "registry/repositories/:repository_id/tags/:tag_name", "_api_delete_tag"),
    )

    @staticmethod
    def _raw_segments() -> list[str]:
        """Path segments as sent (so `group%2Fapp` and `feature%2Fx` stay one segment each), decoded."""
        raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.path
        path = urlsplit(raw).path
        return [unquote(s) for s in path.split("/")[4:]]  # after '', 'api', 'v4', 'projects' or 'groups'

    def _projects_api(self, _rest: str) -> Any:
        segments = self._raw_segments()
        project_ref, tail = segments[0], segments[1:]
        for method, pattern, handler in self._ROUTES:
            parts = pattern.split("/") if pattern else []
            if method != request.method or len(parts) != len(tail):
                continue
            if all(p.startswith(":") or p == s for p, s in zip(parts, tail, strict=True)):
                self._count(f"{method} /api/v4/projects/:id" + (f"/{pattern}" if pattern else ""))
                params = {p[1:]: s for p, s in zip(parts, tail, strict=True) if p.startswith(":")}
                principal = self._api_principal(allow_job=pattern.startswith("registry"))
                with self._lock:
                    project = self._project_by_ref(project_ref)
                if project is None or not principal.sees(project):
                    raise ApiError(404, "404 Project Not Found")
                return getattr(self, handler)(principal, project, **params)
        self._count(f"{request.method} {request.path}")
        raise ApiError(404, "404 Not Found", key="error")

    def _api_project(self, principal: Principal, project: Project) -> Response:
        return jsonify(gj.project_json(self.url, project, self._registry.host if self._registry else None))

    def _project_list(self, principal: Principal, keep: Callable[[Project], bool]) -> Response:
        search = (request.args.get("search") or "").lower()
        host = self._registry.host if self._registry else None
        with self._lock:
            found = sorted(
                (
                    p
                    for p in self._projects.values()
                    if principal.sees(p) and keep(p) and search in p.path.lower()
                ),
                key=lambda p: p.id,
                reverse=request.args.get("sort", "desc") == "desc",
            )
            return self._paginate([gj.project_json(self.url, p, host) for p in found])

    def _list_projects(self) -> Response:
        self._count("GET /api/v4/projects")
        return self._project_list(self._api_principal(), lambda p: True)

    def _group_projects(self, _rest: str) -> Response:
        """GET /groups/:id/projects; a group is any namespace some project path has."""
        segments = self._raw_segments()
        if segments[1:] != ["projects"]:
            self._count(f"{request.method} {request.path}")
            raise ApiError(404, "404 Not Found", key="error")
        self._count("GET /api/v4/groups/:id/projects")
        principal = self._api_principal()
        group = segments[0].lower()
        nested = request.args.get("include_subgroups", "").lower() == "true"

        def in_group(p: Project) -> bool:
            namespace = p.namespace.lower()
            return namespace == group or (nested and namespace.startswith(group + "/"))

        with self._lock:
            known = any(
                p.namespace.lower() == group or p.namespace.lower().startswith(group + "/")
                for p in self._projects.values()
            )
        if not known:
            raise ApiError(404, "404 Group Not Found")
        return self._project_list(principal, in_group)

    # pagination as GitLab does it: page/per_page, X-* headers and a Link header
    def _paginate(self, items: list[Any]) -> Response:
        try:
            page = max(int(request.args.get("page") or 1), 1)
            per_page = min(max(int(request.args.get("per_page") or 20), 1), 100)
        except ValueError as exc:
            raise ApiError(400, "page or per_page is invalid", key="error") from exc
        total = len(items)
        pages = max(math.ceil(total / per_page), 1)
        response = jsonify(items[(page - 1) * per_page : page * per_page])
        raw = request.environ.get("RAW_URI") or request.path
        base = f"{self.url}{urlsplit(raw).path}"
        query = [(k, v) for k, v in request.args.items(multi=True) if k not in {"page", "per_page"}]

        def link(n: int) -> str:
            return f"{base}?{urlencode([*query, ('page', n), ('per_page', per_page)])}"

        links = []
        if page < pages:
            links.append(f'<{link(page + 1)}>; rel="next"')
        if page > 1:
            links.append(f'<{link(page - 1)}>; rel="prev"')
        links += [f'<{link(1)}>; rel="first"', f'<{link(pages)}>; rel="last"']
        response.headers.update(
            {
                "X-Page": str(page),
                "X-Per-Page": str(per_page),
                "X-Total": str(total),
                "X-Total-Pages": str(pages),
                "X-Next-Page": str(page + 1) if page < pages else "",
                "X-Prev-Page": str(page - 1) if page > 1 else "",
                "Link": ", ".join(links),
            }
        )
        return response

    @staticmethod
    def _time_arg(name: str) -> dt.datetime | None:
        value = request.args.get(name)
        if not value:
            return None
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise ApiError(400, f"{name} is invalid", key="error") from exc
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)

    def _api_list_mrs(self, principal: Principal, project: Project) -> Response:
        state = request.args.get("state", "all")
        if state not in {"opened", "closed", "locked", "merged", "all"}:
            raise ApiError(400, "state does not have a valid value", key="error")
        after, before = self._time_arg("updated_after"), self._time_arg("updated_before")
        source, target = request.args.get("source_branch"), request.args.get("target_branch")
        iids = {int(i) for i in request.args.getlist("iids[]") if i.isdigit()}
        with self._lock:
            mrs = [
                mr
                for mr in project.merge_requests.values()
                if (state == "all" or mr.state == state)
                and (after is None or mr.updated_at >= after)
                and (before is None or mr.updated_at <= before)
                and (source is None or mr.source_branch == source)
                and (target is None or mr.target_branch == target)
                and (not iids or mr.iid in iids)
            ]
            order = request.args.get("order_by", "created_at")
            key = (lambda m: m.updated_at) if order == "updated_at" else (lambda m: (m.created_at, m.id))
            mrs.sort(key=key, reverse=request.args.get("sort", "desc") == "desc")
            return self._paginate([gj.merge_request_json(self.url, project, mr) for mr in mrs])

    def _api_get_mr(self, principal: Principal, project: Project, iid: str) -> Response:
        with self._lock:
            mr = project.merge_requests.get(int(iid)) if iid.isdigit() else None
            if mr is None:
                raise ApiError(404, "404 Not found")
            return jsonify(gj.merge_request_json(self.url, project, mr))

    def _api_list_branches(self, principal: Principal, project: Project) -> Response:
        search = request.args.get("search") or ""
        prefix, suffix = search.startswith("^"), search.endswith("$")
        needle = search.strip("^$").lower()

        def matches(name: str) -> bool:
            low = name.lower()
            if prefix and suffix:
                return low == needle
            if prefix:
                return low.startswith(needle)
            if suffix:
                return low.endswith(needle)
            return needle in low

        with self._lock:
            branches = sorted((b for b in project.branches.values() if matches(b.name)), key=lambda b: b.name)
            return self._paginate([gj.branch_json(self.url, project, b) for b in branches])

    def _api_get_branch(self, principal: Principal, project: Project, branch: str) -> Response:
        with self._lock:
            found = project.branches.get(branch)
            if found is None:
                raise ApiError(404, "404 Branch Not Found")
            return jsonify(gj.branch_json(self.url, project, found))

    # pipelines (lib/api/ci/pipelines.rb, app/finders/ci/pipelines_finder.rb) ----------------------
    @staticmethod
    def _choice(name: str, allowed: tuple[str, ...], default: str | None = None) -> str | None:
        """A parameter Grape checks against `values:`: 400 `<name> does not have a valid value`."""
        value = request.args.get(name, default)
        if value is not None and value not in allowed:
            raise ApiError(400, f"{name} does not have a valid value", key="error")
        return value

    def _api_list_pipelines(self, principal: Principal, project: Project) -> Response:
        """GET /projects/:id/pipelines: child pipelines only when `source=parent_pipeline`; `updated_after`
        and `created_after` are inclusive (`>=`), as are their `_before` pairs (`<=`); `order_by` one of
        GitLab's indexed columns (default `id`), `sort` `desc` unless `asc`."""
        scope = self._choice("scope", PIPELINE_SCOPES)
        status = self._choice("status", PIPELINE_STATUSES)
        source = self._choice("source", PIPELINE_SOURCES)
        order = self._choice("order_by", PIPELINE_ORDER_BY, "id")
        sort = self._choice("sort", ("asc", "desc"), "desc")
        ref, sha = request.args.get("ref"), request.args.get("sha")
        updated_after, updated_before = self._time_arg("updated_after"), self._time_arg("updated_before")
        created_after, created_before = self._time_arg("created_after"), self._time_arg("created_before")
        with self._lock:
            found = [
                p
                for p in project.pipelines.values()
                if (source == "parent_pipeline" or p.source != "parent_pipeline")
                and (scope != "running" or p.status == "running")
                and (scope != "pending" or p.status == "pending")
                and (scope != "finished" or p.status in PIPELINE_COMPLETED)
                and (scope != "branches" or (not p.tag and p.ref in project.branches))
                and (scope != "tags" or p.tag)
                and (status is None or p.status == status)
                and (source is None or p.source == source)
                and (not ref or p.ref == ref)
                and (not sha or p.sha == sha)
                and (updated_after is None or p.updated_at >= updated_after)
                and (updated_before is None or p.updated_at <= updated_before)
                and (created_after is None or p.created_at >= created_after)
                and (created_before is None or p.created_at <= created_before)
            ]
            if scope in ("branches", "tags"):  # the latest pipeline of each ref
                latest: dict[str, gj.Pipeline] = {}
                for p in found:
                    if p.ref not in latest or p.id > latest[p.ref].id:
                        latest[p.ref] = p
                found = list(latest.values())
            keys: dict[str | None, Callable[[gj.Pipeline], Any]] = {
                "status": lambda p: (p.status, p.id),
                "ref": lambda p: (p.ref, p.id),
                "updated_at": lambda p: (p.updated_at, p.id),
            }
            found.sort(key=keys.get(order, lambda p: p.id), reverse=sort == "desc")
            return self._paginate([gj.pipeline_json(self.url, project, p) for p in found])

    def _api_get_pipeline(self, principal: Principal, project: Project, pipeline_id: str) -> Response:
        with self._lock:
            found = project.pipelines.get(int(pipeline_id)) if pipeline_id.isdigit() else None
            if found is None:
                raise ApiError(404, "404 Not found")
            return jsonify(gj.pipeline_detail_json(self.url, project, found))

    # merge request notes ----------------------------------------------------------------------
    def _readable_mr(self, principal: Principal, project: Project, iid: str) -> MergeRequest:
        """find_noteable: the merge request, if the principal may read it (Reporter in a private
        project), else 404 as for one that does not exist."""
        mr = project.merge_requests.get(int(iid)) if iid.isdigit() else None
        if mr is None or not principal.has_role("reporter"):
            raise ApiError(404, "404 Not found")
        return mr

    def _api_list_mr_notes(self, principal: Principal, project: Project, iid: str) -> Response:
        order = request.args.get("order_by", "created_at")
        sort = request.args.get("sort", "desc")
        if order not in {"created_at", "updated_at"}:
            raise ApiError(400, "order_by does not have a valid value", key="error")
        if sort not in {"asc", "desc"}:
            raise ApiError(400, "sort does not have a valid value", key="error")
        with self._lock:
            mr = self._readable_mr(principal, project, iid)
            notes = sorted(project.notes.get(mr.iid, []), key=lambda n: (getattr(n, order), n.id),
                           reverse=sort == "desc")
            return self._paginate([gj.note_json(project, mr, n) for n in notes])

    def _api_create_mr_note(self, principal: Principal, project: Project, iid: str) -> tuple[Response, int]:
        """POST .../merge_requests/:iid/notes: `body` (JSON, form or query), the merge request found
        (404), `create_note` authorized (403: an archived project), the note validated (400), 201."""
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            data = {**request.args.to_dict(), **request.form.to_dict()}
        body = data.get("body")
        if body is None:
            raise ApiError(400, "body is missing", key="error")
        with self._lock:
            mr = self._readable_mr(principal, project, iid)
            if project.archived:
                raise ApiError(403, "403 Forbidden")
            failure = self._note_post_failures.popleft() if self._note_post_failures else None
            if failure is not None:
                raise ApiError(failure, f"{failure} {HTTPStatus(failure).phrase}")
            text = str(body)
            if not text.strip():
                raise ApiError(400, '400 Bad request - Note {:note=>["can\'t be blank"]}')
            if len(text) > 1_000_000:
                raise ApiError(400, '400 Bad request - Note {:note=>["is too long (maximum is 1000000 characters)"]}')
            if principal.token is not None and principal.kind == "project":
                author = gj.bot_user_json(self.url, principal.token)
            else:
                author = gj.user_json(self.url)
            note = self._add_note_locked(project, mr.iid, text, author)
            return jsonify(gj.note_json(project, mr, note)), 201

    # hooks ------------------------------------------------------------------------------------
    def _need_role(self, principal: Principal, role: str) -> None:
        if not principal.has_role(role):
            raise ApiError(403, "403 Forbidden")

    @staticmethod
    def _hook_params() -> dict[str, Any]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            data = request.form.to_dict()

        def boolean(value: Any) -> bool:
            return value is True or str(value).lower() in {"true", "1", "yes", "on"}

        params: dict[str, Any] = {}
        for name in (*gj.HOOK_EVENT_FIELDS, "enable_ssl_verification"):
            if name in data:
                params[name] = boolean(data[name])
        for name in ("url", "token", "push_events_branch_filter", "name", "description"):
            if name in data:
                params[name] = data[name]
        return params

    def _apply_hook(self, hook: Hook, params: dict[str, Any]) -> None:
        for name, value in params.items():
            if name in gj.HOOK_EVENT_FIELDS:
                hook.events[name] = value
            else:
                setattr(hook, name, value)

    def _api_list_hooks(self, principal: Principal, project: Project) -> Response:
        self._need_role(principal, "maintainer")
        with self._lock:
            return self._paginate([self._hook_json(h) for h in project.hooks.values()])

    def _api_create_hook(self, principal: Principal, project: Project) -> tuple[Response, int]:
        self._need_role(principal, "maintainer")
        params = self._hook_params()
        if not params.get("url"):
            raise ApiError(400, "url is missing", key="error")
        with self._lock:
            hook = Hook(id=self._next_id(), project_id=project.id, url=params["url"], created_at=self.now())
            self._apply_hook(hook, params)
            project.hooks[hook.id] = hook
            return jsonify(self._hook_json(hook)), 201

    def _find_hook(self, project: Project, hook_id: str) -> Hook:
        hook = project.hooks.get(int(hook_id)) if hook_id.isdigit() else None
        if hook is None:
            raise ApiError(404, "404 Not found")
        return hook

    def _api_get_hook(self, principal: Principal, project: Project, hook_id: str) -> Response:
        self._need_role(principal, "maintainer")
        with self._lock:
            return jsonify(self._hook_json(self._find_hook(project, hook_id)))

    def _api_update_hook(self, principal: Principal, project: Project, hook_id: str) -> Response:
        self._need_role(principal, "maintainer")
        params = self._hook_params()
        with self._lock:
            hook = self._find_hook(project, hook_id)
            self._apply_hook(hook, params)
            return jsonify(self._hook_json(hook))

    def _api_delete_hook(self, principal: Principal, project: Project, hook_id: str) -> Response:
        self._need_role(principal, "maintainer")
        with self._lock:
            project.hooks.pop(self._find_hook(project, hook_id).id)
        return Response(status=204)

    # registry repositories and tags, against the real registry -----------------------------------
    def _registry_access(self) -> _RegistryAccess:
        if self._registry is None:
            raise ApiError(500, "the stand-in has no registry attached (use the `registry` fixture)")
        return self._registry

    def _repository_id(self, repository: str) -> int:
        with self._lock:
            if repository not in self._repository_ids:
                self._repository_ids[repository] = self._next_id()
                self._repository_created[repository] = self.now()
            return self._repository_ids[repository]

    def _project_repositories(self, project: Project) -> list[str]:
        registry = self._registry_access()
        names = [r for r in images.catalog(registry) if project.owns_repository(r)]
        with self._lock:
            return sorted(r for r in names if self._project_of_repository(r) is project)

    def _repository_by_id(self, project: Project, repository_id: str) -> str:
        with self._lock:
            found = next((r for r, i in self._repository_ids.items() if str(i) == repository_id), None)
            if found is None or self._project_of_repository(found) is not project:
                raise ApiError(404, "404 Repository Not Found")
            return found

    def _api_list_repositories(self, principal: Principal, project: Project) -> Response:
        registry = self._registry_access()
        with_tags = request.args.get("tags", "").lower() == "true"
        with_count = request.args.get("tags_count", "").lower() == "true"
        body = []
        for repository in self._project_repositories(project):
            item = gj.registry_repository_json(
                self._repository_id(repository),
                project,
                repository,
                registry.host,
                self._repository_created[repository],
            )
            if with_tags or with_count:
                names = images.tags(registry, repository)
                if with_tags:
                    item["tags"] = [gj.registry_tag_json(repository, t, registry.host) for t in names]
                if with_count:
                    item["tags_count"] = len(names)
            body.append(item)
        return self._paginate(body)

    def _api_list_tags(self, principal: Principal, project: Project, repository_id: str) -> Response:
        registry = self._registry_access()
        repository = self._repository_by_id(project, repository_id)
        names = images.tags(registry, repository)
        return self._paginate([gj.registry_tag_json(repository, t, registry.host) for t in names])

    def _api_get_tag(
        self, principal: Principal, project: Project, repository_id: str, tag_name: str
    ) -> Response:
        registry = self._registry_access()
        repository = self._repository_by_id(project, repository_id)
        found = images.get_manifest(registry, repository, tag_name)
        if found is None:
            raise ApiError(404, "404 Tag Not Found")
        body, _media_type, digest = found
        manifest = images.json.loads(body)
        config = manifest.get("config") or {}
        size = sum(int(layer.get("size", 0)) for layer in manifest.get("layers", [])) + int(
            config.get("size", 0)
        )
        revision = str(config.get("digest", digest)).split(":", 1)[-1]
        # ContainerRegistry::Tag#created_at: the config blob's `created` (an index has no config: null).
        blob = images.get_blob(registry, repository, config["digest"]) if config.get("digest") else None
        created = gj.config_created(images.json.loads(blob)) if blob else None
        return jsonify(
            {
                **gj.registry_tag_json(repository, tag_name, registry.host),
                "revision": revision,
                "short_revision": revision[:9],
                "digest": digest,
                "created_at": gj.datetime_json(created),
                "total_size": size,
            }
        )

    def _api_delete_tag(
        self, principal: Principal, project: Project, repository_id: str, tag_name: str
    ) -> Response:
        """DELETE .../tags/:tag_name needs destroy_container_image (Developer). GitLab moves the tag to an
        empty manifest and deletes that by digest; any failed registry call answers 400."""
        self._need_role(principal, "developer")
        if project.archived:
            raise ApiError(403, "403 Forbidden")
        registry = self._registry_access()
        repository = self._repository_by_id(project, repository_id)
        try:
            if images.digest_of(registry, repository, tag_name) is None:
                raise ApiError(404, "404 Tag Not Found")
            with self._lock:
                failure = self._tag_delete_failures.popleft() if self._tag_delete_failures else None
            if failure is False:
                raise _RegistryCallFailed("put_tag")
            placeholder = images.push_placeholder(registry, repository, [tag_name])
            if failure is True:
                raise _RegistryCallFailed("delete_tag")
            if images.delete_manifest(registry, repository, placeholder).status_code not in {202, 404}:
                raise _RegistryCallFailed("delete_tag")
        except (_RegistryCallFailed, images.RegistryError, requests.RequestException) as exc:
            raise ApiError(400, "400 Bad request") from exc
        return Response(status=200)

    # registry notification relay -------------------------------------------------------------------
    def _relay(self) -> Response:
        self._count("POST /registry-relay")
        body = request.get_data()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        with self._lock:
            target = self._relay_target
        status = 200
        if target is not None:
            try:
                status = requests.post(target, data=body, headers=headers, timeout=5).status_code
            except requests.RequestException:
                status = 502
        self.relayed.append(RelayedNotification(headers=headers, body=body, target=target, status=status))
        return Response(status=status)
