"""Building a janitor for tests: settings from a dict, a real SQLite file, an injectable clock."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import load_payload

from daemon.config import Settings, settings_from_dict
from daemon.store import Store, open_store

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
    raw: dict[str, Any] = {
        "server": {"admin_token": ADMIN, "registry_notification_token": REGISTRY_NOTIFY},
        "projects": projects if projects is not None else [
            {"path": "gitlab-org/gitlab-test", "webhook_secret": SECRET,
             "tags": [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}]}],
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return settings_from_dict(raw, environ={})


def make_store(tmp_path: Path) -> Store:
    return open_store(f"sqlite:///{tmp_path / 'janitor.db'}")


class Harness:
    """A janitor wired as the CLI wires it (web app, worker, real store and registry client), with a
    fake clock and the Flask test client in place of gunicorn."""

    def __init__(self, tmp_path: Path, settings: Settings, clock: Clock | None = None) -> None:
        from daemon.config import GitLabSettings
        from daemon.wiring import build_app, build_ref_lookup, build_worker

        self.settings = settings
        self.clock = clock or Clock()
        self.store = make_store(tmp_path)
        self.app = build_app(settings, self.store, clock=self.clock)
        self.client = self.app.test_client()
        # S4 asks GitLab about refs it has not seen, when the test points gitlab.url at the stand-in.
        lookup = build_ref_lookup(settings) if settings.gitlab.url != GitLabSettings().url else None
        self.worker = build_worker(settings, self.store, clock=self.clock, ref_lookup=lookup)

    def hook(self, event: str, body: dict[str, Any], *, secret: str = SECRET, **headers: str) -> Any:
        response = self.client.post("/webhooks/gitlab", json=body,
                                    headers={"X-Gitlab-Event": event, "X-Gitlab-Token": secret, **headers})
        assert response.status_code in (200, 202), response.get_json()
        return response

    def tick(self, advance: float = 0.0) -> dict[str, int]:
        self.clock.advance(advance)
        return self.worker.tick()

    def close(self) -> None:
        self.store.close()


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
