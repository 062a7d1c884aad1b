"""Building a janitor for tests: settings from a dict, a real SQLite file, an injectable clock, and
GitLab's webhook payloads pointed at a test's project.

A `Harness` is wired as the CLI wires it, through `daemon.wiring`; `Janitors` makes them for one test
and closes them all at its end (the `janitor` fixture in `tests/conftest.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from daemon.config import GitLabSettings, Settings, settings_from_dict
from daemon.store import Store
from daemon.wiring import build_app, build_ref_lookup, build_store, build_worker

from .gitlab_json import Project
from .images import push_image
from .payloads import load_payload
from .registry import Registry

__all__ = [
    "ADMIN",
    "REGISTRY_NOTIFY",
    "SECRET",
    "Clock",
    "Harness",
    "Janitors",
    "RealClock",
    "gitlab_time",
    "live_entry",
    "load_payload",
    "make_settings",
    "make_store",
    "mr_hook",
    "pipeline_hook",
    "push_hook",
    "registry_section",
    "sha_of",
    "short",
    "store_url",
]

SECRET = "hook-secret"
ADMIN = "admin-token"
REGISTRY_NOTIFY = "notify-token"


@dataclass
class Clock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RealClock(Clock):
    """Wall-clock time (for tests where the registry's own timestamps meet the janitor's), still
    advanceable to skip grace periods: ``now`` is the offset added to it."""

    now: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.now


def make_settings(projects: list[dict[str, Any]] | None = None, **sections: Any) -> Settings:
    """Settings from a dict as the config file holds it; each section given is merged over the defaults."""
    raw: dict[str, Any] = {
        "server": {"admin_token": ADMIN, "registry_notification_token": REGISTRY_NOTIFY},
        "projects": projects if projects is not None else [
            {"path": "gitlab-org/gitlab-test", "webhook_secret": SECRET,
             "tags": [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}]}],
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return settings_from_dict(raw, environ={})


def live_entry(project: Project, **policy: Any) -> dict[str, Any]:
    """A config entry for a stand-in project: not a dry run, its token for the registry and GitLab."""
    return {"path": project.path, "webhook_secret": SECRET, "registry_token": project.token, "dry_run": False,
            **policy}


def registry_section(registry: Registry, **options: Any) -> dict[str, Any]:
    """The ``registry`` section for the test registry, without a rate limit. Its token service (the GitLab
    stand-in's ``/jwt/auth``) is listed in ``token_realms``: tests that leave ``gitlab.url`` at its default
    still untag with the project's token."""
    return {"url": registry.url, "requests_per_second": 0, "token_realms": [registry.realm], **options}


def store_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'janitor.db'}"


def stored_in(settings: Settings, directory: Path) -> Settings:
    """``settings`` with the database at ``directory/janitor.db``."""
    storage = settings.storage.model_copy(update={"url": store_url(directory)})
    return settings.model_copy(update={"storage": storage})


def make_store(directory: Path) -> Store:
    """The store alone, at ``directory/janitor.db`` (for tests of storage itself)."""
    return build_store(make_settings(storage={"url": store_url(directory)}))


