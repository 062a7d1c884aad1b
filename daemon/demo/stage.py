"""The demo's stage, wired as the product wires itself: the registry process and the GitLab stand-in
(``env``), settings built in code and the constants the story is told with, then the store, app and
worker from ``daemon.wiring``, the app served over HTTP and the worker ticking in a thread. Everything
started is registered on the caller's ``ExitStack``, so it is stopped in reverse order whatever happens.
Must not: play the story or judge its outcome (``story``)."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from flask import Flask

from daemon.config import settings_from_dict
from daemon.demo.env import GitLabStandin, LocalRegistry, ServedApp, free_port
from daemon.store import Store
from daemon.wiring import build_app, build_ref_lookup, build_store, build_worker

PROJECT = "demo/app"
GRACE_SECONDS = 5
POLL_SECONDS = 0.2


class WorkerLoop:
    """The product's ``Worker.tick()`` every ``interval`` seconds in a thread (as ``run`` does on a
    schedule); the last failure is kept so a failed expectation can show it."""

    def __init__(self, tick: Callable[[], object], interval: float) -> None:
        self.tick, self.interval = tick, interval
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="janitor-worker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass
class Stage:
    workdir: Path
    registry: LocalRegistry
    gitlab: GitLabStandin
    gitlab_url: str
    web_url: str
    app: Flask
    store: Store
    worker: WorkerLoop
    admin_token: str
    webhook_secret: str
    session: requests.Session


def build_stage(stack: contextlib.ExitStack, binary: str, say: Callable[[str], None]) -> Stage:
    """Start every piece, announcing each through ``say``; the first line names the temporary folder."""
    workdir = Path(tempfile.mkdtemp(prefix="registry-janitor-demo-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    say(f"\nSetting up in {workdir} (removed at the end)")
    registry = LocalRegistry(binary, workdir)
    stack.callback(registry.stop)
    registry.start()
    pid = registry.process.pid if registry.process else "?"
    say(f"   registry  docker-registry on {registry.url} (pid {pid}), deletes enabled, no auth")
    say("             (no auth keeps the demo simple; on GitLab's registry the janitor asks /jwt/auth")
    say("             for a token scoped to the one project it is cleaning)")
    gitlab = GitLabStandin({(PROJECT, "main")})
    gitlab_server = ServedApp(gitlab.app, "gitlab-standin")
    stack.callback(gitlab_server.stop)
    say(f"   GitLab    stand-in on {gitlab_server.url}, answers \"does this branch still exist?\"")

    admin_token, webhook_secret = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    web_port = free_port()
    settings = settings_from_dict({
        "gitlab": {"url": gitlab_server.url, "timeout": 5},
        "registry": {"url": registry.url},
        "storage": {"url": f"sqlite:///{workdir / 'janitor.db'}"},
        "server": {"bind": f"127.0.0.1:{web_port}", "admin_token": admin_token},
        "worker": {"poll_interval": POLL_SECONDS},
        "projects": [{
            "path": PROJECT, "webhook_secret": webhook_secret, "dry_run": False,
            "registry_token": "demo-registry-token",  # never sent: this registry asks for no auth
            "grace_period": GRACE_SECONDS,
            "tags": [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"},
                     {"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"}],
        }],
    }, environ={})
    store = build_store(settings)
    stack.callback(store.close)
    app = build_app(settings, store)
    web = ServedApp(app, "janitor-web", port=web_port)
    stack.callback(web.stop)
    worker = build_worker(settings, store, ref_lookup=build_ref_lookup(settings))
    loop = WorkerLoop(worker.tick, POLL_SECONDS)
    stack.callback(loop.stop)
    say(f"   janitor   web on {web.url}, worker polling every {POLL_SECONDS}s, ledger in janitor.db")
    say(f"   project   {PROJECT}, live (dry_run: false), grace period {GRACE_SECONDS}s, tag patterns:")
    say("             mr-$CI_MERGE_REQUEST_IID lives until its MR ends, $CI_COMMIT_REF_SLUG until its branch does")
    session = requests.Session()
    stack.callback(session.close)
    return Stage(workdir, registry, gitlab, gitlab_server.url, web.url, app, store, loop, admin_token,
                 webhook_secret, session)
