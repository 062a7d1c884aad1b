"""The GitLab stand-in is as strict as GitLab about credentials: each rule here is read from GitLab's source
(cited per test) and checked against the stand-in and, where a grant matters, the real registry.

A stand-in kinder than GitLab hides the failures users meet first; these tests keep it honest.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
import requests
from support import images
from support.gitlab_json import Project
from support.gitlab_standin import GitLabStandin
from support.images import digest_of, push_image, tags
from support.registry import Registry

INSUFFICIENT_SCOPE = {
    "error": "insufficient_scope",
    "error_description": "The request requires higher privileges than provided by the access token.",
    "scope": "api read_api",
}
BAD_REQUEST = {"message": "400 Bad request"}


class BearerRegistry:
    """The real registry seen with one raw bearer token (what a client holding that token can do)."""

    def __init__(self, registry: Registry, token: str) -> None:
        self.url = registry.url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"


def ask_jwt(
    gitlab: GitLabStandin, token: str | None, *scopes: str, user: str = "registry-janitor"
) -> requests.Response:
    return requests.get(
        gitlab.realm,
        params=[("service", "container_registry"), *(("scope", s) for s in scopes)],
        auth=(user, token) if token is not None else None,
        timeout=5,
    )


def claims_of(gitlab: GitLabStandin, token: str) -> dict[str, Any]:
    public_key = gitlab.issuer.certificate.public_key()
    return jwt.decode(token, public_key, algorithms=["RS256"], audience="container_registry")  # type: ignore[arg-type]


def granted(gitlab: GitLabStandin, token: str, repository: str, actions: str = "pull,push,delete") -> list[str]:
    """The actions `/jwt/auth` grants `token` on `repository` when asked for `actions` (never refused)."""
    response = ask_jwt(gitlab, token, f"repository:{repository}:{actions}")
    assert response.status_code == 200, response.text
    entries = [e for e in claims_of(gitlab, response.json()["token"])["access"] if e["name"] == repository]
    return [a for e in entries for a in e["actions"]]


def api(method: str, gitlab: GitLabStandin, path: str, token: str, **kw: Any) -> requests.Response:
    return requests.request(method, f"{gitlab.api_url}{path}", headers={"PRIVATE-TOKEN": token}, timeout=10, **kw)


def repository_id(gitlab: GitLabStandin, project: Project, repository: str) -> int:
    listed = api("GET", gitlab, f"/projects/{project.id}/registry/repositories", gitlab.admin_token)
    assert listed.status_code == 200, listed.text
    return next(r["id"] for r in listed.json() if r["path"] == repository)


def tag_url(project: Project, repo_id: int, tag: str) -> str:
    return f"/projects/{project.id}/registry/repositories/{repo_id}/tags/{tag}"


@pytest.fixture
def repo(registry: Registry, project: Project, unique_repo: Callable[..., str]) -> str:
    return unique_repo(project)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound without listen, so connections are refused)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


# --- /jwt/auth: scopes and roles decide the actions, silently ------------------------------------------


def test_the_jwt_answer_is_the_token_alone(gitlab: GitLabStandin, project: Project, repo: str) -> None:
    """app/controllers/jwt_controller.rb renders the service's result, and
    app/services/auth/container_registry_authentication_service.rb (`execute`) returns `{ token: ... }`:
    no `expires_in`, `issued_at` or `access_token`. The JWT keeps its registry claims."""
    response = ask_jwt(gitlab, project.token, f"repository:{repo}:pull")
    assert response.status_code == 200
    assert set(response.json()) == {"token"}
    claims = claims_of(gitlab, response.json()["token"])
    assert set(claims) == {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access"}
    assert claims["exp"] - claims["iat"] == gitlab.token_lifetime


def test_an_api_maintainer_token_gets_pull_push_delete_and_may_delete(
    gitlab: GitLabStandin, registry: Registry, project: Project, repo: str
) -> None:
    """lib/gitlab/auth.rb (`abilities_for_scopes`): `api` gives every ability, admin_container_image
    included; app/policies/project_policy.rb gives admin_container_image to Maintainers; the registry's
    `delete` needs it (container_registry_authentication_service.rb, `can_access?` -> `user_can_admin?`)."""
    assert (project.role, project.scopes) == ("maintainer", ("api",))
    assert granted(gitlab, project.token, repo) == ["pull", "push", "delete"]

    token = ask_jwt(gitlab, project.token, f"repository:{repo}:pull,push,delete").json()["token"]
    as_token = BearerRegistry(registry, token)
    digest = push_image(as_token, repo, ["mr-1"])
    assert images.delete_manifest(as_token, repo, digest).status_code == 202
    assert tags(registry, repo) == []


def test_a_write_registry_token_is_granted_push_and_never_delete(
    gitlab: GitLabStandin, registry: Registry, project: Project, repo: str
) -> None:
    """lib/gitlab/auth.rb: `write_registry` gives create_container_image only (push, not even pull),
    `read_registry` read_container_image; neither gives admin_container_image, so `delete` is left out
    whatever the role, and /jwt/auth still answers 200
    (container_registry_authentication_service.rb, `process_repository_access`: actions are filtered,
    never refused)."""
    write_only = gitlab.add_token(project, role="maintainer", scopes=("write_registry",))
    read_write = gitlab.add_token(project, role="developer", scopes=("read_registry", "write_registry"))
    assert granted(gitlab, write_only, repo) == ["push"]
    assert granted(gitlab, read_write, repo) == ["pull", "push"]
    assert granted(gitlab, read_write, repo, "*") == []

    digest = push_image(registry, repo, ["mr-1"])
    token = ask_jwt(gitlab, read_write, f"repository:{repo}:pull,push,delete").json()["token"]
    refused = images.delete_manifest(BearerRegistry(registry, token), repo, digest)
    assert refused.status_code == 401
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    assert tags(registry, repo) == ["mr-1"]


def test_a_read_registry_token_gets_pull_only(gitlab: GitLabStandin, project: Project, repo: str) -> None:
    """lib/gitlab/auth.rb: `read_registry` -> read_container_image -> `pull` only; so does `read_api`
    (read_only_authentication_abilities include read_container_image)."""
    assert granted(gitlab, gitlab.add_token(project, scopes=("read_registry",)), repo) == ["pull"]
    assert granted(gitlab, gitlab.add_token(project, scopes=("read_api",)), repo) == ["pull"]


def test_the_role_limits_what_the_api_scope_gives(gitlab: GitLabStandin, project: Project, repo: str) -> None:
    """app/policies/project_policy.rb: Reporters read container images, Developers also create them,
    only Maintainers (and Owners) admin them, which the registry `delete` and `*` need."""
    assert granted(gitlab, gitlab.add_token(project, role="reporter"), repo) == ["pull"]
    assert granted(gitlab, gitlab.add_token(project, role="developer"), repo) == ["pull", "push"]
    assert granted(gitlab, gitlab.add_token(project, role="owner"), repo, "pull,push,delete,*") == [
        "pull",
        "push",
        "delete",
        "*",
    ]


def test_a_job_token_gets_its_own_project_only(gitlab: GitLabStandin, project: Project, repo: str) -> None:
    """lib/gitlab/auth.rb (`build_access_token_check`, `build_authentication_abilities`): a running job's
    token, with the login `gitlab-ci-token`, may pull, push and delete in its own project
    (`build_can_delete?`), never `*` (admin_container_image), and nothing elsewhere."""
    job = gitlab.add_job(project, pipeline_id=11, ref="main")
    other = gitlab.add_project(f"{project.path}-other")
    response = ask_jwt(
        gitlab, job, f"repository:{repo}:pull,push,delete,*", f"repository:{other.path}:pull", user="gitlab-ci-token"
    )
    assert claims_of(gitlab, response.json()["token"])["access"] == [
        {"type": "repository", "name": repo, "actions": ["pull", "push", "delete"]}
    ]


def test_credentials_without_any_registry_ability_are_denied(gitlab: GitLabStandin, project: Project) -> None:
    """container_registry_authentication_service.rb (`has_registry_ability?`): a token whose scopes give
    no container-image ability (`read_user`, `read_repository`) gets 403 DENIED, as does an anonymous
    request granted nothing."""
    for scopes in (("read_user",), ("read_repository",)):
        denied = ask_jwt(gitlab, gitlab.add_token(project, scopes=scopes), f"repository:{project.path}:pull")
        assert denied.status_code == 403
        assert denied.json()["errors"] == [{"code": "DENIED", "message": "access forbidden"}]
    anonymous = ask_jwt(gitlab, None, f"repository:{project.path}:pull")
    assert anonymous.status_code == 403


def test_revoked_and_expired_tokens_are_refused(gitlab: GitLabStandin, project: Project) -> None:
    """lib/gitlab/auth.rb (`personal_access_token_check`: only active tokens) and
    lib/api/api_guard.rb (401 `invalid_token` for revoked and expired tokens)."""
    revoked = gitlab.add_token(project)
    gitlab.revoke_token(revoked)
    expired = gitlab.add_token(project, expires_at=dt.datetime.now(dt.UTC).date())
    for token in (revoked, expired):
        assert ask_jwt(gitlab, token, f"repository:{project.path}:pull").status_code == 401
    gone = api("GET", gitlab, f"/projects/{project.id}", revoked)
    assert gone.status_code == 401
    assert gone.json() == {
        "error": "invalid_token",
        "error_description": "Token was revoked. You have to re-authorize from the user.",
    }
    assert 'error="invalid_token"' in gone.headers["WWW-Authenticate"]
    late = api("GET", gitlab, f"/projects/{project.id}", expired)
    assert (late.status_code, late.json()["error"]) == (401, "invalid_token")


# --- the API: scopes first, then roles --------------------------------------------------------------------


def test_a_registry_only_token_gets_403_insufficient_scope_on_the_api(
    gitlab: GitLabStandin, project: Project
) -> None:
    """lib/api/api.rb registers `api` and `read_api` (GET/HEAD); lib/gitlab/auth/auth_finders.rb
    (`validate_access_token!`) raises InsufficientScopeError, which lib/api/api_guard.rb renders as
    Rack::OAuth2's Bearer Forbidden: 403 with error, error_description and the scopes that would do."""
    token = gitlab.add_token(project, role="maintainer", scopes=("read_registry", "write_registry"))
    for path in (
        f"/projects/{project.id}",
        f"/projects/{project.id}/repository/branches/main",
        f"/projects/{project.id}/merge_requests",
        f"/projects/{project.id}/hooks",
        f"/projects/{project.id}/registry/repositories",
        "/projects",
    ):
        refused = api("GET", gitlab, path, token)
        assert (refused.status_code, refused.json()) == (403, INSUFFICIENT_SCOPE), path
    refused = api("POST", gitlab, f"/projects/{project.id}/hooks", token, json={"url": "https://x.example/h"})
    assert (refused.status_code, refused.json()) == (403, INSUFFICIENT_SCOPE)
    user = api("GET", gitlab, "/user", token)
    assert (user.status_code, user.json()["scope"]) == (403, "read_user api read_api")
    assert gitlab.hooks(project) == []


