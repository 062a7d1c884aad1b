"""The registry client against the real distribution 2.8 registry and the GitLab stand-in's token service.

What the registry actually served is read from its access log (`registry.request_log()`), and token
requests from the stand-in's counters, so "no write" and "one token" are facts, not mock expectations.
For the `oci` method a small proxy in front of the same registry adds a correct OCI tag delete.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests
from flask import Flask, Response, request
from support import images
from support.gitlab_json import Project
from support.gitlab_standin import GitLabStandin
from support.images import digest_of, push_image, push_index, tags
from support.registry import LoggedRequest, Registry
from support.servers import ServerThread

from daemon.registry import (
    RateLimiter,
    RegistryAuthError,
    RegistryClient,
    RestoreError,
    UntagRequest,
    new_session,
)
from daemon.registry.names import is_digest
from daemon.registry.placeholder import new_placeholder
from daemon.registry.types import OCI_INDEX

WRITES = ("PUT", "POST", "PATCH", "DELETE")


def registry_client(registry: Registry, url: str | None = None, **kw: object) -> RegistryClient:
    """A client of ``registry`` (at ``url`` when a proxy stands in front of it) trusting the token service as
    ``wiring`` does: ``gitlab_url`` is the GitLab stand-in, whose ``/jwt/auth`` the registry's challenge names."""
    realm = urlsplit(registry.realm)
    gitlab_url = f"{realm.scheme}://{realm.netloc}"
    return RegistryClient(url or registry.url, new_session(), gitlab_url=gitlab_url, **kw)  # type: ignore[arg-type]


def writes(log: list[LoggedRequest]) -> list[LoggedRequest]:
    return [entry for entry in log if entry.method in WRITES]


def tag_deletes(log: list[LoggedRequest]) -> list[LoggedRequest]:
    return [e for e in log if e.method == "DELETE" and not is_digest(e.path.rsplit("/", 1)[1])]


def digest_deletes(log: list[LoggedRequest]) -> list[str]:
    return [e.path.rsplit("/", 1)[1] for e in log if e.method == "DELETE" and is_digest(e.path.rsplit("/", 1)[1])]


@pytest.fixture
def repo(project: Project, unique_repo: Callable[..., str]) -> str:
    return unique_repo(project)


def test_placeholder_untag_removes_one_tag_and_keeps_its_sibling_and_the_image(
    registry: Registry, project: Project, repo: str
) -> None:
    digest = push_image(registry, repo, ["mr-1", "main"])
    reg = registry_client(registry).for_project(project.path, project.token)
    registry.mark()
    (result,) = reg.untag([UntagRequest(repo, "mr-1", digest)], method="placeholder")
    assert (result.outcome, result.method, result.reason) == ("done", "placeholder", None)
    assert result.saved is not None and result.saved.digest == digest
    assert tags(registry, repo) == ["main"]
    assert digest_of(registry, repo, "main") == digest
    assert digest_of(registry, repo, digest) == digest  # the image itself is still there
    log = registry.request_log(repo=repo)
    assert tag_deletes(log) == []
    assert digest not in digest_deletes(log)  # S5: only the janitor's own placeholder is deleted by digest


def test_placeholder_batch_deletes_one_placeholder_for_many_tags(
    registry: Registry, project: Project, repo: str
) -> None:
    items = [UntagRequest(repo, f"mr-{n}", push_image(registry, repo, [f"mr-{n}"])) for n in range(5)]
    keep = push_image(registry, repo, ["keep"])
    client = registry_client(registry)
    client.site.remember_placeholder_delete_works()  # leave the once-per-registry probe out of the count
    registry.mark()
    results = client.for_project(project.path, project.token).untag(items, method="placeholder")
    assert [r.outcome for r in results] == ["done"] * 5
    assert tags(registry, repo) == ["keep"] and digest_of(registry, repo, "keep") == keep
    log = registry.request_log(repo=repo)
    assert len(digest_deletes(log)) == 1
    assert sum(1 for e in log if e.method == "PUT" and "/manifests/" in e.path) == 5


