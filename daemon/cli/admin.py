"""Admin commands: ``status``, ``plans``, ``approve``, ``reject``, ``audit``, ``restore``, and the online
part of ``check-config``.

Each acts on a running janitor, never on a stray database: with ``--url`` (or ``$JANITOR_URL``) it asks that
janitor's admin API (``daemon.cli.remote``; its settings decide), else it opens the storage the daemon's
config names, which must already exist (exit 2 otherwise), and acts exactly as the admin API does:
decisions on held plans are written directly, restores are requests the worker carries out (this command
waits for the outcome and says so when no worker is running). Both ways give the same JSON documents
(``daemon.ops.status``), and one renderer prints them. Only ``check-config
--online`` talks to GitLab (through ``daemon.gitlab.api``: a project read and the token's scopes) and the
registry (the actions its token service grants, and a tag listing); the rules it judges by are
``daemon.domain.credentials``.
Output is a plain table for terminals; ``--json`` where a script wants it.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import click

from daemon.cli.options import config_option, settings_or_exit
from daemon.cli.remote import CommandFailed, RemoteJanitor
from daemon.config import Settings
from daemon.domain.credentials import REGISTRY_FIX, api_verdict, describe_actions, missing_actions, registry_fix
from daemon.domain.model import OUTCOMES, PLAN_STATES, UntagMethod
from daemon.errors import GitLabError
from daemon.gitlab.api import GitLabAPI, GitLabAPIError, insufficient_scope
from daemon.ops import actions
from daemon.ops.actions import ActionRefused
from daemon.ops.status import (
    ago,
    human_bytes,
    parse_since,
    plan_json,
    reconcile_request_json,
    request_json,
    status_snapshot,
    untag_json,
    worker_heartbeat_age,
)
from daemon.registry.errors import RegistryAuthError, RegistryError, TokenRealmRefusedError
from daemon.registry.project import ProjectRegistry
from daemon.store import Store, StoreMissing
from daemon.wiring import build_gitlab, build_registry_client, build_store


class LocalJanitor:
    """The janitor's storage, opened with the daemon's config (``--config``): the same questions as
    ``RemoteJanitor`` asks the admin API, answered with the same JSON documents (``daemon.ops.status``)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store

    def status(self) -> dict[str, Any]:
        return status_snapshot(self.settings, self.store, time.time())

    def worker(self) -> tuple[float | None, bool]:
        return worker_heartbeat_age(self.settings, self.store, time.time())

    def plans(self, state: str | None, project: str | None, limit: int) -> list[dict[str, Any]]:
        return [plan_json(p) for p in self.store.plan_page(state=state, project_path=project, limit=limit)]

    def decide(self, plan_id: int, approve: bool) -> dict[str, Any]:
        try:
            return plan_json(actions.decide_plan(self.store, plan_id, approve, _who(), time.time()))
        except ActionRefused as exc:
            raise CommandFailed(exc.message, 1, exc.status) from None

    def untags(self, project: str | None, since: float | None, outcome: str | None,
               limit: int) -> list[dict[str, Any]]:
        views = self.store.untag_views(project_path=project, outcome=outcome, since=since, limit=limit)
        requests = self.store.latest_requests(v.untag.id for v in views)
        return [untag_json(v, requests) for v in views]

    def restore(self, untag_id: int) -> tuple[dict[str, Any], bool, str]:
        try:
            req, created = actions.ask_restore(self.store, untag_id, _who(), time.time())
        except ActionRefused as exc:
            raise CommandFailed(exc.message, 1, exc.status) from None
        view = self.store.untag_view(untag_id)
        image = f"{view.untag.repository}:{view.untag.tag}" if view else f"untag {untag_id}"
        return request_json(req) or {}, created, image

    def request(self, request_id: int) -> dict[str, Any] | None:
        return request_json(self.store.get_request(request_id))

    def ask_reconcile(self, project: str | None) -> tuple[dict[str, Any], bool]:
        try:
            req, created = actions.ask_reconcile(self.settings, self.store, project, _who(), time.time())
        except ActionRefused as exc:
            raise CommandFailed(exc.message, 1, exc.status) from None
        return reconcile_request_json(req, self.store), created

    def reconcile_request(self, request_id: int) -> dict[str, Any] | None:
        req = self.store.get_reconcile_request(request_id)
        return None if req is None else reconcile_request_json(req, self.store)

    def close(self) -> None:
        self.store.close()