class Harness:
    """A janitor wired as the CLI wires it (web app, worker, real store and registry client), with a
    fake clock and the Flask test client in place of gunicorn. Its database is ``directory/janitor.db``,
    or with no ``directory`` the one ``settings`` name; ``settings.storage.url`` names it either way, so
    another process or a CLI config can open the same one."""

    def __init__(self, directory: Path | None, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings if directory is None else stored_in(settings, directory)
        self.clock = clock or Clock()
        self.store = build_store(self.settings)
        self.app = build_app(self.settings, self.store, clock=self.clock)
        self.client = self.app.test_client()
        # S4 asks GitLab about refs it has not seen, when the test points gitlab.url at the stand-in.
        lookup = build_ref_lookup(self.settings) if self.settings.gitlab.url != GitLabSettings().url else None
        self.worker = build_worker(self.settings, self.store, clock=self.clock, ref_lookup=lookup)

    def hook(self, event: str, body: dict[str, Any], *, secret: str = SECRET, **headers: str) -> Any:
        response = self.client.post("/webhooks/gitlab", json=body,
                                    headers={"X-Gitlab-Event": event, "X-Gitlab-Token": secret, **headers})
        assert response.status_code in (200, 202), response.get_json()
        return response

    def tick(self, advance: float = 0.0) -> dict[str, int]:
        self.clock.advance(advance)
        return self.worker.tick()

    @contextlib.contextmanager
    def working(self, interval: float = 0.05) -> Iterator[None]:
        """A worker at work in a thread meanwhile, as ``registry-janitor worker`` runs: ticks (its heartbeat,
        operator requests, due plans) and the reconcile requests it is asked for. A CLI judging the heartbeat
        by the wall clock sees it running only with a `RealClock`."""
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                self.worker.tick()
                if self.worker.reconciler is not None:
                    self.worker.reconciler.run_requests()
                stop.wait(interval)
            self.store.release_connection()

        thread = threading.Thread(target=work, name="test-worker", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(30)

    def close(self) -> None:
        self.store.close()


class Janitors:
    """``janitors(projects=None, *, settings=None, clock=None, **sections)`` -> a new `Harness`.

    Settings come from ``projects`` and ``sections`` as `make_settings` reads them, or whole as
    ``settings`` (e.g. loaded from a config file the CLI reads too). The database is the one a
    ``storage`` section or ``settings`` name; else, on SQLite, the first janitor keeps it in ``directory``
    itself (``directory/janitor.db``) and each further one in a directory of its own; with ``new_database``
    (PostgreSQL: it answers the URL of a new database each time) each janitor gets a database of its own.
    ``close`` closes every store made.
    """

    def __init__(self, directory: Path, new_database: Callable[[], str] | None = None) -> None:
        self.directory = directory
        self.new_database = new_database
        self.made: list[Harness] = []
        self._directories = 0

    @property
    def engine(self) -> str:
        """The engine the janitors made without a ``storage`` section use: ``sqlite`` or ``postgresql``."""
        return "sqlite" if self.new_database is None else "postgresql"

    def __call__(self, projects: list[dict[str, Any]] | None = None, *, settings: Settings | None = None,
                 clock: Clock | None = None, **sections: Any) -> Harness:
        directory: Path | None = None
        if settings is None:
            if "storage" not in sections and self.new_database is not None:
                sections = {**sections, "storage": {"url": self.new_database()}}
            settings = make_settings(projects, **sections)
            if "storage" not in sections:
                directory = self._new_directory()
        elif projects is not None or sections:
            raise TypeError("give either settings, or projects and sections")
        harness = Harness(directory, settings, clock)
        self.made.append(harness)
        return harness

    def _new_directory(self) -> Path:
        self._directories += 1
        directory = self.directory if self._directories == 1 else self.directory / f"janitor-{self._directories}"
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def close(self) -> None:
        for harness in self.made:
            harness.close()


def pipeline_hook(project_path: str, *, pipeline_id: int, ref: str, status: str = "success",
                  mr_iid: int | None = None, sha: str = "a" * 40, default_branch: str = "main") -> dict[str, Any]:
    """GitLab's documented pipeline payload, pointed at one of our projects."""
    body = load_payload("pipeline_event")
    body["project"]["path_with_namespace"] = project_path
    body["project"]["default_branch"] = default_branch
    attrs = body["object_attributes"]
    attrs.update(id=pipeline_id, iid=pipeline_id, ref=ref, sha=sha, status=status,
                 source="merge_request_event" if mr_iid else "push")
    if mr_iid is None:
        body["merge_request"] = None
    else:
        body["merge_request"].update(iid=mr_iid, source_branch=ref, target_branch=default_branch)
    return body


def mr_hook(project_path: str, *, iid: int, source_branch: str, action: str,
            default_branch: str = "main") -> dict[str, Any]:
    body = load_payload("merge_request_event_open")
    body["project"]["path_with_namespace"] = project_path
    body["project"]["default_branch"] = default_branch
    state = {"merge": "merged", "close": "closed"}.get(action, "opened")
    body["object_attributes"].update(iid=iid, source_branch=source_branch, action=action, state=state,
                                     source_project_id=14, target_project_id=14)
    return body


def push_hook(project_path: str, *, ref: str, deleted: bool) -> dict[str, Any]:
    body = load_payload("push_event_branch_delete" if deleted else "push_event")
    body["project"]["path_with_namespace"] = project_path
    body["ref"] = f"refs/heads/{ref}"
    return body


def gitlab_time(at: float) -> str:
    """A time as GitLab writes it in hooks (``2016-08-12 15:23:28 UTC``)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def sha_of(pipeline_id: int) -> str:
    return hashlib.sha1(str(pipeline_id).encode()).hexdigest()


def short(pipeline_id: int) -> str:
    return sha_of(pipeline_id)[:8]


def merged_mr_on_disk(janitors: Janitors, directory: Path, registry: Registry, project: Project, *, iid: int,
                      pipeline_id: int, count: int, grace: str, **sections: Any) -> tuple[Path, Harness,
                                                                                     dict[str, str]]:
    """A live janitor on ``directory/janitor.db`` whose config is also written to ``directory/janitor.yaml``
    (for worker processes to read): ``count`` images pushed as merge request ``iid``'s tags
    ``mr-<iid>-<n>`` (each its own image) and ``keep``, its pipeline and merge hooks applied, so one plan
    waits out ``grace``. ``sections`` go to the config too (``worker``). Returns (config path, the janitor,
    tag -> pushed digest)."""
    config = {
        "registry": registry_section(registry, untag_method="placeholder"),
        "storage": {"url": f"sqlite:///{directory / 'janitor.db'}"},
        "server": {"admin_token": "a"},
        **sections,
        "projects": [{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                      "dry_run": False, "grace_period": grace, "max_repository_fraction": 1.0,
                      "tags": [{"pattern": f"mr-$CI_MERGE_REQUEST_IID-{n}", "lifetime": "merge_request"}
                               for n in range(count)]}],
    }
    config_path = directory / "janitor.yaml"
    config_path.write_text(yaml.safe_dump(config))
    j = janitors(config["projects"], registry=config["registry"], storage=config["storage"], clock=RealClock())
    pushed = {f"mr-{iid}-{n}": push_image(registry, project.path, [f"mr-{iid}-{n}"]) for n in range(count)}
    push_image(registry, project.path, ["keep"])
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=pipeline_id, ref="topic", mr_iid=iid))
    j.tick()
    j.hook("Merge Request Hook", mr_hook(project.path, iid=iid, source_branch="topic", action="merge"))
    j.tick()
    return config_path, j, pushed