def test_auto_falls_back_to_placeholder_on_distribution_2_8_and_remembers(
    registry: Registry, project: Project, repo: str
) -> None:
    client = registry_client(registry)
    reg = client.for_project(project.path, project.token)
    first = push_image(registry, repo, ["mr-1", "keep"])
    registry.mark()
    (result,) = reg.untag([UntagRequest(repo, "mr-1", first)])
    assert (result.outcome, result.method) == ("done", "placeholder")
    assert [(e.status, e.path.rsplit("/", 1)[1]) for e in tag_deletes(registry.request_log(repo=repo))] == [
        (400, "mr-1")  # DIGEST_INVALID: distribution 2.x has no tag delete
    ]
    assert client.site.auto_method == "placeholder"

    second = push_image(registry, repo, ["mr-2"])
    registry.mark()
    (result,) = client.for_project(project.path, project.token).untag([UntagRequest(repo, "mr-2", second)])
    assert (result.outcome, result.method) == ("done", "placeholder")
    assert tag_deletes(registry.request_log(repo=repo)) == []  # not tried again
    assert tags(registry, repo) == ["keep"]


def test_superseded_and_missing_are_skipped_without_a_write(registry: Registry, project: Project, repo: str) -> None:
    old = push_image(registry, repo, ["mr-1"])
    new = push_image(registry, repo, ["mr-1"])  # CI pushed mr-1 again after the janitor recorded `old`
    reg = registry_client(registry).for_project(project.path, project.token)
    registry.mark()
    results = reg.untag([UntagRequest(repo, "mr-1", old), UntagRequest(repo, "never-pushed", old)])
    assert [(r.outcome, r.reason) for r in results] == [("skipped", "superseded"), ("skipped", "missing")]
    assert digest_of(registry, repo, "mr-1") == new
    assert writes(registry.request_log(repo=repo)) == []


def test_dry_run_sends_no_write(registry: Registry, project: Project, repo: str) -> None:
    digest = push_image(registry, repo, ["mr-1", "mr-2"])
    reg = registry_client(registry).for_project(project.path, project.token)
    registry.mark()
    for method in ("auto", "oci", "placeholder"):
        results = reg.untag(
            [UntagRequest(repo, "mr-1", digest), UntagRequest(repo, "mr-2", digest)],
            method=method,
            dry_run=True,
        )
        assert [r.outcome for r in results] == ["dry_run", "dry_run"]
    log = registry.request_log(repo=repo)
    assert log and writes(log) == []
    assert {e.method for e in log} <= {"GET", "HEAD"}
    assert tags(registry, repo) == ["mr-1", "mr-2"]


def test_out_of_scope_sends_no_request_and_asks_for_no_token(
    registry: Registry, gitlab: GitLabStandin, project: Project, unique_repo: Callable[..., str]
) -> None:
    other = gitlab.add_project(f"{project.path}-other")  # shares a prefix, not a path
    foreign = unique_repo(other)
    digest = push_image(registry, foreign, ["mr-1"])
    reg = registry_client(registry).for_project(project.path, project.token)
    registry.mark()
    (result,) = reg.untag([UntagRequest(foreign, "mr-1", digest)])
    assert (result.outcome, result.reason) == ("skipped", "out_of_scope")
    assert registry.request_log() == []
    assert gitlab.calls["GET /jwt/auth"] == 0
    assert tags(registry, foreign) == ["mr-1"]


