"""How GitLab delivers a hook and what the receiver's answer does to it, each rule from GitLab's source.

The stand-in (`GitLabStandin.deliver`, `.resend`, `.test_hook`, `.deliver_system`) uses these to post
GitLab-shaped deliveries to a real URL (the janitor served by a `ServerThread`) and to keep the hook's
state as GitLab keeps it. The version modelled is `GitLabStandin.version` (a `(major, minor)` tuple).

- Headers (app/services/web_hook_service.rb `build_headers`, lib/gitlab/web_hooks.rb,
  lib/gitlab/web_hooks/recursion_detection.rb): `Content-Type: application/json`, `User-Agent:
  GitLab/<version>`, `X-Gitlab-Event` (`hook_to_event`: the trigger singular and titleized, `Pipeline
  Hook`; `System Hook` for every system hook delivery), `X-Gitlab-Token` when the hook has a secret,
  `X-Gitlab-Instance` (15.5+), `X-Gitlab-Webhook-UUID` (16.2+, new on every request),
  `X-Gitlab-Event-UUID` (the UUID of the request that triggered the hook: a manual resend is a new
  request, so a new UUID) and `Idempotency-Key` (17.4+: one per event, kept when the delivery is resent
  from the hook's log, app/services/web_hooks/events/resend_service.rb).
- The answer (app/services/web_hooks/log_execution_service.rb, `update_hook_failure_state`; only project
  hooks, `WebHooks::AutoDisabling::ENABLED_HOOK_TYPES`): 2xx and 3xx re-enable the hook (`enable!`).
  Since 17.11 every other answer, and no answer, is `backoff!`: one more failure; past 3 failures the hook
  is temporarily disabled for 1 minute, doubling up to a day; past 39 it is disabled for good
  (app/models/concerns/web_hooks/auto_disabling.rb). Before 17.11 a 500 or no answer backed off the same
  way, while any other non-2xx/3xx answer (a 4xx) was `failed!`: the fourth in a row disabled the hook
  for good, with no backoff.
- Only executable hooks are sent events (`TriggerableHooks.hooks_for` uses the `executable` scope); a
  resend of a disabled hook is refused. The hook settings' Test button (app/services/test_hooks/*.rb)
  sends with `force: true`, even to a disabled hook, and its answer counts like any other.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import requests

from .gitlab_json import Hook, Project

Version = tuple[int, int]
#: The version the stand-in models unless a test sets another.
DEFAULT_VERSION: Version = (18, 0)
#: TriggerableHooks::AVAILABLE_TRIGGERS (app/models/concerns/triggerable_hooks.rb): hook name -> the hook's
#: event flag.
TRIGGERS = {
    "repository_update_hooks": "repository_update_events",
    "push_hooks": "push_events",
    "tag_push_hooks": "tag_push_events",
    "issue_hooks": "issues_events",
    "confidential_note_hooks": "confidential_note_events",
    "confidential_issue_hooks": "confidential_issues_events",
    "note_hooks": "note_events",
    "merge_request_hooks": "merge_requests_events",
    "job_hooks": "job_events",
    "pipeline_hooks": "pipeline_events",
    "wiki_page_hooks": "wiki_page_events",
    "deployment_hooks": "deployment_events",
    "feature_flag_hooks": "feature_flag_events",
    "release_hooks": "releases_events",
    "emoji_hooks": "emoji_events",
}
#: SystemHook::AVAILABLE_HOOKS (app/models/hooks/system_hook.rb): never pipeline events.
SYSTEM_TRIGGERS = ("repository_update_hooks", "push_hooks", "tag_push_hooks", "merge_request_hooks")
#: The Test button's trigger (the hook's event flag) -> the hook name it is executed as.
TEST_TRIGGERS = {flag: name for name, flag in TRIGGERS.items()}

#: Gitlab::DataBuilder::Push::SAMPLE_DATA (lib/gitlab/data_builder/push.rb): what the Test button sends
#: for push and tag push events of a project with an empty repository, and of every system hook.
PUSH_SAMPLE_DATA: dict[str, Any] = {
    "object_kind": "push",
    "event_name": "push",
    "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
    "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
    "ref": "refs/heads/master",
    "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
    "message": "Hello World",
    "user_id": 4,
    "user_name": "John Smith",
    "user_email": "john@example.com",
    "user_avatar": "https://s.gravatar.com/avatar/d4c74594d841139328695756648b6bd6?s=8://s.gravatar.com/avatar/"
                   "d4c74594d841139328695756648b6bd6?s=80",
    "project_id": 15,
    "project": {
        "id": 15,
        "name": "gitlab",
        "description": "",
        "web_url": "http://test.example.com/gitlab/gitlab",
        "avatar_url": "https://s.gravatar.com/avatar/d4c74594d841139328695756648b6bd6?s=8://s.gravatar.com/avatar/"
                      "d4c74594d841139328695756648b6bd6?s=80",
        "git_ssh_url": "git@test.example.com:gitlab/gitlab.git",
        "git_http_url": "http://test.example.com/gitlab/gitlab.git",
        "namespace": "gitlab",
        "visibility_level": 0,
        "path_with_namespace": "gitlab/gitlab",
        "default_branch": "master",
    },
    "commits": [
        {
            "id": "c5feabde2d8cd023215af4d2ceeb7a64839fc428",
            "message": "Add simple search to projects in public area\n\ncommit message body",
            "title": "Add simple search to projects in public area",
            "timestamp": "2013-05-13T18:18:08+00:00",
            "url": "https://test.example.com/gitlab/gitlab/-/commit/c5feabde2d8cd023215af4d2ceeb7a64839fc428",
            "author": {"name": "Test User", "email": "test@example.com"},
        }
    ],
    "total_commits_count": 1,
    "push_options": {"ci": {"skip": True}},
}
#: Gitlab::DataBuilder::Repository::SAMPLE_DATA (lib/gitlab/data_builder/repository.rb): the system hook
#: Test button's repository update event. It names no project.
REPOSITORY_UPDATE_SAMPLE_DATA: dict[str, Any] = {
    "event_name": "repository_update",
    "user_id": 10,
    "user_name": "john.doe",
    "user_email": "test@example.com",
    "user_avatar": "http://example.com/avatar/user.png",
    "project_id": 40,
    "changes": [{"before": "8205ea8d81ce0c6b90fbe8280d118cc9fdad6130",
                 "after": "4045ea7a3df38697b3730a20fb73c8bed8a3e69e", "ref": "refs/heads/master"}],
    "refs": ["refs/heads/master"],
}

INITIAL_BACKOFF = 60.0
MAX_BACKOFF = 86400.0
#: Since 17.11: temporarily disabled past 3 failures, for good past 39.
TEMPORARILY_DISABLED_FAILURE_THRESHOLD = 3
PERMANENTLY_DISABLED_FAILURE_THRESHOLD = 39
#: Before 17.11: FAILURE_THRESHOLD (3, "three strikes"), MAX_FAILURES and MAX_BACKOFF_COUNT.
LEGACY_FAILURE_THRESHOLD = 3
LEGACY_MAX_FAILURES = 100
LEGACY_MAX_BACKOFF_COUNT = 11
BACKOFF_SINCE: Version = (17, 11)
IDEMPOTENCY_KEY_SINCE: Version = (17, 4)
WEBHOOK_UUID_SINCE: Version = (16, 2)
INSTANCE_HEADER_SINCE: Version = (15, 5)


@dataclass
class SystemHook:
    """An instance-wide system hook (Admin > System hooks): one token for every project. Its defaults
    (app/models/hooks/system_hook.rb): repository update events on, push and merge request events off."""

    id: int
    url: str
    token: str | None
    created_at: dt.datetime
    events: dict[str, bool] = field(default_factory=lambda: {"repository_update_events": True})


@dataclass(frozen=True)
class Delivery:
    """One request GitLab made to a hook, the answer, and the hook's state after it (project hooks)."""

    hook_id: int
    url: str
    hook_name: str
    data: dict[str, Any]
    headers: dict[str, str]
    status: int | None  # None: no answer (connection refused, timeout)
    answer: Any
    idempotency_key: str | None
    recent_failures: int
    alert_status: str

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 400


