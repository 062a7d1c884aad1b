"""Fixtures for every test: the GitLab stand-in, one real registry per session, janitors, webhook payloads.

- `gitlab`: the running stand-in, reset before each test (projects, jobs, counters, relay target).
- `registry`: one real distribution registry for the session; token auth against `gitlab`,
  notifications through `gitlab`'s `/registry-relay` (`gitlab.set_relay(url)` to receive them).
- `janitor(projects=None, *, settings=None, clock=None, **sections)`: a new `support.janitor.Harness`, a
  janitor wired as the CLI wires it; settings as `make_settings` reads them (or whole, as `settings`).
  Without a `storage` section (or `settings`) naming the database, the first janitor of a test keeps it
  at `tmp_path/janitor.db`; `janitor.settings.storage.url` names it. Every store is closed at teardown.
- `seeded_janitor`: a janitor over storage seeded with a known story (`support.ops.seed`; its ids in
  `seeded_janitor.ids`), for the operations surface.
- `payload(name)`: a deep copy of `tests/fixtures/gitlab-payloads/<name>.json`.
- `unique_repo(project, name="img")`: a repository path under the project that no other test uses.
- `project`: a fresh stand-in project with a unique path (its root repository is unique too).
- `postgres`: one real PostgreSQL server for the session (`support.postgres.PostgresCluster`), started only
  when a test asks for it; fails (never skips) when PostgreSQL is not installed.
- `pg_url`: the URL of a new, empty database on `postgres` for this test, dropped at teardown
  (`postgres.create_database(name, migrated=True)` makes one with the janitor's tables already in it).
- `storage_engine`: "sqlite", or in the modules of `BOTH_ENGINES` each test that uses storage runs twice,
  as `test[sqlite]` and `test[postgresql]` (a test marked `sqlite_only` runs once, on SQLite). The
  `janitor` factory and `storage_url` follow it.
- `storage_url()`: the URL of a new store on this test's engine (a file under `tmp_path`, or a new
  database with the janitor's tables already made, dropped at teardown).

The registry is shared: tests must only touch repositories they own (`unique_repo`, `project`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.gitlab_json import Project
from support.gitlab_standin import GitLabStandin
from support.janitor import Harness, Janitors
from support.ops import ops_projects, seeded
from support.payloads import load_payload
from support.postgres import PostgresCluster
from support.registry import Registry


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """The session's real PostgreSQL server, in a temporary folder, stopped and removed at the end."""
    cluster = PostgresCluster()
    try:
        cluster.start()
    except Exception as exc:
        cluster.stop()
        pytest.fail(f"could not start the test PostgreSQL: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(postgres: PostgresCluster) -> Iterator[str]:
    """A new, empty database for this test (its URL), dropped at teardown."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


@pytest.fixture
def gitlab(gitlab_session: GitLabStandin) -> Iterator[GitLabStandin]:
    """The stand-in, with a clean slate for this test."""
    gitlab_session.reset()
    yield gitlab_session
    gitlab_session.set_relay(None)  # a stopped target must not hold up the session registry's queue


#: Test modules whose storage tests run on both engines (see `storage_engine`).
BOTH_ENGINES = {"test_store_transactions", "test_merge_story", "test_safety_invariants", "test_counters",
                "test_retention", "test_triggers", "test_reconcile", "test_webhooks", "test_ci_untag", "test_api",
                "test_postgres_store", "test_race_repair", "test_claims", "test_mr_note", "test_interrupted_untag",
                "test_cancel_scheduled", "test_reject_scheduled", "test_reconcile_requests", "test_attribution",
                "test_ci_evidence", "test_ci_pushes", "test_delivery_order", "test_no_delete_permission",
                "test_worker_wakeup", "test_ttl_expiry_index", "test_metrics", "test_dashboard_waits",
                "test_failure_reasons", "test_cli_admin"}
ENGINES = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: in a BOTH_ENGINES module, runs on SQLite alone "
                                       "(it reads the SQLite file itself)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "storage_engine" not in metafunc.fixturenames:
        return
    if metafunc.module.__name__.rpartition(".")[2] not in BOTH_ENGINES:
        return
    if any("storage_engine" in str(mark.args[0]) for mark in metafunc.definition.iter_markers("parametrize")):
        return  # the test names its engine itself
    engines = ["sqlite"] if metafunc.definition.get_closest_marker("sqlite_only") else list(ENGINES)
    metafunc.parametrize("storage_engine", engines, indirect=True)


@pytest.fixture
def storage_engine(request: pytest.FixtureRequest) -> str:
    """The engine this test's stores use: "sqlite" unless parametrized (`BOTH_ENGINES`)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def storage_url(storage_engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[], str]]:
    """`storage_url()` -> the URL of a new store on this test's engine."""
    made: list[str] = []
    cluster: PostgresCluster | None = request.getfixturevalue("postgres") if storage_engine == "postgresql" else None

    def new() -> str:
        if cluster is None:
            path = tmp_path / ("janitor.db" if not made else f"janitor-{len(made) + 1}.db")
            made.append(str(path))
            return f"sqlite:///{path}"
        name = f"t_{uuid.uuid4().hex[:16]}"
        made.append(name)
        return cluster.create_database(name, migrated=True)

    yield new
    if cluster is not None:
        for name in made:
            cluster.drop_database(name)


@pytest.fixture
def janitor(tmp_path: Path, storage_engine: str, request: pytest.FixtureRequest) -> Iterator[Janitors]:
    """`janitor(projects=None, *, settings=None, clock=None, **sections)` -> a new janitor (`Harness`), on
    this test's storage engine."""
    new_database = request.getfixturevalue("storage_url") if storage_engine == "postgresql" else None
    janitors = Janitors(tmp_path, new_database)
    yield janitors
    janitors.close()


@pytest.fixture
def seeded_janitor(janitor: Janitors) -> Harness:
    """A janitor over the seeded story of `support.ops.seed` (what it made: `seeded_janitor.ids`)."""
    return seeded(janitor(ops_projects()))


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