def test_tokens_are_cached_and_the_challenge_is_learnt_once(
    registry: Registry, gitlab: GitLabStandin, project: Project, unique_repo: Callable[..., str]
) -> None:
    repo_a, repo_b = unique_repo(project, "a"), unique_repo(project, "b")
    da, db = push_image(registry, repo_a, ["x"]), push_image(registry, repo_b, ["x"])
    reg = registry_client(registry).for_project(project.path, project.token)
    registry.mark()
    for _ in range(5):
        assert reg.head(repo_a, "x") == da
        assert reg.head(repo_b, "x") == db
    assert gitlab.calls["GET /jwt/auth"] == 2  # one token per repository, each scoped to it alone
    log = registry.request_log()
    assert [e.status for e in log].count(401) == 1  # the first request only: later ones carry a token
    assert len(log) == 11


def test_expired_token_is_replaced(registry: Registry, gitlab: GitLabStandin, project: Project, repo: str) -> None:
    digest = push_image(registry, repo, ["x"])
    now = [0.0]
    gitlab.token_lifetime = 60
    reg = registry_client(registry, clock=lambda: now[0], token_margin=30).for_project(project.path, project.token)
    reg.head(repo, "x")
    now[0] = 29.0
    reg.head(repo, "x")
    assert gitlab.calls["GET /jwt/auth"] == 1
    now[0] = 31.0
    assert reg.head(repo, "x") == digest
    assert gitlab.calls["GET /jwt/auth"] == 2


def test_a_token_without_access_is_an_auth_error_naming_the_project(
    registry: Registry, gitlab: GitLabStandin, project: Project, repo: str
) -> None:
    push_image(registry, repo, ["x"])
    stranger = gitlab.add_project(f"{project.path}-stranger")
    reg = registry_client(registry).for_project(project.path, stranger.token)  # the wrong project's token
    with pytest.raises(RegistryAuthError) as info:
        reg.head(repo, "x")
    message = str(info.value)
    assert project.path in message and repo in message and "check the project's registry_token" in message
    assert gitlab.calls["GET /jwt/auth"] == 1


@pytest.mark.parametrize("method", ["oci", "placeholder", "auto"])
@pytest.mark.parametrize(("role", "scopes", "granted"), [
    ("reporter", ("api",), "pull"),
    ("developer", ("api",), "pull,push"),  # the README's old "Developer, read/write registry" token
    ("maintainer", ("read_registry", "write_registry"), "pull,push"),
])
def test_a_token_without_delete_dry_runs_but_writes_nothing_and_fails_as_no_delete_permission(
    registry: Registry, gitlab: GitLabStandin, unique_repo: Callable[..., str], method: str, role: str,
    scopes: tuple[str, ...], granted: str,
) -> None:
    """``/jwt/auth`` issues a token with fewer actions instead of refusing, and ``delete`` needs the api
    scope and the Maintainer role (``app/services/auth/container_registry_authentication_service.rb``,
    ``lib/gitlab/auth.rb``): the janitor reads the grant from the token before its first write, and a
    token without ``delete`` writes nothing at all (no placeholder is pushed, no tag is parked) instead of
    leaving the tag on an empty image."""
    owner = gitlab.add_project(f"grp-{role}-{time.monotonic_ns()}/app", role=role, scopes=scopes)
    repo = unique_repo(owner)
    digest = push_image(registry, repo, ["mr-1", "mr-2"])
    reg = registry_client(registry).for_project(owner.path, owner.token)
    items = [UntagRequest(repo, "mr-1", digest), UntagRequest(repo, "mr-2", digest)]
    fix = f"token for {owner.path} gets {granted} on {repo}; give it the api scope and the Maintainer role"
    dry = reg.untag(items, method=method, dry_run=True)
    assert [(r.outcome, r.reason) for r in dry] == [("dry_run", "no_delete_permission")] * 2
    assert fix in (dry[0].detail or "")
    registry.mark()
    results = reg.untag(items, method=method)
    assert [(r.outcome, r.reason, r.saved, r.method) for r in results] == [
        ("failed", "no_delete_permission", None, None)] * 2
    assert all(fix in (r.detail or "") and "nothing was written" in (r.detail or "") for r in results)
    assert registry.request_log() == []  # the cached token said it all: not even a guard read
    assert tags(registry, repo) == ["mr-1", "mr-2"]
    assert digest_of(registry, repo, "mr-1") == digest and digest_of(registry, repo, "mr-2") == digest
    assert gitlab.calls["GET /jwt/auth"] == 1