def event_header(hook_name: str, *, system: bool = False) -> str:
    """`WebHookService.hook_to_event`: `System Hook` for a system hook, else `pipeline_hooks` ->
    `Pipeline Hook`."""
    if system:
        return "System Hook"
    words = hook_name.removesuffix("_hooks").split("_")
    return " ".join(w.capitalize() for w in words) + " Hook"


def request_headers(version: Version, instance_url: str, hook_name: str, token: str | None,
                    idempotency_key: str | None, *, system: bool = False) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": f"GitLab/{version[0]}.{version[1]}.0"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    headers["X-Gitlab-Event"] = event_header(hook_name, system=system)
    if version >= WEBHOOK_UUID_SINCE:
        headers["X-Gitlab-Webhook-UUID"] = str(uuid.uuid4())
    if version >= INSTANCE_HEADER_SINCE:
        headers["X-Gitlab-Instance"] = instance_url
    if token:
        headers["X-Gitlab-Token"] = token.replace("\n", "").replace("\r", "")
    headers["X-Gitlab-Event-UUID"] = str(uuid.uuid4())
    return headers


def new_idempotency_key(version: Version) -> str | None:
    return str(uuid.uuid4()) if version >= IDEMPOTENCY_KEY_SINCE else None


def post(url: str, data: dict[str, Any], headers: dict[str, str], timeout: float = 10.0) -> tuple[int | None, Any]:
    """POST as GitLab does (compact JSON, 10 s): (status or None when nothing answered, the JSON answer)."""
    body = json.dumps(data, separators=(",", ":")).encode()
    try:
        response = requests.post(url, data=body, headers=headers, timeout=timeout)
    except requests.RequestException:
        return None, None
    try:
        answer = response.json()
    except ValueError:
        answer = response.text
    return response.status_code, answer


