"""Fixtures for every test: the GitLab stand-in, one real registry per session, webhook payloads.

- `gitlab`: the running stand-in, reset before each test (projects, jobs, counters, relay target).
- `registry`: one real distribution registry for the session; token auth against `gitlab`,
  notifications through `gitlab`'s `/registry-relay` (`gitlab.set_relay(url)` to receive them).
- `payload(name)`: a deep copy of `../shared/gitlab-payloads/<name>.json`.
- `unique_repo(project, name="img")`: a repository path under the project that no other test uses.
- `project`: a fresh stand-in project with a unique path (its root repository is unique too).

The registry is shared: tests must only touch repositories they own (`unique_repo`, `project`).
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from support.gitlab_json import Project
from support.gitlab_standin import GitLabStandin
from support.registry import Registry

PAYLOADS = Path(__file__).resolve().parent / "fixtures" / "gitlab-payloads"


@pytest.fixture(scope="session")
def gitlab_session() -> Iterator[GitLabStandin]:
    standin = GitLabStandin().start()
    yield standin
    standin.stop()


@pytest.fixture(scope="session")
def registry(gitlab_session: GitLabStandin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """The session's real registry. Fails (never skips) when docker-registry is not installed."""
    registry = Registry(
        tmp_path_factory.mktemp("registry"),
        realm=gitlab_session.realm,
        issuer=gitlab_session.issuer,
        notification_url=gitlab_session.relay_url,
    )
    try:
        registry.start()
    except Exception as exc:
        pytest.fail(f"could not start the test registry: {exc}", pytrace=False)
    gitlab_session.attach_registry(registry.url)
    yield registry
    registry.stop()


@pytest.fixture
def gitlab(gitlab_session: GitLabStandin) -> Iterator[GitLabStandin]:
    """The stand-in, with a clean slate for this test."""
    gitlab_session.reset()
    yield gitlab_session
    gitlab_session.set_relay(None)  # a stopped target must not hold up the session registry's queue


@cache
def _load_payload(name: str) -> Any:
    path = PAYLOADS / (name if name.endswith(".json") else f"{name}.json")
    if not path.exists():
        available = sorted(p.stem for p in PAYLOADS.glob("*.json")) if PAYLOADS.is_dir() else []
        raise FileNotFoundError(f"no payload {path}; available: {available}")
    return json.loads(path.read_text())


def load_payload(name: str) -> Any:
    """A fresh deep copy of a reference payload (`pipeline_event` or `pipeline_event.json`)."""
    return copy.deepcopy(_load_payload(name))


@pytest.fixture
def payload() -> Callable[[str], Any]:
    return load_payload


def _slug(text: str, limit: int = 24) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "t"


@pytest.fixture
def unique_repo(request: pytest.FixtureRequest) -> Callable[..., str]:
    """`unique_repo(project, name="img")` -> "<project path>/<name>-<test>-<random>"."""

    def make(project: Project | str, name: str = "img") -> str:
        base = project if isinstance(project, str) else project.path
        return f"{base}/{_slug(name, 16)}-{_slug(request.node.name)}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def project(gitlab: GitLabStandin, request: pytest.FixtureRequest) -> Project:
    """A project at a path no other test uses, so even its root repository is this test's own."""
    return gitlab.add_project(f"grp-{uuid.uuid4().hex[:8]}/{_slug(request.node.name)}")
