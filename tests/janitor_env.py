"""Building a janitor for tests: settings from a dict, a real SQLite file, an injectable clock."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config import Settings, settings_from_dict
from daemon.store import Store, open_store

PAYLOADS = Path(__file__).resolve().parents[1].parent / "shared" / "gitlab-payloads"
SECRET = "hook-secret"
ADMIN = "admin-token"
REGISTRY_NOTIFY = "notify-token"


def load_payload(name: str) -> dict[str, Any]:
    return copy.deepcopy(json.loads((PAYLOADS / f"{name}.json").read_text()))


@dataclass
class Clock:
    now: float = 1_700_000_000.0
    steps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