# WebHooks::AutoDisabling ------------------------------------------------------------------------------------
def temporarily_disabled(hook: Hook, now: dt.datetime, version: Version) -> bool:
    if hook.disabled_until is None or hook.disabled_until < now:
        return False
    if version >= BACKOFF_SINCE:
        return (TEMPORARILY_DISABLED_FAILURE_THRESHOLD + 1 <= hook.recent_failures
                <= PERMANENTLY_DISABLED_FAILURE_THRESHOLD)
    return hook.recent_failures > LEGACY_FAILURE_THRESHOLD


def permanently_disabled(hook: Hook, version: Version) -> bool:
    if version >= BACKOFF_SINCE:
        return hook.recent_failures > PERMANENTLY_DISABLED_FAILURE_THRESHOLD
    return hook.recent_failures > LEGACY_FAILURE_THRESHOLD and hook.disabled_until is None


def executable(hook: Hook, now: dt.datetime, version: Version) -> bool:
    return not temporarily_disabled(hook, now, version) and not permanently_disabled(hook, version)


def alert_status(hook: Hook, now: dt.datetime, version: Version) -> str:
    if temporarily_disabled(hook, now, version):
        return "temporarily_disabled"
    if permanently_disabled(hook, version):
        return "disabled"
    return "executable"


def _backoff_seconds(exponent: int) -> float:
    if exponent >= LEGACY_MAX_BACKOFF_COUNT:
        return MAX_BACKOFF
    return min(max(INITIAL_BACKOFF * 2.0**exponent, INITIAL_BACKOFF), MAX_BACKOFF)