def test_read_api_reads_but_never_writes(
    gitlab: GitLabStandin, registry: Registry, project: Project, repo: str
) -> None:
    """lib/api/api.rb: `allow_access_with_scope :read_api, if: request.get? || request.head?`; any write
    with a `read_api` token is 403 insufficient_scope, whatever the role."""
    token = gitlab.add_token(project, role="maintainer", scopes=("read_api",))
    push_image(registry, repo, ["mr-1"])
    assert api("GET", gitlab, f"/projects/{project.id}", token).status_code == 200
    assert api("GET", gitlab, f"/projects/{project.id}/repository/branches/main", token).status_code == 200
    assert api("GET", gitlab, f"/projects/{project.id}/merge_requests", token).status_code == 200
    assert api("GET", gitlab, f"/projects/{project.id}/hooks", token).status_code == 200
    assert api("GET", gitlab, "/user", token).status_code == 200
    repo_id = repository_id(gitlab, project, repo)
    assert api("GET", gitlab, tag_url(project, repo_id, "mr-1"), token).status_code == 200

    hook = api("POST", gitlab, f"/projects/{project.id}/hooks", token, json={"url": "https://x.example/h"})
    assert (hook.status_code, hook.json()) == (403, INSUFFICIENT_SCOPE)
    untag = api("DELETE", gitlab, tag_url(project, repo_id, "mr-1"), token)
    assert (untag.status_code, untag.json()) == (403, INSUFFICIENT_SCOPE)
    assert gitlab.hooks(project) == []
    assert tags(registry, repo) == ["mr-1"]


