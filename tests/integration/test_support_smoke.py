"""The test infrastructure itself, against the real registry: if these fail, nothing else is trustworthy.

Also pins the distribution 2.8 behaviours the janitor's untag methods are built on.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import gitlab as python_gitlab
import jwt
import pytest
import requests
from support import images
from support.gitlab_json import Project
from support.gitlab_standin import GitLabStandin
from support.images import digest_of, push_image, tags
from support.registry import LoggedRequest, Registry
from support.servers import Recorder
from support.tokens import TokenIssuer


class BearerRegistry:
    """The registry seen with one raw bearer token (what a client holding that token can do)."""

    def __init__(self, registry: Registry, token: str) -> None:
        self.url = registry.url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"


def jwt_auth(
    gitlab: GitLabStandin, password: str | None, *scopes: str, user: str = "anyone"
) -> requests.Response:
    return requests.get(
        gitlab.realm,
        params=[("service", "container_registry"), *(("scope", s) for s in scopes)],
        auth=(user, password) if password is not None else None,
        timeout=5,
    )


def verified_claims(gitlab: GitLabStandin, token: str) -> dict[str, Any]:
    public_key = gitlab.issuer.certificate.public_key()
    return jwt.decode(token, public_key, algorithms=["RS256"], audience="container_registry")  # type: ignore[arg-type]


# --- /jwt/auth and the registry's token auth ------------------------------------------------------


def test_project_token_gets_its_own_repositories_only(
    gitlab: GitLabStandin, registry: Registry, project: Project, unique_repo: Callable[..., str]
) -> None:
    """GitLab answers `{"token"}` alone (app/controllers/jwt_controller.rb renders the service's hash) and
    leaves out every scope entry it grants nothing on: a foreign repository, the catalog for a non-admin
    (app/services/auth/container_registry_authentication_service.rb, `process_repository_access` returns
    nothing when no action is authorized; `process_registry_access` is for admins only)."""
    other = gitlab.add_project(f"other-{uuid.uuid4().hex[:8]}/app")
    own, foreign = unique_repo(project), unique_repo(other)

    response = jwt_auth(
        gitlab,
        project.token,
        f"repository:{own}:pull,push,delete",
        f"repository:{project.path}:pull,*",
        f"repository:{foreign}:pull,push",
        "registry:catalog:*",
    )

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token"}
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "RS256"
    assert header["kid"] == gitlab.issuer.kid
    claims = verified_claims(gitlab, body["token"])
    assert claims["iss"] == gitlab.issuer.issuer
    assert claims["sub"] == f"project_{project.id}_bot"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["nbf"] <= claims["iat"] and claims["jti"]
    assert claims["access"] == [
        {"type": "repository", "name": own, "actions": ["pull", "push", "delete"]},
        {"type": "repository", "name": project.path, "actions": ["pull", "*"]},
    ]

    as_project = BearerRegistry(registry, body["token"])
    digest = push_image(as_project, own, ["mr-1"])
    assert tags(as_project, own) == ["mr-1"]
    assert digest_of(as_project, own, "mr-1") == digest

    refused = as_project.session.post(f"{registry.url}/v2/{foreign}/blobs/uploads/")
    assert refused.status_code == 401
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    assert refused.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert tags(registry, foreign) == []


def test_a_nested_project_owns_its_repositories(gitlab: GitLabStandin, project: Project) -> None:
    nested = gitlab.add_project(f"{project.path}/sub")
    response = jwt_auth(gitlab, project.token, f"repository:{nested.path}/img:pull")
    assert verified_claims(gitlab, response.json()["token"])["access"] == []
    response = jwt_auth(gitlab, nested.token, f"repository:{nested.path}/img:pull")
    assert verified_claims(gitlab, response.json()["token"])["access"][0]["actions"] == ["pull"]


def test_jwt_auth_credentials(gitlab: GitLabStandin, project: Project) -> None:
    """Credentials as GitLab takes them (lib/gitlab/auth.rb, `find_for_git_client`: a job token only with
    the login `gitlab-ci-token`; app/services/auth/container_registry_authentication_service.rb: the
    catalog for admins, nothing on paths no project owns, 403 DENIED for an anonymous request granted
    nothing)."""
    assert jwt_auth(gitlab, "not-a-token", f"repository:{project.path}:pull").status_code == 401

    admin = jwt_auth(
        gitlab,
        gitlab.admin_token,
        "registry:catalog:*",
        f"repository:{project.path}:pull,push,*",
        "repository:no-such/project:pull",
    )
    assert verified_claims(gitlab, admin.json()["token"])["access"] == [
        {"type": "registry", "name": "catalog", "actions": ["*"]},
        {"type": "repository", "name": project.path, "actions": ["pull", "push", "*"]},
    ]

    anonymous = jwt_auth(gitlab, None, f"repository:{project.path}:pull")
    assert (anonymous.status_code, anonymous.json()["errors"][0]["code"]) == (403, "DENIED")

    job_token = gitlab.add_job(project, pipeline_id=7, ref="main")
    as_job = jwt_auth(gitlab, job_token, f"repository:{project.path}:pull,push", user="gitlab-ci-token")
    assert verified_claims(gitlab, as_job.json()["token"])["access"][0]["actions"] == ["pull", "push"]
    assert jwt_auth(gitlab, job_token, f"repository:{project.path}:pull", user="someone").status_code == 401
    gitlab.set_job_status(job_token, "success")
    assert jwt_auth(gitlab, job_token, f"repository:{project.path}:pull", user="gitlab-ci-token").status_code == 401

    gitlab.token_lifetime = 60
    short = jwt_auth(gitlab, project.token, f"repository:{project.path}:pull").json()
    assert set(short) == {"token"}
    claims = verified_claims(gitlab, short["token"])
    assert claims["exp"] - claims["iat"] == 60
    assert gitlab.calls["GET /jwt/auth"] == 7


def test_registry_accepts_the_kid_and_nothing_else(
    registry: Registry, unique_repo: Callable[..., str]
) -> None:
    repo = unique_repo("kid/check")
    push_image(registry, repo, ["a"])
    access = [{"type": "repository", "name": repo, "actions": ["pull"]}]
    url = f"{registry.url}/v2/{repo}/tags/list"

    def status(token: str) -> int:
        return requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code

    assert status(registry.issuer.issue("root", access)[0]) == 200
    assert status(registry.issuer.issue("root", access, kid="AAAA:BBBB:CCCC")[0]) == 401
    assert status(TokenIssuer().issue("root", access)[0]) == 401  # same kid shape, another key
    assert status(registry.issuer.issue("root", access, audience="elsewhere")[0]) == 401
    # distribution allows 60 s of clock skew on exp/nbf: a token 10 s past exp still works, 70 s not
    assert status(registry.issuer.issue("root", access, lifetime=10, now=time.time() - 20)[0]) == 200
    assert status(registry.issuer.issue("root", access, lifetime=10, now=time.time() - 80)[0]) == 401


# --- image helpers ------------------------------------------------------------------------------


def test_push_image_tags_and_digest_of(registry: Registry, unique_repo: Callable[..., str]) -> None:
    repo = unique_repo("group/app")
    digest = push_image(registry, repo, ["b", "a"], size=2048)
    assert tags(registry, repo) == ["a", "b"]
    assert digest_of(registry, repo, "a") == digest == digest_of(registry, repo, "b")
    assert digest_of(registry, repo, "missing") is None
    assert tags(registry, unique_repo("group/app", "never-pushed")) == []

    manifest = images.get_manifest(registry, repo, "a")
    assert manifest is not None and manifest[1] == images.MANIFEST_V2
    for layer in json.loads(manifest[0])["layers"]:
        assert images.blob_exists(registry, repo, layer["digest"])
    assert not images.blob_exists(registry, repo, "sha256:" + "0" * 64)

    assert push_image(registry, repo, ["s1"], seed=7) == push_image(registry, repo, ["s2"], seed=7)
    assert push_image(registry, repo, ["fresh"]) != digest
    oci = push_image(registry, repo, ["oci"], media_type=images.OCI_MANIFEST)
    assert digest_of(registry, repo, "oci") == oci

    index = push_index(registry, repo, ["multi"])
    assert digest_of(registry, repo, "multi") == index
    listed = push_index(registry, repo, ["list"], media_type=images.MANIFEST_LIST)
    fetched = images.get_manifest(registry, repo, "list")
    assert fetched is not None and fetched[1:] == (images.MANIFEST_LIST, listed)


push_index = images.push_index


# --- distribution 2.8 facts the untag methods rely on --------------------------------------------


def test_delete_by_tag_is_refused_with_digest_invalid(
    registry: Registry, unique_repo: Callable[..., str]
) -> None:
    repo = unique_repo("facts")
    digest = push_image(registry, repo, ["mr-1", "keep"])
    response = images.delete_manifest(registry, repo, "mr-1")
    assert response.status_code == 400
    assert [e["code"] for e in response.json()["errors"]] == ["DIGEST_INVALID"]
    assert tags(registry, repo) == ["keep", "mr-1"]
    assert digest_of(registry, repo, "mr-1") == digest


def test_delete_by_digest_removes_every_tag_on_it(
    registry: Registry, unique_repo: Callable[..., str]
) -> None:
    repo = unique_repo("facts")
    shared = push_image(registry, repo, ["mr-1", "main", "v1.0"])
    response = images.delete_manifest(registry, repo, shared)
    assert response.status_code == 202
    assert tags(registry, repo) == []
    listing = registry.session.get(f"{registry.url}/v2/{repo}/tags/list")
    assert (listing.status_code, listing.json()) == (200, {"name": repo, "tags": None})  # not 404

    again = images.delete_manifest(registry, repo, shared)
    assert again.status_code == 404
    assert again.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    gone = registry.session.head(f"{registry.url}/v2/{repo}/manifests/mr-1")
    assert gone.status_code == 404


def test_a_placeholder_removes_just_one_tag(registry: Registry, unique_repo: Callable[..., str]) -> None:
    repo = unique_repo("facts")
    shared = push_image(registry, repo, ["mr-1", "main"])
    other = push_image(registry, repo, ["v1.0"])
    layer = json.loads(images.get_manifest(registry, repo, shared)[0])["layers"][0]["digest"]  # type: ignore[index]

    placeholder = images.push_placeholder(registry, repo, ["mr-1"])
    assert digest_of(registry, repo, "mr-1") == placeholder
    assert images.delete_manifest(registry, repo, placeholder).status_code == 202

    assert tags(registry, repo) == ["main", "v1.0"]
    assert digest_of(registry, repo, "main") == shared
    assert digest_of(registry, repo, "v1.0") == other
    assert images.get_manifest(registry, repo, shared) is not None
    assert images.blob_exists(registry, repo, layer)

    assert images.untag(registry, repo, "main") is True
    assert images.untag(registry, repo, "main") is False
    assert tags(registry, repo) == ["v1.0"]
    assert images.get_manifest(registry, repo, shared) is not None  # untagged, not deleted


def test_catalog_needs_its_scope_and_caps_n_at_1000(
    registry: Registry, unique_repo: Callable[..., str]
) -> None:
    repo = unique_repo("catalog")
    push_image(registry, repo, ["a"])
    assert repo in images.catalog(registry)
    assert registry.session.get(f"{registry.url}/v2/_catalog?n=1000").status_code == 200
    too_many = registry.session.get(f"{registry.url}/v2/_catalog?n=1001")
    assert too_many.status_code == 400
    assert too_many.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"
    pull_only = registry.token([{"type": "repository", "name": repo, "actions": ["pull"]}])
    refused = requests.get(f"{registry.url}/v2/_catalog", headers={"Authorization": f"Bearer {pull_only}"})
    assert refused.status_code == 401
    assert 'scope="registry:catalog:*"' in refused.headers["WWW-Authenticate"]


# --- access log -----------------------------------------------------------------------------------


def test_request_log_counts_writes(registry: Registry, unique_repo: Callable[..., str]) -> None:
    repo = unique_repo("log")
    start = registry.mark()
    push_image(registry, repo, ["a", "b"])
    log = registry.request_log(repo=repo)
    manifest_puts = [e for e in log if e.method == "PUT" and "/manifests/" in e.path]
    assert manifest_puts == [
        LoggedRequest("PUT", f"/v2/{repo}/manifests/a", 201),
        LoggedRequest("PUT", f"/v2/{repo}/manifests/b", 201),
    ]
    assert registry.count("PUT", repo=repo) == 4  # two blob upload PUTs, two manifest PUTs

    registry.mark()
    assert tags(registry, repo) == ["a", "b"]
    digest_of(registry, repo, "a")
    assert registry.count("PUT") == registry.count("DELETE") == registry.count("POST") == 0
    assert [e.method for e in registry.request_log()] == ["GET", "HEAD"]
    assert registry.count("PUT", since=start) == 4


# --- notifications through the relay ----------------------------------------------------------------


def test_a_registry_notification_reaches_the_relay_target(
    gitlab: GitLabStandin, registry: Registry, unique_repo: Callable[..., str]
) -> None:
    repo = unique_repo("notify")
    with Recorder() as target:
        gitlab.set_relay(f"{target.url}/webhooks/registry")
        digest = push_image(registry, repo, ["mr-9"])

        def is_our_tag_push(r: Any) -> bool:
            return any(
                e["action"] == "push"
                and e["target"]["repository"] == repo
                and e["target"].get("tag") == "mr-9"
                for e in r.json()["events"]
            )

        delivery = target.wait_for(is_our_tag_push, timeout=5)
    assert delivery.path == "/webhooks/registry"
    assert delivery.headers["Authorization"] == f"Bearer {registry.notification_token}"
    assert delivery.headers["Content-Type"].startswith("application/vnd.docker.distribution.events.v1+json")
    event = next(e for e in delivery.json()["events"] if e["target"].get("tag") == "mr-9")
    assert event["target"]["digest"] == digest
    assert event["target"]["mediaType"] == images.MANIFEST_V2
    assert gitlab.calls["POST /registry-relay"] >= 1

    gitlab.set_relay(None)
    assert requests.post(gitlab.relay_url, data=b"{}", timeout=5).status_code == 200


# --- the GitLab API, through python-gitlab --------------------------------------------------------------


def test_python_gitlab_reads_merge_requests_and_branches(gitlab: GitLabStandin, project: Project) -> None:
    clock = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
    gitlab.now = lambda: clock
    gitlab.add_branch(project, "feature/login")
    gitlab.set_mr(project, 1, source_branch="feature/login")
    gitlab.set_mr(project, 2, source_branch="fix", state="merged")
    clock += dt.timedelta(hours=1)
    gitlab.set_mr(project, 3, source_branch="old", state="closed")
    for iid in range(10, 35):
        gitlab.set_mr(project, iid, source_branch=f"b{iid}")

    gl = python_gitlab.Gitlab(gitlab.url, private_token=project.token)
    api_project = gl.projects.get(project.path)
    assert (api_project.id, api_project.path_with_namespace, api_project.default_branch) == (
        project.id,
        project.path,
        "main",
    )

    merged = api_project.mergerequests.list(state="merged", get_all=True)
    assert [(m.iid, m.state, m.source_branch, m.target_branch) for m in merged] == [
        (2, "merged", "fix", "main")
    ]
    assert merged[0].merged_at == "2024-05-01T12:00:00.000Z"
    assert merged[0].source_project_id == merged[0].target_project_id == project.id
    recent = api_project.mergerequests.list(
        updated_after="2024-05-01T12:30:00Z", state="closed", get_all=True
    )
    assert [m.iid for m in recent] == [3]
    assert recent[0].closed_at == "2024-05-01T13:00:00.000Z"
    assert len(api_project.mergerequests.list(get_all=True)) == 28  # pages of 20 followed via Link
    assert [m.iid for m in api_project.mergerequests.list(source_branch="feature/login")] == [1]
    assert api_project.mergerequests.get(1).source_branch == "feature/login"
    with pytest.raises(python_gitlab.GitlabGetError) as missing_mr:
        api_project.mergerequests.get(99)
    assert missing_mr.value.response_code == 404

    lazy = gl.projects.get(project.path, lazy=True)  # URL-encoded path, as the janitor may call it
    assert lazy.branches.get("feature/login").name == "feature/login"
    assert {b.name for b in lazy.branches.list(get_all=True)} == {"main", "feature/login"}
    assert [b.name for b in lazy.branches.list(search="^feat", get_all=True)] == ["feature/login"]
    gitlab.delete_branch(project, "feature/login")
    with pytest.raises(python_gitlab.GitlabGetError) as missing_branch:
        lazy.branches.get("feature/login")
    assert missing_branch.value.response_code == 404
    assert gitlab.calls["GET /api/v4/projects/:id/repository/branches/:branch"] == 2

    other = gitlab.add_project(f"other-{uuid.uuid4().hex[:8]}/app")
    with pytest.raises(python_gitlab.GitlabGetError) as hidden:
        gl.projects.get(other.id)
    assert hidden.value.response_code == 404
    with pytest.raises(python_gitlab.GitlabAuthenticationError):
        python_gitlab.Gitlab(gitlab.url, private_token="wrong").projects.get(project.id)
    admin = python_gitlab.Gitlab(gitlab.url, private_token=gitlab.admin_token)
    assert admin.projects.get(other.path).id == other.id


def test_python_gitlab_lists_projects_and_group_projects(gitlab: GitLabStandin) -> None:
    group = f"grp-{uuid.uuid4().hex[:8]}"
    app = gitlab.add_project(f"{group}/app")
    deep = gitlab.add_project(f"{group}/team/tool")
    gitlab.add_project(f"else-{uuid.uuid4().hex[:8]}/app")

    admin = python_gitlab.Gitlab(gitlab.url, private_token=gitlab.admin_token)
    assert len(admin.projects.list(get_all=True)) == 3
    direct = admin.groups.get(group, lazy=True).projects.list(get_all=True)
    assert [p.id for p in direct] == [app.id]
    nested = admin.groups.get(group, lazy=True).projects.list(include_subgroups=True, get_all=True)
    assert {p.path_with_namespace for p in nested} == {app.path, deep.path}
    with pytest.raises(python_gitlab.GitlabListError):
        admin.groups.get("no-such-group", lazy=True).projects.list(get_all=True)

    as_app = python_gitlab.Gitlab(gitlab.url, private_token=app.token)
    assert [p.id for p in as_app.projects.list(get_all=True)] == [app.id]


def test_python_gitlab_manages_project_hooks(gitlab: GitLabStandin, project: Project) -> None:
    gl = python_gitlab.Gitlab(gitlab.url, private_token=project.token)
    hooks = gl.projects.get(project.id, lazy=True).hooks
    created = hooks.create(
        {
            "url": "https://janitor.example/webhooks/gitlab",
            "token": "s3cret",
            "push_events": True,
            "merge_requests_events": True,
            "pipeline_events": True,
            "enable_ssl_verification": True,
        }
    )
    assert created.pipeline_events and created.merge_requests_events and not created.tag_push_events
    assert "token" not in created.attributes  # write-only, as in GitLab
    assert [h.url for h in hooks.list(get_all=True)] == ["https://janitor.example/webhooks/gitlab"]

    created.pipeline_events = False
    created.save()
    assert hooks.get(created.id).pipeline_events is False
    assert gitlab.hooks(project)[0].token == "s3cret"
    hooks.delete(created.id)
    assert hooks.list(get_all=True) == []

    developer = gitlab.add_project(f"dev-{uuid.uuid4().hex[:8]}/app", role="developer")
    with pytest.raises(python_gitlab.GitlabListError) as forbidden:
        python_gitlab.Gitlab(gitlab.url, private_token=developer.token).projects.get(
            developer.id, lazy=True
        ).hooks.list()
    assert forbidden.value.response_code == 403


def test_job_token_endpoint(gitlab: GitLabStandin, project: Project) -> None:
    job_token = gitlab.add_job(project, pipeline_id=4242, ref="feature/login")
    response = requests.get(f"{gitlab.api_url}/job", headers={"JOB-TOKEN": job_token}, timeout=5)
    assert response.status_code == 200
    job = response.json()
    assert job["pipeline"]["id"] == 4242
    assert job["pipeline"]["project_id"] == project.id
    assert job["ref"] == job["pipeline"]["ref"] == "feature/login"
    assert job["status"] == "running" and job["tag"] is False
    assert {"id", "name", "stage", "commit", "user", "web_url"} <= set(job)

    as_job = python_gitlab.Gitlab(gitlab.url, job_token=job_token)
    fetched = as_job.http_get("/job")
    assert isinstance(fetched, dict) and fetched["id"] == job["id"]

    unknown = requests.get(f"{gitlab.api_url}/job", headers={"JOB-TOKEN": "nope"}, timeout=5)
    assert (unknown.status_code, unknown.json()) == (401, {"message": "401 Unauthorized"})
    gitlab.set_job_status(job_token, "success")
    assert (
        requests.get(f"{gitlab.api_url}/job", headers={"JOB-TOKEN": job_token}, timeout=5).status_code == 401
    )
    assert gitlab.calls["GET /api/v4/job"] == 4


def test_gitlab_api_tag_delete_is_tag_only(
    gitlab: GitLabStandin, registry: Registry, project: Project
) -> None:
    root = project.path
    builder = f"{project.path}/builder"
    shared = push_image(registry, root, ["mr-1", "main"])
    push_image(registry, builder, ["mr-1"])

    gl = python_gitlab.Gitlab(gitlab.url, private_token=project.token)
    repositories = gl.projects.get(project.id, lazy=True).repositories.list(tags=True, get_all=True)
    by_path = {r.path: r for r in repositories}
    assert set(by_path) == {root, builder}
    assert by_path[root].name == "" and by_path[builder].name == "builder"
    assert [t["name"] for t in by_path[root].attributes["tags"]] == ["main", "mr-1"]
    assert by_path[root].location == f"{registry.host}/{root}"

    by_path[root].tags.delete("mr-1")  # python-gitlab's own call for the gitlab-api untag method
    assert tags(registry, root) == ["main"]
    assert digest_of(registry, root, "main") == shared
    assert tags(registry, builder) == ["mr-1"]
    url = f"{gitlab.api_url}/projects/{project.id}/registry/repositories/{by_path[root].id}/tags/mr-1"
    missing = requests.delete(url, headers={"PRIVATE-TOKEN": project.token}, timeout=10)
    assert (missing.status_code, missing.json()) == (404, {"message": "404 Tag Not Found"})

    other = gitlab.add_project(f"other-{uuid.uuid4().hex[:8]}/app")
    foreign = requests.delete(url, headers={"PRIVATE-TOKEN": other.token}, timeout=10)
    assert foreign.status_code == 404
    assert (
        gitlab.calls["DELETE /api/v4/projects/:id/registry/repositories/:repository_id/tags/:tag_name"] == 3
    )


# --- fixtures -----------------------------------------------------------------------------------


def test_payloads_are_fresh_copies(payload: Callable[[str], Any]) -> None:
    first = payload("pipeline_event")
    assert first["object_kind"] == "pipeline"
    first["object_attributes"]["status"] = "changed"
    assert payload("pipeline_event.json")["object_attributes"]["status"] != "changed"
    assert payload("push_event_branch_delete")["after"] == "0" * 40


def test_reset_gives_each_test_a_clean_stand_in(gitlab: GitLabStandin, project: Project) -> None:
    assert gitlab.calls == {}
    requests.get(
        f"{gitlab.api_url}/projects/{project.id}", headers={"PRIVATE-TOKEN": project.token}, timeout=5
    )
    assert gitlab.calls == {"GET /api/v4/projects/:id": 1}
    gitlab.reset()
    assert gitlab.calls == {}
    gone = requests.get(f"{gitlab.api_url}/projects/{project.id}", headers={"PRIVATE-TOKEN": project.token})
    assert gone.status_code == 401


def test_unique_repo_names_are_unique_and_inside_the_project(
    project: Project, unique_repo: Callable[..., str]
) -> None:
    first, second = unique_repo(project), unique_repo(project, "builder")
    assert first != second
    assert first.startswith(project.path + "/") and second.startswith(project.path + "/builder-")