def test_a_write_registry_token_cannot_even_read_and_is_not_sent_to(
    registry: Registry, gitlab: GitLabStandin, unique_repo: Callable[..., str]
) -> None:
    """``write_registry`` alone gives only ``create_container_image`` (``lib/gitlab/auth.rb``,
    ``abilities_for_scopes``): its registry token says ``push``, so neither a dry run nor a real untag
    sends one request about the tags, and nothing is written."""
    owner = gitlab.add_project(f"grp-wr-{time.monotonic_ns()}/app", scopes=("write_registry",))
    repo = unique_repo(owner)
    digest = push_image(registry, repo, ["mr-1"])
    reg = registry_client(registry).for_project(owner.path, owner.token)
    registry.mark()
    (dry,) = reg.untag([UntagRequest(repo, "mr-1", digest)], dry_run=True)
    (result,) = reg.untag([UntagRequest(repo, "mr-1", digest)], method="placeholder")
    assert (dry.outcome, dry.reason) == ("dry_run", "no_delete_permission")
    assert (result.outcome, result.reason) == ("failed", "no_delete_permission")
    assert f"token for {owner.path} gets push on {repo}" in (result.detail or "")
    assert registry.request_log(repo=repo) == [] and writes(registry.request_log()) == []
    assert tags(registry, repo) == ["mr-1"] and digest_of(registry, repo, "mr-1") == digest


def test_an_api_maintainer_token_untags(registry: Registry, gitlab: GitLabStandin,
                                        unique_repo: Callable[..., str]) -> None:
    owner = gitlab.add_project(f"grp-ok-{time.monotonic_ns()}/app", role="maintainer", scopes=("api",))
    repo = unique_repo(owner)
    digest = push_image(registry, repo, ["mr-1", "keep"])
    (result,) = registry_client(registry).for_project(owner.path, owner.token).untag(
        [UntagRequest(repo, "mr-1", digest)], method="placeholder")
    assert (result.outcome, result.reason, result.method) == ("done", None, "placeholder")
    assert tags(registry, repo) == ["keep"]


def test_a_pull_only_token_on_a_fresh_client_sends_no_write_at_all(
    registry: Registry, gitlab: GitLabStandin, unique_repo: Callable[..., str]
) -> None:
    reporter = gitlab.add_project(f"grp-reporter-{time.monotonic_ns()}/app", role="reporter")
    repo = unique_repo(reporter)
    digest = push_image(registry, repo, ["mr-1"])
    registry.mark()
    (result,) = registry_client(registry).for_project(reporter.path, reporter.token).untag(
        [UntagRequest(repo, "mr-1", digest)], method="placeholder")
    assert (result.outcome, result.reason) == ("failed", "no_delete_permission")
    log = registry.request_log()
    assert writes(log) == [] and registry.request_log(repo=repo) == []
    assert [(e.method, e.path) for e in log] == [("GET", "/v2/")] * 2  # the challenge, then with the token
    assert tags(registry, repo) == ["mr-1"] and digest_of(registry, repo, "mr-1") == digest


def test_one_client_serves_many_threads(
    registry: Registry, gitlab: GitLabStandin, project: Project, unique_repo: Callable[..., str]
) -> None:
    repos = [unique_repo(project, f"r{n}") for n in range(4)]
    work = {
        repo: [UntagRequest(repo, f"mr-{k}", push_image(registry, repo, [f"mr-{k}", f"keep-{k}"])) for k in range(5)]
        for repo in repos
    }
    client = registry_client(registry)
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(
            pool.map(lambda items: client.for_project(project.path, project.token).untag(items), work.values())
        )
    assert all(r.outcome == "done" for results in outcomes for r in results)
    for repo in repos:
        assert tags(registry, repo) == [f"keep-{k}" for k in range(5)]
    assert gitlab.calls["GET /jwt/auth"] == len(repos)
    assert client.site.auto_method == "placeholder"