def test_roles_still_gate_the_api(gitlab: GitLabStandin, registry: Registry, project: Project, repo: str) -> None:
    """app/policies/project_policy.rb: hooks need admin_project (Maintainer); the API tag delete needs
    destroy_container_image (Developer; lib/api/project_container_repositories.rb)."""
    developer = gitlab.add_token(project, role="developer", scopes=("api",))
    reporter = gitlab.add_token(project, role="reporter", scopes=("api",))
    hooks = api("POST", gitlab, f"/projects/{project.id}/hooks", developer, json={"url": "https://x.example/h"})
    assert (hooks.status_code, hooks.json()) == (403, {"message": "403 Forbidden"})

    push_image(registry, repo, ["mr-1", "mr-2"])
    repo_id = repository_id(gitlab, project, repo)
    assert api("DELETE", gitlab, tag_url(project, repo_id, "mr-1"), reporter).status_code == 403
    assert api("DELETE", gitlab, tag_url(project, repo_id, "mr-1"), developer).status_code == 200
    assert tags(registry, repo) == ["mr-2"]


def test_personal_access_tokens_self_shows_the_scopes_of_any_token(gitlab: GitLabStandin, project: Project) -> None:
    """lib/api/personal_access_tokens/self_information.rb allows every scope (a token may always read
    itself, project access tokens included); lib/api/entities/personal_access_token.rb gives the shape,
    `expires_at` as a date."""
    token = gitlab.add_token(project, role="developer", scopes=("read_registry", "write_registry"), name="ci")
    response = api("GET", gitlab, "/personal_access_tokens/self", token)
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"id", "name", "revoked", "created_at", "scopes", "user_id", "active", "expires_at"}
    assert body["scopes"] == ["read_registry", "write_registry"]
    assert (body["name"], body["active"], body["revoked"]) == ("ci", True, False)
    assert dt.date.fromisoformat(body["expires_at"]) > dt.datetime.now(dt.UTC).date()
    assert body["user_id"] == gitlab.token_info(token).user_id != gitlab.token_info(project.token).user_id

    mine = api("GET", gitlab, "/personal_access_tokens/self", project.token).json()
    assert (mine["scopes"], mine["id"]) == (["api"], gitlab.token_info(project.token).id)
    user = api("GET", gitlab, "/user", project.token).json()
    assert user["id"] == mine["user_id"] and user["bot"] is True
    assert gitlab.calls["GET /api/v4/personal_access_tokens/self"] == 2


