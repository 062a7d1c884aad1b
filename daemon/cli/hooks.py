"""``registry-janitor hooks install|verify`` and ``registry-janitor reconcile``: wiring and printing only
(the rules live in ``daemon.gitlab.hooks`` and ``daemon.ingest.catchup``)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from daemon.cli.options import config_option, settings_or_exit
from daemon.config import Settings
from daemon.wiring import build_gitlab, build_ingest, build_reconciler, build_ref_lookup, build_store

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
@config_option
@click.option("--project", "project", metavar="P", help="only this project (default: every configured one)")
def reconcile(config_path: str | None, project: str | None) -> None:
    """Catch up now from the GitLab API: merged or closed MRs and deleted branches whose webhooks were
    missed. Prints per project what it found and the plans it made; exit 1 if any project failed."""
    settings = settings_or_exit(config_path)
    store = build_store(settings)
    try:
        gitlab = build_gitlab(settings)
        ingest = build_ingest(settings, store, ref_lookup=build_ref_lookup(settings, gitlab))
        reconciler = build_reconciler(settings, store, ingest, gitlab=gitlab)
        if project is not None and not reconciler.projects(project):
            raise click.UsageError(f"{project} is not configured (or, under a group/* entry, not in the ledger)")
        reports = reconciler.run(project)
    finally:
        store.close()
    for report in reports:
        click.echo(f"{report.project_path}: {report.summary()}")
        for plan in report.plans:
            click.echo(f"  plan {plan.id}: {plan.trigger_kind} ({plan.trigger_key}), {plan.untag_count} untag(s),"
                       f" {plan.state}")
    if not reports:
        click.echo("no project to reconcile")
    if not all(r.ok for r in reports):
        sys.exit(1)