Janitor = LocalJanitor | RemoteJanitor

URL_HELP = "ask the running janitor at this base URL through its admin API instead of opening a database"
TOKEN_HELP = "the janitor's server.admin_token, for --url"


def janitor_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--config``, ``--url`` ($JANITOR_URL) and ``--token`` ($JANITOR_ADMIN_TOKEN): where the command acts."""
    fn = click.option("--token", "token", envvar="JANITOR_ADMIN_TOKEN", metavar="T", show_envvar=True,
                      help=TOKEN_HELP)(fn)
    fn = click.option("--url", "url", envvar="JANITOR_URL", metavar="URL", show_envvar=True, help=URL_HELP)(fn)
    return config_option(fn)


def _given(name: str) -> bool:
    """Whether option ``name`` was written on the command line (not taken from the environment)."""
    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source(name) if ctx is not None else None
    return source is click.core.ParameterSource.COMMANDLINE


def _fail(exc: CommandFailed) -> NoReturn:
    click.echo(f"registry-janitor: {exc.message}", err=True)
    sys.exit(exc.exit_code)


@contextlib.contextmanager
def open_janitor(config_path: str | None, url: str | None, token: str | None) -> Iterator[Janitor]:
    """The janitor the command acts on: the one at ``url`` (its settings decide), else the storage the
    config names, which must exist (exit 2 otherwise: an admin command never makes a database). A
    ``--config`` written on the command line beats ``$JANITOR_URL``; both on the command line is an error.
    A ``CommandFailed`` inside prints its message and exits with its code."""
    if url and _given("config_path") and _given("url"):
        raise click.UsageError("give --config (open the janitor's database) or --url (ask the running janitor), "
                               "not both")
    janitor: Janitor
    try:
        if url and not (_given("config_path") and not _given("url")):
            janitor = RemoteJanitor(url, token)
        else:
            settings = settings_or_exit(config_path)
            try:
                janitor = LocalJanitor(settings, build_store(settings, create=False))
            except StoreMissing as exc:
                raise CommandFailed(f"{exc} (storage.url {settings.storage.shown_url}); run `registry-janitor run` "
                                    "first, or point --url at a running janitor", 2) from None
        try:
            yield janitor
        finally:
            janitor.close()
    except CommandFailed as exc:
        _fail(exc)


def _who() -> str:
    try:
        return f"{getpass.getuser()} (cli)"
    except Exception:
        return "cli"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A plain aligned table: columns in ``right`` are right-aligned (numbers)."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _short(text: str | None, width: int = 60) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def worker_not_running(age: float | None, what: str) -> str:
    seen = "never" if age is None else f"{ago(age)} ago"
    return (f"the worker is not running (last heartbeat: {seen}). The {what} is recorded and will be carried "
            "out when `registry-janitor worker` (or `run`) starts.")


# printing the documents -------------------------------------------------------------------------------
def print_status(snap: dict[str, Any]) -> None:
    rows = []
    for name, p in snap["projects"].items():
        mode = "dry-run" if p["dry_run_mode"] else ("live" if p["configured"] else "-")
        if p["misconfigured"]:
            mode += " MISCONFIGURED"
        last = p["last_event_at"] or "never"
        rows.append([name, mode, p["created"], p["untagged"], f"{p['ratio'] * 100:.1f}%", p["scheduled"],
                     p["held"], p["failed"], last + (" (quiet)" if p["quiet"] else "")])
    t = snap["total"]
    rows.append(["total", "", t["created"], t["untagged"], f"{t['ratio'] * 100:.1f}%", t["scheduled"], t["held"],
                 t["failed"], ""])
    click.echo(table(["PROJECT", "MODE", "CREATED", "UNTAGGED", "RATIO", "SCHEDULED", "HELD", "FAILED",
                      "LAST EVENT"], rows, right=range(2, 8)))
    for name in snap["misconfigured_projects"]:
        for problem in snap["projects"][name]["problems"]:
            click.echo(f"\n{name}: MISCONFIGURED ({problem['kind']}, since {problem['since']}): {problem['message']}")
    worker = snap["worker"]
    state = "running" if worker["fresh"] else "NOT RUNNING"
    click.echo(f"\nworker: {state} (last heartbeat {ago(worker['heartbeat_age_seconds'])}"
               f"{' ago' if worker['heartbeat_age_seconds'] is not None else ''}); queue: {snap['queue']['depth']} "
               f"event(s); in untagged images: {human_bytes(t['untagged_image_bytes'])}")
    for w in snap.get("workers", []):  # an older janitor's API has no list
        click.echo(f"  worker {w['id']}: last heartbeat {ago(w['heartbeat_age_seconds'])} ago"
                   f"{'' if w['fresh'] else ' (STALE)'}, started {w['started_at']}"
                   f"{'' if w['plan'] is None else ', running plan ' + str(w['plan'])}")


def print_plans(found: list[dict[str, Any]], state: str) -> None:
    if not found:
        click.echo(f"no {'' if state == 'all' else state + ' '}plans")
        return
    click.echo(table(["ID", "PROJECT", "TRIGGER", "STATE", "UNTAGS", "CREATED", "NOTE"],
                     [[p["id"], p["project"], p["trigger"], p["state"], p["untag_count"], p["created_at"],
                       _short(p["note"], 50)] for p in found], right=[0, 4]))
    if state == "held":
        click.echo("\napprove with `registry-janitor approve ID`, cancel with `registry-janitor reject ID`")


def print_untags(found: list[dict[str, Any]]) -> None:
    if not found:
        click.echo("no untags match")
        return
    rows = []
    for u in found:
        detail = u["reason"] or u["method"] or ""
        if u["restored_at"] is not None:
            detail += f" (restored {u['restored_at']})"
        rows.append([u["id"], u["finished_at"] or "pending", u["project"], u["image"], u["outcome"],
                     _short(detail, 60)])
    click.echo(table(["ID", "FINISHED", "PROJECT", "IMAGE", "OUTCOME", "REASON / METHOD"], rows, right=[0]))


def print_reconcile(found: dict[str, Any]) -> bool:
    """Per project what the catch-up found and the plans it made; True when every project went well."""
    projects = found.get("projects") or []
    for report in projects:
        click.echo(f"{report['project']}: {report['summary']}")
        for plan in report["plans"]:
            click.echo(f"  plan {plan['id']}: {plan['trigger']} ({plan['trigger_key']}), {plan['untag_count']}"
                       f" untag(s), {plan['state']}")
    if not projects:
        click.echo("no project to reconcile")
    return all(report["ok"] for report in projects)


# the commands -----------------------------------------------------------------------------------------
@click.command()
@janitor_options
@click.option("--json", "as_json", is_flag=True, help="print the whole status document as JSON")
def status(config_path: str | None, url: str | None, token: str | None, as_json: bool) -> None:
    """Per-project table: created, untagged, ratio, scheduled, held, failed; then what is misconfigured."""
    with open_janitor(config_path, url, token) as janitor:
        snap = janitor.status()
    if as_json:
        _echo_json(snap)
    else:
        print_status(snap)


@click.command()
@janitor_options
@click.option("--state", default="held", show_default=True,
              type=click.Choice([*PLAN_STATES, "all"]), help="which plans ('all' for every state)")
@click.option("--project", default=None, help="only this project path")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True)
def plans(config_path: str | None, url: str | None, token: str | None, state: str, project: str | None,
          limit: int, as_json: bool) -> None:
    """List plans, newest first (held ones by default: approve or reject them)."""
    with open_janitor(config_path, url, token) as janitor:
        found = janitor.plans(None if state == "all" else state, project, limit)
    if as_json:
        _echo_json(found)
    else:
        print_plans(found, state)


def _decide(config_path: str | None, url: str | None, token: str | None, plan_id: int, approve: bool) -> None:
    with open_janitor(config_path, url, token) as janitor:
        decided = janitor.decide(plan_id, approve)
    if approve:
        click.echo(f"plan {plan_id} approved: {decided['untag_count']} untag(s) run on the worker's next tick")
    else:
        click.echo(f"plan {plan_id} rejected: nothing of it will be untagged")


@click.command()
@janitor_options
@click.argument("plan_id", type=int)
def approve(config_path: str | None, url: str | None, token: str | None, plan_id: int) -> None:
    """Approve a held plan: it runs on the worker's next tick, every guard checked again."""
    _decide(config_path, url, token, plan_id, True)


