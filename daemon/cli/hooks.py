"""``registry-janitor hooks install|verify`` and ``registry-janitor reconcile``: wiring and printing only
(the rules live in ``daemon.gitlab.hooks`` and ``daemon.ingest.catchup``; a reconcile is a request a worker
runs, recorded locally or through ``--url`` like the admin commands)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from daemon.cli.admin import (
    finished,
    janitor_options,
    open_janitor,
    print_reconcile,
    wait_for_request,
    worker_not_running,
)
from daemon.cli.options import config_option, settings_or_exit
from daemon.cli.remote import CommandFailed
from daemon.config import Settings
from daemon.wiring import build_gitlab

if TYPE_CHECKING:
    from daemon.gitlab.api import GitLabAPI
    from daemon.gitlab.hooks import HookResult, Target


def _api(settings: Settings) -> GitLabAPI:
    return build_gitlab(settings)


@click.group()
def hooks() -> None:
    """Create, update and check the projects' GitLab webhooks (needs the Maintainer role)."""


def _targets_and_url(settings: Settings, project: str | None,
                     url: str | None) -> tuple[GitLabAPI, str, list[Target], list[HookResult]]:
    from daemon.gitlab.hooks import HookResult, HookSetupError, Target, hook_url, targets

    api = _api(settings)
    try:
        final_url = hook_url(settings, url, os.environ)
        found = list(targets(settings, api, project=project))
    except HookSetupError as exc:
        raise click.UsageError(str(exc)) from None
    return api, final_url, [t for t in found if isinstance(t, Target)], \
        [r for r in found if isinstance(r, HookResult)]


def _project_of(target: Target | None) -> str | None:
    return target.project_path if target is not None else None


@hooks.command("install")
@config_option
@click.option("--project", "project", metavar="P", help="one configured project (or a group/* entry)")
@click.option("--all", "all_projects", is_flag=True, help="every configured project; group/* listed from GitLab")
@click.option("--url", metavar="URL", help="the janitor's webhook URL (default: $JANITOR_URL, else server.bind)")
@click.option("--dry-run", is_flag=True, help="say what would change, change nothing")
def hooks_install(config_path: str | None, project: str | None, all_projects: bool, url: str | None,
                  dry_run: bool) -> None:
    """Create or update each project's webhook: one per URL, push, merge request and pipeline events,
    the project's webhook_secret, SSL verification on. Exit 1 if any project failed."""
    if (project is None) == (not all_projects):
        raise click.UsageError("give --project P or --all")
    from daemon.gitlab.hooks import install

    settings = settings_or_exit(config_path)
    api, final_url, found, results = _targets_and_url(settings, project, url)
    click.echo(f"{'dry run: ' if dry_run else ''}webhook {final_url} on {len(found)} project(s)")
    with click.progressbar(found, label="webhooks", file=sys.stderr, show_pos=True,
                           item_show_func=_project_of) as bar:
        results += [install(api, target, final_url, dry_run=dry_run) for target in bar]
    for result in results:
        click.echo(result.line())
    if not all(r.ok for r in results):
        sys.exit(1)


@hooks.command("verify")
@config_option
@click.option("--project", "project", metavar="P", help="one configured project (default: all)")
@click.option("--url", metavar="URL", help="the janitor's webhook URL (default: $JANITOR_URL, else server.bind)")
def hooks_verify(config_path: str | None, project: str | None, url: str | None) -> None:
    """Check each project has exactly one hook for the URL with the right events and SSL verification:
    OK, missing or wrong per project; exit 1 unless all are OK. (GitLab never shows a hook's secret.)"""
    from daemon.gitlab.hooks import verify

    settings = settings_or_exit(config_path)
    api, final_url, found, results = _targets_and_url(settings, project, url)
    with click.progressbar(found, label="checking webhooks", file=sys.stderr, show_pos=True,
                           item_show_func=_project_of) as bar:
        results += [verify(api, target, final_url) for target in bar]
    for result in results:
        click.echo(result.line())
    bad = [r for r in results if not r.ok]
    click.echo(f"{len(results) - len(bad)} OK, {len(bad)} not OK ({final_url})")
    if bad:
        sys.exit(1)


@click.command()
@janitor_options
@click.option("--project", "project", metavar="P", help="only this project (default: every configured one)")
@click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(0), help="seconds to wait")
@click.option("--no-wait", is_flag=True, help="record the request and return")
def reconcile(config_path: str | None, url: str | None, token: str | None, project: str | None, timeout: float,
              no_wait: bool) -> None:
    """Catch up now from the GitLab API: merged or closed MRs and deleted branches whose webhooks were
    missed. A worker runs it with the daemon's settings; this prints per project what it found and the
    plans it made. Exit 1 if any project failed, 3 if no worker is running."""
    with open_janitor(config_path, url, token) as janitor:
        try:
            req, created = janitor.ask_reconcile(project)
        except CommandFailed as exc:
            if exc.status == 404:
                raise click.UsageError(exc.message) from None
            raise
        what = project or "every project"
        click.echo(f"reconcile of {what} {'requested' if created else 'already requested'} (request {req['id']})",
                   err=True)
        age, fresh = janitor.worker()
        if not fresh:
            click.echo(f"registry-janitor: {worker_not_running(age, 'reconcile request')}", err=True)
            sys.exit(3)
        if no_wait:
            return
        final = wait_for_request(lambda: janitor.reconcile_request(req["id"]), timeout)
    if final is None or not finished(final):
        click.echo(f"registry-janitor: still {final['state'] if final else 'unknown'} after {timeout:.0f}s; the "
                   f"worker goes on (reconcile request {req['id']})", err=True)
        sys.exit(3)
    if final["state"] == "failed":
        click.echo(f"registry-janitor: reconcile failed: {final['error']}", err=True)
        sys.exit(1)
    if not print_reconcile(final):
        sys.exit(1)