# --- the API tag delete: 400 when GitLab's own registry call fails -----------------------------------------


def test_the_tag_delete_answers_400_when_the_registry_call_fails(
    gitlab: GitLabStandin, registry: Registry, project: Project, repo: str
) -> None:
    """lib/api/project_container_repositories.rb answers `bad_request!` ({"message": "400 Bad request"},
    lib/api/helpers.rb) whenever Projects::ContainerRepository::DeleteTagsService fails; the third-party
    service (app/services/projects/container_repository/third_party/delete_tags_service.rb) first moves
    the tag to an empty manifest, then deletes that by digest, so a failed second call leaves the tag on
    the empty manifest."""
    image = push_image(registry, repo, ["mr-1", "main"])
    repo_id = repository_id(gitlab, project, repo)

    gitlab.fail_tag_deletes(1)
    first = api("DELETE", gitlab, tag_url(project, repo_id, "mr-1"), project.token)
    assert (first.status_code, first.json()) == (400, BAD_REQUEST)
    assert digest_of(registry, repo, "mr-1") == image

    gitlab.fail_tag_deletes(1, after_placeholder=True)
    second = api("DELETE", gitlab, tag_url(project, repo_id, "mr-1"), project.token)
    assert (second.status_code, second.json()) == (400, BAD_REQUEST)
    left = digest_of(registry, repo, "mr-1")
    assert left is not None and left != image
    found = images.get_manifest(registry, repo, "mr-1")
    assert found is not None and images.json.loads(found[0])["layers"] == []

    assert api("DELETE", gitlab, tag_url(project, repo_id, "mr-1"), project.token).status_code == 200
    assert tags(registry, repo) == ["main"]
    assert digest_of(registry, repo, "main") == image


def test_the_tag_delete_answers_400_when_the_registry_is_unreachable(
    gitlab: GitLabStandin, registry: Registry, project: Project, repo: str, closed_port: int
) -> None:
    """A registry GitLab cannot reach fails its call too: 400, never the registry's or a 5xx status
    passed through (lib/api/project_container_repositories.rb)."""
    push_image(registry, repo, ["mr-1"])
    repo_id = repository_id(gitlab, project, repo)
    gitlab.attach_registry(f"http://127.0.0.1:{closed_port}")
    try:
        response = api("DELETE", gitlab, tag_url(project, repo_id, "mr-1"), project.token)
    finally:
        gitlab.attach_registry(registry.url)
    assert (response.status_code, response.json()) == (400, BAD_REQUEST)
    assert tags(registry, repo) == ["mr-1"]


