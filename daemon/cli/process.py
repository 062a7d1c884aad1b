"""The daemon's processes: ``run`` (web and worker together), ``web``, ``worker``, ``worker-health`` (the
worker's probe), and ``check-config``.
Wiring only: each command loads settings once and hands them to ``daemon.wiring``."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time

import click

from daemon.cli.admin import online_checks
from daemon.cli.options import config_option, log_format_option, settings_or_exit, setup_logging
from daemon.domain.patterns import format_duration
from daemon.domain.policy import heartbeat_limit
from daemon.ops.status import ago, probed_worker
from daemon.server import serve
from daemon.store import StoreMissing
from daemon.wiring import build_store, build_worker_from_config

log = logging.getLogger(__name__)


@click.command("check-config")
@config_option
@click.option("--online", is_flag=True, help="also reach GitLab and the registry with each project's credential")
def check_config(config_path: str | None, online: bool) -> None:
    """Validate the configuration; every problem is listed with its key path (exit 2). With --online, each
    project's credentials are tried against GitLab and the registry (exit 1 if any fails)."""
    settings = settings_or_exit(config_path)
    click.echo(f"config OK: {len(settings.projects)} project(s), storage {settings.storage.shown_url}, "
               f"registry {settings.registry.url} ({settings.registry.untag_method})")
    for project in settings.projects:
        mode = "dry-run" if project.dry_run else "live"
        click.echo(f"  {project.path}: {len(project.tags)} tag pattern(s), {mode}, "
                   f"grace {format_duration(project.grace_period)}")
    if online:
        click.echo("online checks:")
        if not online_checks(settings):
            sys.exit(1)


@click.command()
@config_option
@log_format_option
def web(config_path: str | None, log_format: str) -> None:
    """Serve the HTTP routes under gunicorn (never untags; the worker does)."""
    setup_logging(log_format)
    settings = settings_or_exit(config_path)
    serve(settings, config_path)


@click.command()
@config_option
@log_format_option
def worker(config_path: str | None, log_format: str) -> None:
    """Process events and run due plans (the only process that writes to the registry)."""
    setup_logging(log_format)
    settings = settings_or_exit(config_path)
    build_worker_from_config(settings).run_forever()


@click.command("worker-health")
@config_option
@click.option("--worker-id", default=None, metavar="ID",
              help="judge this worker (as its log's 'worker ID started' line names it), not the latest one "
                   "started on this host")
def worker_health(config_path: str | None, worker_id: str | None) -> None:
    """The worker's probe (its container's livenessProbe): exit 0 when its heartbeat is fresh, 1 when it is
    stale or missing, or the database cannot be read; what was found is printed either way. A working
    worker beats every few seconds however long a tick runs, so a stale heartbeat means a worker that is
    stuck or gone. With several workers, each judges its own: the latest started on this host (the
    container's, in Kubernetes its pod's hostname), or --worker-id."""
    settings = settings_or_exit(config_path)
    limit = heartbeat_limit(settings.worker.poll_interval)
    host = socket.gethostname()
    try:
        store = build_store(settings, create=False)
        try:
            age, fresh, judged = probed_worker(settings, store, time.time(), host, worker_id)
        finally:
            store.close()
    except StoreMissing as exc:
        click.echo(f"worker-health: no database yet ({exc}); the worker creates it when it starts")
        sys.exit(1)
    except Exception as exc:  # whatever keeps the heartbeat from being read, the probe fails
        click.echo(f"worker-health: the database cannot be read: {exc}; check the data volume")
        sys.exit(1)
    seen = "never" if age is None else f"{ago(age)} ago"
    who = f" of {judged}" if judged else ""
    if not fresh:
        click.echo(f"worker-health: STALE: last heartbeat{who} {seen} (limit {int(limit)}s); the worker is stuck "
                   "or not running: see its log, restart it")
        sys.exit(1)
    click.echo(f"worker-health: ok: last heartbeat{who} {seen} (limit {int(limit)}s)")


@click.command("run")
@config_option
@log_format_option
def run(config_path: str | None, log_format: str) -> None:
    """Web server and worker together (the single-node default); SIGTERM or SIGINT stops both."""
    setup_logging(log_format)
    settings = settings_or_exit(config_path)
    build_store(settings).close()  # create and migrate once, before two processes race
    args = ["--config", config_path] if config_path else []
    env = {**os.environ, "JANITOR_LOG_FORMAT": log_format.lower()}  # both children log as this one does
    children = {name: subprocess.Popen([sys.executable, "-m", "daemon", name, *args], env=env)
                for name in ("worker", "web")}
    log.info("web on http://%s, worker running (pids %s), storage %s", settings.server.bind,
             ", ".join(str(p.pid) for p in children.values()), settings.storage.shown_url)
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
                log.error("%s exited with %s; stopping", name, child.returncode)
                code = child.returncode or 1
                _stop(signal.SIGTERM, None)
        time.sleep(0.2)
    sys.exit(code)


COMMANDS = (check_config, web, worker, worker_health, run)
