"""A project token that may not untag, end to end on the real registry and the strict GitLab stand-in:
nothing is written, every untag fails ``no_delete_permission``, no further request is spent on the
project that tick, the project shows as misconfigured everywhere an operator looks, and once the token is
fixed a retry untags and the finding clears.

GitLab's facts behind it: ``/jwt/auth`` leaves out of the token what it will not grant instead of refusing
(``app/services/auth/container_registry_authentication_service.rb``); the registry ``delete`` action needs
``admin_container_image``, which only the ``api`` scope gives (``lib/gitlab/auth.rb``,
``abilities_for_scopes``) and the Maintainer role holds (``app/policies/project_policy.rb``); an API call
with a token without the ``api`` scope answers 403 ``insufficient_scope`` (``lib/api/api_guard.rb``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from openapi_schema_validator import OAS31Validator
from support.gitlab_json import Project
from support.gitlab_standin import GitLabStandin
from support.images import digest_of, push_image, tags
from support.janitor import ADMIN, SECRET, Harness, Janitors, live_entry, mr_hook, pipeline_hook, registry_section
from support.ops import BEARER
from support.registry import Registry

from daemon.cli import main

GRACE = 60
MR_TAG = {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}
FIX = "give it the api scope and the Maintainer role"
API_DELETE = "DELETE /api/v4/projects/:id/registry/repositories/:repository_id/tags/:tag_name"


def entry(project: Project, token: str) -> dict[str, Any]:
    return {**live_entry(project, grace_period=f"{GRACE}s", tags=[MR_TAG]), "registry_token": token}


def merged(j: Harness, path: str, *, iid: int) -> None:
    """MR !iid's pipeline pushed mr-<iid> and finished; then the MR is merged (its plan waits GRACE)."""
    j.hook("Pipeline Hook", pipeline_hook(path, pipeline_id=iid, ref=f"feature/{iid}", mr_iid=iid))
    j.tick()
    j.hook("Merge Request Hook", mr_hook(path, iid=iid, source_branch=f"feature/{iid}", action="merge"))
    j.tick(advance=5)


def outcomes(j: Harness) -> dict[str, tuple[str, str | None]]:
    return {u.tag: (u.outcome, u.reason) for u in j.store.list_untags()}


def status(j: Harness) -> dict[str, Any]:
    response = j.client.get("/api/v1/status", headers=BEARER)
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    doc = j.client.get("/api/v1/openapi.json").get_json()
    OAS31Validator({"$ref": "#/components/schemas/Status", "components": doc["components"]}).validate(body)
    return body


def metrics(j: Harness) -> str:
    return str(j.client.get("/metrics").get_data(as_text=True))


def dashboard_row(j: Harness, path: str) -> str:
    html = j.client.get("/dashboard", auth=("ops", ADMIN)).get_data(as_text=True)
    match = re.search(rf'<tr data-project="{re.escape(path)}"([^>]*)>(.*?)</tr>', html, re.S)
    assert match, f"no row for {path}"
    return match.group(1) + match.group(2)


