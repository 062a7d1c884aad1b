"""Project webhooks: install (create or update) and verify the one hook per project that feeds the janitor.

SPEC 9: pipeline, merge request and push events on, the project's ``webhook_secret`` as token, TLS
verification on; exactly one hook per URL (an existing one is updated, extra copies are removed, none is
ever duplicated). Everything goes through ``daemon.gitlab.api`` with ``gitlab.api_token``, else the project's
``registry_token``; managing hooks needs the Maintainer role, and a 403 says so.

Owns: which projects a command covers, the hook URL, the wanted hook, and each project's result.
Must not: print (the CLI does) or touch storage; a failure on one project never stops the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from daemon.config import Settings
from daemon.domain.names import is_loopback
from daemon.errors import GitLabError

if TYPE_CHECKING:
    from daemon.gitlab.api import GitLabAPI, HookInfo

WEBHOOK_PATH = "/webhooks/gitlab"
WANTED_EVENTS = ("push_events", "merge_requests_events", "pipeline_events")
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]", "*"}


class HookSetupError(GitLabError):
    """The command cannot start (no usable URL, a project that is not configured)."""


@dataclass(frozen=True)
class Target:
    """One GitLab project whose hook is managed, with the secret and token its config entry gives it."""

    project_path: str
    token: str | None
    secret: str


@dataclass(frozen=True)
class HookResult:
    project_path: str
    status: str  # created, updated, would create, would update, ok, missing, wrong, error
    detail: str = ""
    hook_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.status not in ("missing", "wrong", "error")

    def line(self) -> str:
        return f"{self.project_path}: {self.status}" + (f": {self.detail}" if self.detail else "")


# the URL ---------------------------------------------------------------------------------------------
def hook_url(settings: Settings, given: str | None, environ: Mapping[str, str]) -> str:
    """``--url``, else ``$JANITOR_URL``, else ``server.bind`` when GitLab can reach that address; a base
    URL gets ``/webhooks/gitlab`` appended."""
    base = given or environ.get("JANITOR_URL") or ""
    if not base:
        host, _, port = settings.server.bind.rpartition(":")
        if host in _WILDCARD_HOSTS:
            raise HookSetupError(f"server.bind is {settings.server.bind}, which is no address GitLab can call:"
                                 " give --url https://<janitor's public name>/webhooks/gitlab")
        if is_loopback(host) and not is_loopback(urlsplit(settings.gitlab.url).hostname or ""):
            raise HookSetupError(f"server.bind is {settings.server.bind}, which GitLab at {settings.gitlab.url}"
                                 " cannot reach: give --url https://<janitor's public name>/webhooks/gitlab")
        base = f"http://{host}:{port}"
    parts = urlsplit(base.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise HookSetupError(f"{base!r} is not an http(s) URL such as https://janitor.example.com/webhooks/gitlab")
    url = base.strip().rstrip("/")
    return url if url.endswith(WEBHOOK_PATH) else url + WEBHOOK_PATH


def same_url(a: str, b: str) -> bool:
    pa, pb = urlsplit(a.strip()), urlsplit(b.strip())
    return ((pa.scheme.lower(), pa.netloc.lower(), pa.path.rstrip("/"), pa.query)
            == (pb.scheme.lower(), pb.netloc.lower(), pb.path.rstrip("/"), pb.query))


# which projects --------------------------------------------------------------------------------------
def targets(settings: Settings, api: GitLabAPI, *, project: str | None) -> Iterator[Target | HookResult]:
    """The projects ``--project P`` (or every configured one when None) names: exact entries as they are,
    ``group/*`` entries listed through the API (a group that cannot be listed yields an error result)."""
    entries = settings.projects
    if project is not None:
        chosen = [p for p in settings.projects if p.path == project]
        if not chosen:
            entry = settings.project_for(project)
            if entry is None:
                raise HookSetupError(f"{project} is not configured: add it to projects (or a group/* entry)")
            yield Target(project, settings.api_token_for(entry), entry.webhook_secret.get_secret_value())
            return
        entries = tuple(chosen)
    seen: set[str] = set()
    for entry in entries:
        token = settings.api_token_for(entry)
        secret = entry.webhook_secret.get_secret_value()
        if "*" not in entry.path:
            paths: Iterable[str] = [entry.path]
        else:
            group = entry.path.split("*", 1)[0].rstrip("/")
            if token is None:
                yield HookResult(entry.path, "error", "no gitlab.api_token and no registry_token to list the group")
                continue
            try:
                paths = [p for p in api.group_projects(group, token) if settings.project_for(p) is entry]
            except GitLabError as exc:
                yield HookResult(entry.path, "error", str(exc))
                continue
        for path in paths:
            if path not in seen:
                seen.add(path)
                yield Target(path, token, secret)


# install and verify ----------------------------------------------------------------------------------
def wanted(url: str, secret: str) -> dict[str, Any]:
    return {"url": url, "token": secret, **dict.fromkeys(WANTED_EVENTS, True), "enable_ssl_verification": True,
            "push_events_branch_filter": ""}


def problems(hook: HookInfo) -> list[str]:
    """What makes an existing hook miss events the janitor needs (the secret cannot be read back)."""
    found = [f"{name} off" for name in WANTED_EVENTS if not hook.events.get(name)]
    if not hook.enable_ssl_verification:
        found.append("SSL verification off")
    if hook.push_events_branch_filter:
        found.append(f"push events only for branches matching {hook.push_events_branch_filter!r}"
                     " (deletions of other branches are never sent)")
    if hook.alert_status not in (None, "executable"):
        found.append(f"GitLab has {hook.alert_status.replace('_', ' ')} it after failed deliveries")
    return found


def _refused(exc: GitLabError, target: Target) -> str:
    if getattr(exc, "status", None) == 403:
        return (f"GitLab refused (403): managing the webhooks of {target.project_path} needs the Maintainer"
                " role. Give the project a Maintainer project or group access token with the api scope as"
                " registry_token, or set gitlab.api_token")
    return str(exc)


def _mine(api: GitLabAPI, target: Target, url: str) -> list[HookInfo]:
    assert target.token is not None
    return [h for h in api.hooks(target.project_path, target.token) if same_url(h.url, url)]


def install(api: GitLabAPI, target: Target, url: str, *, dry_run: bool = False) -> HookResult:
    """Create the hook, or update the existing one for this URL (removing extra copies)."""
    path = target.project_path
    if target.token is None:
        return HookResult(path, "error", "no gitlab.api_token and no registry_token for this project")
    try:
        mine = _mine(api, target, url)
        if not mine:
            if dry_run:
                return HookResult(path, "would create", f"hook for {url}")
            hook = api.create_hook(path, target.token, wanted(url, target.secret))
            return HookResult(path, "created", f"hook {hook.id} for {url}", hook.id)
        keep, extra = mine[0], mine[1:]
        found = problems(keep)
        detail = f"hook {keep.id} (" + (f"was: {'; '.join(found)}" if found else "secret set again; nothing"
                                        " else differed") + ")"
        if extra:
            detail += f"; {len(extra)} duplicate hook(s) for this URL removed"
        if dry_run:
            return HookResult(path, "would update", detail, keep.id)
        api.update_hook(path, target.token, keep.id, wanted(url, target.secret))
        for hook in extra:
            api.delete_hook(path, target.token, hook.id)
        return HookResult(path, "updated", detail, keep.id)
    except GitLabError as exc:
        return HookResult(path, "error", _refused(exc, target))


def verify(api: GitLabAPI, target: Target, url: str) -> HookResult:
    """OK when exactly one hook has this URL with the events and SSL verification the janitor needs."""
    path = target.project_path
    if target.token is None:
        return HookResult(path, "error", "no gitlab.api_token and no registry_token for this project")
    try:
        mine = _mine(api, target, url)
    except GitLabError as exc:
        return HookResult(path, "error", _refused(exc, target))
    if not mine:
        return HookResult(path, "missing", f"no hook for {url}; run registry-janitor hooks install")
    if len(mine) > 1:
        return HookResult(path, "wrong", f"{len(mine)} hooks for {url}: every event arrives {len(mine)} times;"
                          " run registry-janitor hooks install", mine[0].id)
    found = problems(mine[0])
    if found:
        return HookResult(path, "wrong", f"hook {mine[0].id}: " + "; ".join(found), mine[0].id)
    return HookResult(path, "ok", f"hook {mine[0].id}", mine[0].id)