def test_rate_limit_spaces_requests(registry: Registry, project: Project, repo: str) -> None:
    digest = push_image(registry, repo, ["x"])
    reg = registry_client(registry, limiter=RateLimiter(rate=20, burst=1)).for_project(project.path, project.token)
    reg.head(repo, "x")  # learn the challenge and fetch the token first
    started = time.monotonic()
    for _ in range(6):
        assert reg.head(repo, "x") == digest
    assert time.monotonic() - started >= 5 / 20 * 0.95  # at least (n - burst) / rate; no upper bound


def test_restore_puts_the_tag_back_at_the_same_digest(registry: Registry, project: Project, repo: str) -> None:
    digest = push_image(registry, repo, ["mr-1", "main"])
    reg = registry_client(registry).for_project(project.path, project.token)
    (result,) = reg.untag([UntagRequest(repo, "mr-1", digest)])
    assert result.outcome == "done" and result.saved is not None
    assert tags(registry, repo) == ["main"]
    reg.restore(repo, "mr-1", result.saved)
    assert digest_of(registry, repo, "mr-1") == digest
    assert tags(registry, repo) == ["main", "mr-1"]


def test_restore_after_garbage_collection_explains_what_to_do(registry: Registry, project: Project, repo: str) -> None:
    digest = push_image(registry, repo, ["mr-1"])
    reg = registry_client(registry).for_project(project.path, project.token)
    (result,) = reg.untag([UntagRequest(repo, "mr-1", digest)])
    assert result.saved is not None
    layer_or_config = re.findall(r'"digest": "(sha256:[0-9a-f]{64})"', result.saved.body.decode())
    for blob in layer_or_config:  # what garbage collection does to an untagged image's blobs
        assert registry.session.delete(f"{registry.url}/v2/{repo}/blobs/{blob}").status_code == 202
    with pytest.raises(RestoreError, match="rerun the pipeline"):
        reg.restore(repo, "mr-1", result.saved)
    assert tags(registry, repo) == []


@pytest.mark.parametrize("media_type", [OCI_INDEX, images.MANIFEST_LIST])
def test_image_index_untag_and_restore(registry: Registry, project: Project, repo: str, media_type: str) -> None:
    digest = push_index(registry, repo, ["mr-1", "main"], media_type=media_type)
    reg = registry_client(registry).for_project(project.path, project.token)
    (result,) = reg.untag([UntagRequest(repo, "mr-1", digest)])
    assert result.outcome == "done" and result.saved is not None
    assert (result.saved.digest, result.saved.media_type) == (digest, media_type)
    assert tags(registry, repo) == ["main"]
    reg.restore(repo, "mr-1", result.saved)
    assert digest_of(registry, repo, "mr-1") == digest


def test_an_interrupted_placeholder_untag_is_finished_by_the_next_attempt(
    registry: Registry, project: Project, repo: str
) -> None:
    digest = push_image(registry, repo, ["mr-1", "keep"])
    parked = new_placeholder()  # as a worker killed between parking the tag and deleting the placeholder left it
    images.upload_blob(registry, repo, parked.config)
    images.put_manifest(registry, repo, "mr-1", parked.manifest.body, parked.manifest.media_type)
    reg = registry_client(registry).for_project(project.path, project.token)
    (result,) = reg.untag([UntagRequest(repo, "mr-1", digest)])
    assert (result.outcome, result.method) == ("done", "placeholder")
    assert result.saved is not None and result.saved.digest == digest
    assert tags(registry, repo) == ["keep"]