@click.command()
@janitor_options
@click.argument("plan_id", type=int)
def reject(config_path: str | None, url: str | None, token: str | None, plan_id: int) -> None:
    """Reject a held or scheduled plan: it is cancelled and none of its tags is untagged; a plan the worker
    has already started cannot be rejected (409 not_cancellable)."""
    _decide(config_path, url, token, plan_id, False)


@click.command()
@janitor_options
@click.option("--project", default=None, help="only this project path")
@click.option("--since", default=None, help="finished since: a duration (2h, 7d) or an ISO date (2026-11-01)")
@click.option("--outcome", default=None, type=click.Choice(OUTCOMES))
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True)
def audit(config_path: str | None, url: str | None, token: str | None, project: str | None, since: str | None,
          outcome: str | None, limit: int, as_json: bool) -> None:
    """The untag log, newest first: what was untagged, skipped or failed, and why."""
    try:
        since_ts = parse_since(since, time.time()) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    with open_janitor(config_path, url, token) as janitor:
        found = janitor.untags(project, since_ts, outcome, limit)
    if as_json:
        _echo_json(found)
    else:
        print_untags(found)


@click.command()
@janitor_options
@click.argument("untag_id", type=int)
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(0), help="seconds to wait")
@click.option("--no-wait", is_flag=True, help="record the request and return")
def restore(config_path: str | None, url: str | None, token: str | None, untag_id: int, timeout: float,
            no_wait: bool) -> None:
    """Put an untagged tag back at the manifest saved before the untag (done by the worker)."""
    with open_janitor(config_path, url, token) as janitor:
        req, created, image = janitor.restore(untag_id)
        click.echo(f"restore of {image} {'requested' if created else 'already requested'} (request {req['id']})")
        age, fresh = janitor.worker()
        if not fresh:
            click.echo(f"registry-janitor: {worker_not_running(age, 'request')}", err=True)
            sys.exit(3)
        if no_wait:
            return
        final = wait_for_request(lambda: janitor.request(req["id"]), timeout)
    if final is None or not finished(final):
        click.echo(f"registry-janitor: still {final['state'] if final else 'unknown'} after {timeout:.0f}s; check "
                   f"later with `registry-janitor audit` (request {req['id']})", err=True)
        sys.exit(3)
    if final["state"] == "done":
        click.echo(f"restored: {final['reason']}")
        return
    click.echo(f"registry-janitor: restore failed: {final['reason']}", err=True)
    sys.exit(1)