# --- registry tag details and job start times (what the CI gate's evidence reads) ----------------------


def test_tag_details_created_at_is_the_image_configs_creation_time(
    gitlab: GitLabStandin, registry: Registry, project: Project, repo: str
) -> None:
    """lib/container_registry/tag.rb: `created_at` is `DateTime.rfc3339(config['created'])` (doc/api/
    container_registry.md: "the time of the manifest creation, not the time of tag push"), rendered as
    `2019-01-06T16:49:51.272+00:00`; an index has no config, so null. `revision` is the config's digest."""
    built = dt.datetime(2031, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    image = push_image(registry, repo, ["mr-1"], created=built)
    images.push_index(registry, repo, ["multi"])
    repo_id = repository_id(gitlab, project, repo)
    details = api("GET", gitlab, tag_url(project, repo_id, "mr-1"), project.token)
    assert details.status_code == 200, details.text
    body = details.json()
    assert list(body) == ["name", "path", "location", "revision", "short_revision", "digest", "created_at",
                          "total_size"]
    assert (body["name"], body["digest"], body["created_at"]) == ("mr-1", image, "2031-01-02T03:04:05.678+00:00")
    manifest = images.get_manifest(registry, repo, image)
    assert manifest is not None
    config_digest = images.json.loads(manifest[0])["config"]["digest"]
    assert body["revision"] == config_digest.split(":", 1)[1] and body["short_revision"] == body["revision"][:9]
    index = api("GET", gitlab, tag_url(project, repo_id, "multi"), project.token)
    assert index.status_code == 200 and index.json()["created_at"] is None
    missing = api("GET", gitlab, tag_url(project, repo_id, "nothing"), project.token)
    assert (missing.status_code, missing.json()) == (404, {"message": "404 Tag Not Found"})


def test_tag_details_need_read_container_image_through_the_api(
    gitlab: GitLabStandin, registry: Registry, project: Project, repo: str
) -> None:
    """lib/api/project_container_repositories.rb `authorize_read_container_image!` behind the API guard:
    `api` or `read_api` (Reporter is enough), or the project's own running job's token (doc/api/
    container_registry.md); a registry-only scope is 403 insufficient_scope, another project's token 404."""
    push_image(registry, repo, ["mr-1"])
    repo_id = repository_id(gitlab, project, repo)
    url = f"{gitlab.api_url}{tag_url(project, repo_id, 'mr-1')}"
    reporter = gitlab.add_token(project, role="reporter", scopes=("read_api",))
    assert api("GET", gitlab, tag_url(project, repo_id, "mr-1"), reporter).status_code == 200
    registry_only = gitlab.add_token(project, scopes=("read_registry",))
    refused = api("GET", gitlab, tag_url(project, repo_id, "mr-1"), registry_only)
    assert (refused.status_code, refused.json()) == (403, INSUFFICIENT_SCOPE)
    job = gitlab.add_job(project, pipeline_id=12, ref="main")
    assert requests.get(url, headers={"JOB-TOKEN": job}, timeout=10).status_code == 200
    other = gitlab.add_project(f"{project.path}-other")
    assert api("GET", gitlab, tag_url(project, repo_id, "mr-1"), other.token).status_code == 404


def test_the_job_answer_carries_started_at(gitlab: GitLabStandin, project: Project) -> None:
    """doc/api/jobs.md (`GET /job`): `started_at` beside `created_at`, in the API's timestamp form."""
    started = dt.datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    job = gitlab.add_job(project, pipeline_id=13, ref="main", started_at=started)
    body = requests.get(f"{gitlab.api_url}/job", headers={"JOB-TOKEN": job}, timeout=5).json()
    assert body["started_at"] == "2030-05-06T07:08:09.123Z"
    now = gitlab.add_job(project, pipeline_id=14, ref="main")
    answer = requests.get(f"{gitlab.api_url}/job", headers={"JOB-TOKEN": now}, timeout=5).json()
    assert answer["started_at"] == answer["created_at"]