def test_someone_elses_empty_image_is_not_taken_for_a_placeholder(
    registry: Registry, project: Project, repo: str
) -> None:
    digest = push_image(registry, repo, [])
    theirs = images.push_placeholder(registry, repo, ["mr-1"])  # empty, but not labelled by the janitor
    reg = registry_client(registry).for_project(project.path, project.token)
    (result,) = reg.untag([UntagRequest(repo, "mr-1", digest)])
    assert (result.outcome, result.reason) == ("skipped", "superseded")
    assert digest_of(registry, repo, "mr-1") == theirs


# --- a registry with OCI tag delete ---------------------------------------------------------------

_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive", "host"}


def oci_tag_delete_proxy(registry: Registry) -> Flask:
    """The real registry behind a proxy that answers `DELETE /v2/<repo>/manifests/<tag>` like an
    OCI 1.1 registry: only with a token allowed to delete, 404 for an unknown tag, else just that tag."""
    app = Flask("oci-tag-delete")
    upstream = requests.Session()
    proxy_url: list[str] = []

    @app.route("/v2/", defaults={"path": ""}, methods=["GET", "HEAD"])
    @app.route("/v2/<path:path>", methods=["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"])
    def forward(path: str) -> Response:
        match = re.fullmatch(r"(.+)/manifests/([^/]+)", path)
        if request.method == "DELETE" and match and not is_digest(match[2]):
            return delete_tag(match[1], match[2])
        return relay(request.method, request.full_path.rstrip("?"))

    def relay(method: str, target: str) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        answer = upstream.request(
            method,
            registry.url + target,
            headers=headers,
            data=request.get_data(),
            allow_redirects=False,
            timeout=10,
        )
        out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
        if "Location" in out:
            out["Location"] = out["Location"].replace(registry.url, proxy_url[0])
        return Response(answer.content, answer.status_code, out)

    def delete_tag(repo: str, tag: str) -> Response:
        # the caller's token must allow delete: ask the registry with a digest that cannot exist
        check = relay("DELETE", f"/v2/{repo}/manifests/sha256:{'0' * 64}")
        if check.status_code != 404:
            return check
        if digest_of(registry, repo, tag) is None:
            return Response(
                '{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}',
                404,
                content_type="application/json",
            )
        images.untag(registry, repo, tag)
        return Response(status=202)

    app.config["proxy_url"] = proxy_url
    return app


@pytest.fixture
def oci_registry(registry: Registry) -> Iterator[str]:
    app = oci_tag_delete_proxy(registry)
    with ServerThread(app, name="oci-tag-delete") as server:
        app.config["proxy_url"].append(server.url)
        yield server.url


@pytest.mark.parametrize("method", ["oci", "auto"])
def test_oci_tag_delete_removes_just_the_tag(
    registry: Registry, oci_registry: str, project: Project, repo: str, method: str
) -> None:
    digest = push_image(registry, repo, ["mr-1", "main"])
    client = registry_client(registry, oci_registry)
    (result,) = client.for_project(project.path, project.token).untag(
        [UntagRequest(repo, "mr-1", digest)], method=method
    )
    assert (result.outcome, result.method) == ("done", "oci")
    assert result.saved is not None and result.saved.digest == digest
    assert tags(registry, repo) == ["main"] and digest_of(registry, repo, "main") == digest
    assert client.site.auto_method == "oci"


def test_oci_untag_of_a_tag_already_gone_is_missing(
    registry: Registry, oci_registry: str, project: Project, repo: str
) -> None:
    digest = push_image(registry, repo, ["mr-1"])
    reg = registry_client(registry, oci_registry).for_project(project.path, project.token)
    images.untag(registry, repo, "mr-1")
    (result,) = reg.untag([UntagRequest(repo, "mr-1", digest)], method="oci")
    assert (result.outcome, result.reason) == ("skipped", "missing")