def finished(request: dict[str, Any]) -> bool:
    return request.get("state") in ("done", "failed")


def wait_for_request(poll: Callable[[], dict[str, Any] | None], timeout: float,
                     interval: float = 0.5) -> dict[str, Any] | None:
    """Poll a request (its JSON) until it is finished or the timeout passes, showing progress on stderr."""
    started = time.monotonic()
    last_state = None
    while True:
        current = poll()
        if current is None or finished(current):
            return current
        if current["state"] != last_state:
            click.echo(f"  {current['state']}…", err=True)
            last_state = current["state"]
        if time.monotonic() - started >= timeout:
            return current
        time.sleep(interval)


# check-config --online ----------------------------------------------------------------------------------
def _line(echo: Callable[[str], None], check: str, passed: bool, text: str, *, status: str | None = None) -> bool:
    """One result line, ``  registry  FAILED  <why>``; returns ``passed``."""
    echo(f"  {check:<9} {status or ('ok' if passed else 'FAILED'):<7} {text}")
    return passed


class _Scopes:
    """Each token's scopes, asked once per run (``GET /personal_access_tokens/self``)."""

    def __init__(self, api: GitLabAPI) -> None:
        self.api = api
        self._seen: dict[str, tuple[str, ...] | GitLabError | None] = {}

    def check(self, echo: Callable[[str], None], token: str, name: str, *, reads: bool, writes: bool) -> bool:
        if token not in self._seen:
            try:
                self._seen[token] = self.api.token_scopes(token)
            except GitLabAPIError as exc:
                self._seen[token] = None if insufficient_scope(exc) else exc
            except GitLabError as exc:
                self._seen[token] = exc
        found = self._seen[token]
        if isinstance(found, GitLabAPIError) and found.status in (400, 404):
            return _line(echo, "scopes", True, f"{name}: GitLab does not say which scopes it has (GET"
                         f" /personal_access_tokens/self answered {found.status}); the checks below still run",
                         status="unknown")
        if isinstance(found, GitLabError):
            return _line(echo, "scopes", False, f"{name}: {found}")
        verdict = api_verdict(found, reads=reads, writes=writes)
        return _line(echo, "scopes", verdict.ok, f"{name} has {verdict.text}")


