"""The ``registry-janitor`` command: wiring only. Each command loads settings once, builds the parts it
needs and hands them over; no business rule lives here."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from daemon.config import Settings, load_settings
from daemon.errors import ConfigError

CONFIG_HELP = "config file (default: $JANITOR_CONFIG, else config/janitor.yaml)"


def _setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("JANITOR_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def settings_or_exit(path: str | None) -> Settings:
    """Load the config, or print every problem and exit 2 (no traceback)."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        click.echo(f"registry-janitor: {exc}", err=True)
        sys.exit(2)


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                        help=CONFIG_HELP)(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="registry-janitor")
def main() -> None:
    """Untag exactly the image tags a GitLab pipeline pushed, once their reason to exist ends."""


@main.command("check-config")
@config_option
@click.option("--online", is_flag=True, help="also reach GitLab and the registry with each project's credential")
def check_config(config_path: str | None, online: bool) -> None:
    """Validate the configuration; every problem is listed with its key path (exit 2). With --online, each
    project's credentials are tried against GitLab and the registry (exit 1 if any fails)."""
    settings = settings_or_exit(config_path)
    click.echo(f"config OK: {len(settings.projects)} project(s), storage {settings.storage.url}, "
               f"registry {settings.registry.url} ({settings.registry.untag_method})")
    for project in settings.projects:
        mode = "dry-run" if project.dry_run else "live"
        click.echo(f"  {project.path}: {len(project.tags)} tag pattern(s), {mode}, "
                   f"grace {int(project.grace_period)}s")
    if online:
        from daemon.cli_admin import online_checks

        click.echo("online checks:")
        if not online_checks(settings):
            sys.exit(1)


@main.command()
@config_option
def web(config_path: str | None) -> None:
    """Serve the HTTP routes under gunicorn (never untags; the worker does)."""
    _setup_logging()
    settings = settings_or_exit(config_path)
    from daemon.web.server import serve

    serve(settings, config_path)


@main.command()
@config_option
def worker(config_path: str | None) -> None:
    """Process events and run due plans (the only process that writes to the registry)."""
    _setup_logging()
    settings = settings_or_exit(config_path)
    from daemon.registry_stats import RegistryStats
    from daemon.store import open_store
    from daemon.worker import Worker, gitlab_ref_lookup, registry_factory

    store = open_store(settings.storage.url)
    stats = RegistryStats()  # registry request metrics, flushed to storage every tick
    Worker(settings, store, registry_factory(settings, observer=stats), ref_lookup=gitlab_ref_lookup(settings),
           registry_stats=stats).run_forever()


@main.command()
@config_option
def run(config_path: str | None) -> None:
    """Web server and worker together (the single-node default); SIGTERM or SIGINT stops both."""
    _setup_logging()
    settings = settings_or_exit(config_path)
    from daemon.store import open_store

    open_store(settings.storage.url).close()  # create and migrate once, before two processes race
    args = ["--config", config_path] if config_path else []
    children = {name: subprocess.Popen([sys.executable, "-m", "daemon", name, *args])
                for name in ("worker", "web")}
    click.echo(f"registry-janitor: web on http://{settings.server.bind}, worker running "
               f"(pids {', '.join(str(p.pid) for p in children.values())})", err=True)
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    code = 0
    while any(c.poll() is None for c in children.values()):
        for name, child in children.items():
            if child.poll() is not None and not stopping:
                click.echo(f"registry-janitor: {name} exited with {child.returncode}; stopping", err=True)
                code = child.returncode or 1
                _stop(signal.SIGTERM, None)
        time.sleep(0.2)
    sys.exit(code)


def _register() -> None:
    from daemon.cli_admin import COMMANDS as admin_commands
    from daemon.cli_ci import ci
    from daemon.cli_gitlab import hooks, reconcile
    from daemon.demo import demo

    main.add_command(ci)
    for command in admin_commands:  # status, plans, approve, reject, audit, restore
        main.add_command(command)
    main.add_command(hooks)
    main.add_command(reconcile)
    main.add_command(demo)


_register()