def cli_status(j: Harness, tmp_path: Path) -> str:
    config = tmp_path / "status.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"url": j.settings.storage.url}, "server": {"admin_token": ADMIN},
        "projects": [{"path": p.path, "webhook_secret": SECRET, "dry_run": p.dry_run} for p in j.settings.projects]}))
    result = CliRunner().invoke(main, ["status", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return str(result.output)


def fixed(janitor: Janitors, j: Harness, project: Project, token: str, **sections: Any) -> Harness:
    """The same janitor (storage, clock) restarted with a config whose registry_token is ``token``."""
    return janitor([entry(project, token)], clock=j.clock, storage={"url": j.settings.storage.url}, **sections)


def retry_failed(j: Harness) -> None:
    for untag in j.store.list_untags():
        if untag.outcome == "failed":
            assert j.client.post(f"/api/v1/untags/{untag.id}/retry", headers=BEARER).status_code == 202
    j.tick()


def assert_misconfigured(j: Harness, path: str, granted: str, tmp_path: Path) -> None:
    snap = status(j)
    assert snap["misconfigured_projects"] == [path]
    (problem,) = snap["projects"][path]["problems"]
    assert snap["projects"][path]["misconfigured"] is True and problem["kind"] == "no_delete_permission"
    assert f"token for {path} gets {granted} on {path}; {FIX}" in problem["message"]
    assert f'janitor_project_misconfigured{{project="{path}",reason="no_delete_permission"}} 1' in metrics(j)
    row = dashboard_row(j, path)
    assert 'class="misconfigured"' in row and '<span class="badge misconfigured"' in row
    assert "Misconfigured (no_delete_permission):" in row and f"gets {granted} on {path}; {FIX}" in row
    out = cli_status(j, tmp_path)
    assert re.search(rf"^{re.escape(path)}\s+live MISCONFIGURED\s", out, re.M), out
    assert f"{path}: MISCONFIGURED (no_delete_permission, since " in out and FIX in out


def assert_fixed(j: Harness, path: str, tmp_path: Path) -> None:
    snap = status(j)
    assert snap["misconfigured_projects"] == [] and snap["projects"][path]["problems"] == []
    assert snap["projects"][path]["misconfigured"] is False
    assert f'janitor_project_misconfigured{{project="{path}"' not in metrics(j)
    row = dashboard_row(j, path)
    assert "misconfigured" not in row.lower()
    assert "MISCONFIGURED" not in cli_status(j, tmp_path)


@pytest.mark.parametrize(("role", "scopes", "granted"), [
    ("maintainer", ("write_registry",), "push"),
    ("developer", ("api",), "pull,push"),  # the README's old "Developer, read/write registry" token
])
def test_a_token_without_delete_fails_clearly_writes_nothing_and_a_fixed_token_untags_on_retry(
    janitor: Janitors, registry: Registry, gitlab: GitLabStandin, tmp_path: Path, role: str,
    scopes: tuple[str, ...], granted: str,
) -> None:
    project = gitlab.add_project(f"grp-{time.monotonic_ns()}/app", role=role, scopes=scopes)
    path = project.path
    j = janitor([entry(project, project.token)], registry=registry_section(registry))
    first = push_image(registry, path, ["mr-1"], seed=1)
    second = push_image(registry, path, ["mr-2", "keep"], seed=2)
    merged(j, path, iid=1)
    merged(j, path, iid=2)
    registry.mark()
    j.tick(advance=GRACE + 1)  # both plans are due in this one tick

    assert outcomes(j) == {"mr-1": ("failed", "no_delete_permission"), "mr-2": ("failed", "no_delete_permission")}
    assert registry.request_log() == []  # not a write, not a read: the token said it all
    assert tags(registry, path) == ["keep", "mr-1", "mr-2"]
    assert digest_of(registry, path, "mr-1") == first and digest_of(registry, path, "mr-2") == second
    assert_misconfigured(j, path, granted, tmp_path)

    registry.mark()
    j.tick(advance=3600)  # nothing is retried by itself: the untags wait for an operator
    assert registry.request_log() == [] and outcomes(j)["mr-1"] == ("failed", "no_delete_permission")

    good = gitlab.add_token(project, role="maintainer", scopes=("api",))
    j2 = fixed(janitor, j, project, good, registry=registry_section(registry))
    retry_failed(j2)
    assert outcomes(j2) == {"mr-1": ("done", None), "mr-2": ("done", None)}
    assert tags(registry, path) == ["keep"] and digest_of(registry, path, "keep") == second
    assert_fixed(j2, path, tmp_path)


def test_a_dry_run_reports_the_token_without_failing_and_writes_nothing(
    janitor: Janitors, registry: Registry, gitlab: GitLabStandin, tmp_path: Path
) -> None:
    project = gitlab.add_project(f"grp-{time.monotonic_ns()}/app", role="developer")
    path = project.path
    j = janitor([{**entry(project, project.token), "dry_run": True}], registry=registry_section(registry))
    push_image(registry, path, ["mr-1", "keep"])
    merged(j, path, iid=1)
    registry.mark()
    j.tick(advance=GRACE + 1)
    assert outcomes(j) == {"mr-1": ("dry_run", "no_delete_permission")}
    assert [e for e in registry.request_log() if e.method not in ("GET", "HEAD")] == []
    assert tags(registry, path) == ["keep", "mr-1"]
    snap = status(j)
    assert snap["misconfigured_projects"] == [path] and snap["projects"][path]["dry_run_mode"] is True
    assert f"token for {path} gets pull,push on {path}; {FIX}" in snap["projects"][path]["problems"][0]["message"]


def test_the_gitlab_api_method_turns_gitlabs_403_into_no_delete_permission_and_stops_asking(
    janitor: Janitors, registry: Registry, gitlab: GitLabStandin, tmp_path: Path
) -> None:
    """A ``read_api`` token reads the API but GitLab forbids it the tag delete (403 ``insufficient_scope``,
    ``lib/api/api_guard.rb``): one delete is asked, the other plan's is not, and the tags stay."""
    project = gitlab.add_project(f"grp-{time.monotonic_ns()}/app", scopes=("read_api", "read_registry"))
    path = project.path
    sections = {"registry": registry_section(registry, untag_method="gitlab-api"), "gitlab": {"url": gitlab.url}}
    j = janitor([entry(project, project.token)], **sections)
    push_image(registry, path, ["mr-1"], seed=1)
    push_image(registry, path, ["mr-2", "keep"], seed=2)
    merged(j, path, iid=1)
    merged(j, path, iid=2)
    registry.mark()
    j.tick(advance=GRACE + 1)
    assert outcomes(j) == {"mr-1": ("failed", "no_delete_permission"), "mr-2": ("failed", "no_delete_permission")}
    assert gitlab.calls[API_DELETE] == 1
    assert [e for e in registry.request_log() if e.method not in ("GET", "HEAD")] == []
    assert tags(registry, path) == ["keep", "mr-1", "mr-2"]
    (problem,) = status(j)["projects"][path]["problems"]
    assert "403" in problem["message"] and "needs the api scope" in problem["message"]

    good = gitlab.add_token(project, role="maintainer", scopes=("api",))
    j2 = fixed(janitor, j, project, good, **sections)
    retry_failed(j2)
    assert outcomes(j2) == {"mr-1": ("done", None), "mr-2": ("done", None)}
    assert tags(registry, path) == ["keep"]
    assert_fixed(j2, path, tmp_path)