def _registry_check(echo: Callable[[str], None], view: ProjectRegistry, project_path: str, repository: str,
                    method: UntagMethod) -> bool:
    """What the registry's token service grants the project's token on ``repository`` (read from the token
    it issues: GitLab leaves out what it will not grant instead of refusing), then a tag listing."""
    try:
        granted = view.granted_actions(repository)
        if granted is not None and missing_actions(granted, method):
            return _line(echo, "registry", False, registry_fix(project_path, repository, granted))
        count = len(view.list_tags(repository))
    except TokenRealmRefusedError as exc:  # about the registry's setup, not this repository
        return _line(echo, "registry", False, f"{exc}; the registry at {view.base_url} names it in its challenge")
    except RegistryError as exc:
        fix = f"; {REGISTRY_FIX}" if isinstance(exc, RegistryAuthError) and exc.status == 403 else ""
        return _line(echo, "registry", False, f"{repository}: {exc}{fix}")
    if granted is None:
        why = ("the registry asks for no token" if view.site.challenge is None
               else "the token service's tokens name no actions")
        return _line(echo, "registry", True, f"{repository}: {count} tag(s); actions not checked: {why}")
    return _line(echo, "registry", True, f"{repository}: token gets {describe_actions(granted)}, {count} tag(s)")


def online_checks(settings: Settings, echo: Callable[[str], None] = click.echo) -> bool:
    """Reach GitLab and the registry with each project's credential; print what passed and what failed
    and why. Returns True when every check passed.

    Per token, its scopes and what they let it serve; per project, whether GitLab lets the API token read
    it, and per repository the actions the registry's token service grants the project's registry_token
    (SPEC 14: ``delete`` needs the api scope and the Maintainer role)."""
    api_token = settings.gitlab.api_token.get_secret_value() if settings.gitlab.api_token else None
    method = settings.registry.untag_method
    gitlab = build_gitlab(settings)
    scopes = _Scopes(gitlab)
    registry = build_registry_client(settings, max_retries=1, timeout=15.0)
    ok = True
    if api_token is not None:
        echo("gitlab.api_token")
        ok &= scopes.check(echo, api_token, "gitlab.api_token", reads=True, writes=False)
    for project in settings.projects:
        echo(project.path)
        if "*" in project.path:
            echo("  skipped   a group entry: each project below it is checked when its events arrive")
            continue
        registry_token = project.registry_token.get_secret_value() if project.registry_token else None
        token = api_token or registry_token
        source = "gitlab.api_token" if api_token else "registry_token"
        if token is None:
            ok &= _line(echo, "gitlab", False, "no gitlab.api_token and no registry_token to authenticate with")
        else:
            try:
                found = gitlab.check_project(project.path, token)
                ok &= _line(echo, "gitlab", True, f"{found} with {source}")
            except GitLabError as exc:
                ok &= _line(echo, "gitlab", False, str(exc))
        if registry_token is None:
            ok &= _line(echo, "registry", False,
                        "no registry_token: the janitor cannot untag here (set projects[].registry_token)")
            continue
        ok &= scopes.check(echo, registry_token, "registry_token", reads=api_token is None,
                           writes=method == "gitlab-api")
        view = registry.for_project(project.path, registry_token)
        for repo in project.repositories(project.path) or (project.path.lower(),):
            ok &= _registry_check(echo, view, project.path, repo, method)
    return ok


COMMANDS = (status, plans, approve, reject, audit, restore)
