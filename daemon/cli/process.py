"""The daemon's processes: ``run`` (web and worker together), ``web``, ``worker``, and ``check-config``.
Wiring only: each command loads settings once and hands them to ``daemon.wiring``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import click

from daemon.cli.admin import online_checks
from daemon.cli.options import config_option, settings_or_exit, setup_logging
from daemon.server import serve
from daemon.wiring import build_store, build_worker_from_config


@click.command("check-config")
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
        click.echo("online checks:")
        if not online_checks(settings):
            sys.exit(1)


@click.command()
@config_option
def web(config_path: str | None) -> None:
    """Serve the HTTP routes under gunicorn (never untags; the worker does)."""
    setup_logging()
    settings = settings_or_exit(config_path)
    serve(settings, config_path)


@click.command()
@config_option
def worker(config_path: str | None) -> None:
    """Process events and run due plans (the only process that writes to the registry)."""
    setup_logging()
    settings = settings_or_exit(config_path)
    build_worker_from_config(settings).run_forever()


@click.command("run")
@config_option
def run(config_path: str | None) -> None:
    """Web server and worker together (the single-node default); SIGTERM or SIGINT stops both."""
    setup_logging()
    settings = settings_or_exit(config_path)
    build_store(settings).close()  # create and migrate once, before two processes race
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


COMMANDS = (check_config, web, worker, run)