def record_answer(hook: Hook, status: int | None, now: dt.datetime, version: Version) -> None:
    """`LogExecutionService#update_hook_failure_state` for the answer `status` (None: no answer)."""
    if status is not None and 200 <= status < 400:  # enable!
        hook.recent_failures, hook.disabled_until, hook.backoff_count = 0, None, 0
        return
    if version >= BACKOFF_SINCE:  # backoff! for every failure
        if not executable(hook, now, version):
            return
        failures = min(hook.recent_failures + 1, PERMANENTLY_DISABLED_FAILURE_THRESHOLD + 1)
        if failures > TEMPORARILY_DISABLED_FAILURE_THRESHOLD:
            exponent = hook.recent_failures - TEMPORARILY_DISABLED_FAILURE_THRESHOLD
            hook.disabled_until = now + dt.timedelta(seconds=_backoff_seconds(exponent))
        hook.recent_failures = failures
        return
    if status is None or status == 500:  # before 17.11: internal_server_error? -> backoff!
        if permanently_disabled(hook, version) or temporarily_disabled(hook, now, version):
            return
        if hook.recent_failures >= LEGACY_FAILURE_THRESHOLD:
            hook.disabled_until = now + dt.timedelta(seconds=_backoff_seconds(hook.backoff_count))
            hook.backoff_count = min(hook.backoff_count + 1, LEGACY_MAX_FAILURES)
        hook.recent_failures = min(hook.recent_failures + 1, LEGACY_MAX_FAILURES)
        return
    if hook.recent_failures < LEGACY_MAX_FAILURES:  # before 17.11, any other answer: failed!
        hook.recent_failures += 1
        hook.disabled_until, hook.backoff_count = None, 0


# Test button payloads -------------------------------------------------------------------------------------
def push_sample(project: Project, base_url: str, user: dict[str, Any]) -> dict[str, Any]:
    """`Gitlab::DataBuilder::Push.build_sample`: the SAMPLE_DATA when the repository is empty (here: its
    default branch does not exist), else a push of the default branch's newest commit."""
    branch = project.branches.get(project.default_branch)
    if branch is None:
        return json.loads(json.dumps(PUSH_SAMPLE_DATA))
    web_url = f"{base_url}/{project.path}"
    host = base_url.split("://", 1)[-1]
    hook_attrs = {
        "id": project.id, "name": project.name, "description": None, "web_url": web_url, "avatar_url": None,
        "git_ssh_url": f"git@{host}:{project.path}.git", "git_http_url": f"{web_url}.git",
        "namespace": project.namespace, "visibility_level": 0, "path_with_namespace": project.path,
        "default_branch": project.default_branch, "ci_config_path": None, "homepage": web_url,
        "url": f"git@{host}:{project.path}.git", "ssh_url": f"git@{host}:{project.path}.git",
        "http_url": f"{web_url}.git",
    }
    commit = {"id": branch.sha, "message": "Initial commit\n", "title": "Initial commit",
              "timestamp": branch.created_at.astimezone(dt.UTC).isoformat(),
              "url": f"{web_url}/-/commit/{branch.sha}", "author": {"name": user["name"], "email": "[REDACTED]"},
              "added": [], "modified": [], "removed": []}
    return {
        "object_kind": "push", "event_name": "push", "before": branch.sha, "after": branch.sha,
        "ref": f"refs/heads/{project.default_branch}", "checkout_sha": branch.sha, "message": None,
        "user_id": user["id"], "user_name": user["name"], "user_username": user["username"], "user_email": "",
        "user_avatar": None, "project_id": project.id, "project": hook_attrs, "commits": [commit],
        "total_commits_count": 1, "push_options": {},
        "repository": {k: hook_attrs[k] for k in ("name", "url", "description", "homepage", "git_http_url",
                                                  "git_ssh_url", "visibility_level")},
    }
