"""Untag methods, guards and restore against an in-memory registry fake behind ``responses``.

The fake follows distribution's answers (checked on 2.8: tag DELETE is 400 DIGEST_INVALID unless
``tag_delete`` is on; deleting a digest drops every tag on it; manifests need their blobs). It exists for
sequences the real registry will not produce on demand (a 503 on one write, a failing placeholder
delete, an interrupted run); test_registry_integration.py runs the same behaviours on the real thing.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from daemon.registry import (
    Manifest,
    NoDeletePermissionError,
    PermanentRegistryError,
    RegistryClient,
    RestoreConflictError,
    RestoreError,
    TagNotFoundError,
    TransientRegistryError,
    UntagRequest,
)
from daemon.registry.placeholder import new_placeholder
from daemon.registry.types import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    ProjectView,
    sha256_digest,
)

BASE = "https://registry.test"
GITLAB = "https://gitlab.test"  # gitlab.url: GitLab's /jwt/auth is the registry's token service
REALM = f"{GITLAB}/jwt/auth"
CHALLENGE = f'Bearer realm="{REALM}",service="container_registry"'
_PATH = re.compile(r"/v2/(?P<repo>.+?)/(?P<kind>manifests|blobs/uploads|blobs)/?(?P<ref>[^/]*)$")


def _err(status: int, code: str) -> tuple[int, dict[str, str], str]:
    return (
        status,
        {"Content-Type": "application/json"},
        json.dumps({"errors": [{"code": code, "message": code}]}),
    )


@dataclass
class FakeRegistry:
    tag_delete: bool = False
    manifest_delete: bool = True
    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    tags: dict[tuple[str, str], str] = field(default_factory=dict)
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)
    fail: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (method, ref) -> statuses first
    fail_digest_deletes: int = 0  # answer this many DELETEs by digest with 503
    # Token auth as GitLab does it: its tokens grant these actions and no more; None: no auth at all.
    granted: tuple[str, ...] | None = None
    token_requests: int = 0

    def install(self, rsps: responses.RequestsMock) -> None:
        for method in ("HEAD", "GET", "PUT", "DELETE", "POST"):
            rsps.add_callback(method, re.compile(re.escape(BASE) + r"/v2/.*"), callback=self.handle)
        rsps.add_callback("GET", REALM, callback=self.issue)

    def issue(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        """GitLab's whole answer: ``{"token"}``, a JWT whose ``access`` claim holds what was granted."""
        self.token_requests += 1
        scope = parse_qs(urlsplit(request.url or "").query)["scope"][0]
        _, name, _ = scope.split(":")
        claims = {"exp": 4_000_000_000, "access": [
            {"type": "repository", "name": name, "actions": list(self.granted or ())}]}
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        token = f"eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln"
        return 200, {"Content-Type": "application/json"}, json.dumps({"token": token})

    def _refused(self, request: requests.PreparedRequest) -> bool:
        """As distribution does with token auth: no token, or one without the action, is a 401."""
        if self.granted is None:
            return False
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return True
        needed = {"DELETE": "delete", "PUT": "push", "POST": "push"}.get(request.method or "", "pull")
        return needed not in self.granted and (request.path_url.split("?")[0] != "/v2/")

    def writes(self) -> list[tuple[str, str]]:
        return [entry for entry in self.log if entry[0] not in ("HEAD", "GET")]

    def handle(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes | str]:
        path = request.path_url.split("?")[0]
        if self._refused(request):
            self.log.append((request.method or "", f"401 {path}"))
            tokened = request.headers.get("Authorization", "").startswith("Bearer ")
            return 401, {"WWW-Authenticate": CHALLENGE + (',error="insufficient_scope"' if tokened else "")}, ""
        if path == "/v2/":  # the API version check
            self.log.append((request.method or "", "/v2/"))
            return 200, {"Content-Type": "application/json"}, "{}"
        match = _PATH.search(path)
        assert match, path
        repo, kind, ref = match["repo"], match["kind"], match["ref"]
        method = request.method or ""
        if method == "HEAD":
            status, headers, _ = self._handle(request, repo, kind, ref, method)
            return status, headers, b""
        return self._handle(request, repo, kind, ref, method)

    def _handle(
        self, request: requests.PreparedRequest, repo: str, kind: str, ref: str, method: str
    ) -> tuple[int, dict[str, str], bytes | str]:
        self.log.append((method, f"{kind}/{ref}" if kind != "manifests" else ref))
        queued = self.fail.get((method, ref))
        if queued:
            return _err(queued.pop(0), "UNAVAILABLE")
        if method == "DELETE" and ref.startswith("sha256:") and self.fail_digest_deletes:
            self.fail_digest_deletes -= 1
            return _err(503, "UNAVAILABLE")
        if kind == "blobs/uploads":
            if method == "POST":
                return 202, {"Location": f"/v2/{repo}/blobs/uploads/u1?_state=x"}, ""
            digest = request.url.split("digest=")[1].replace("%3A", ":")
            body = request.body if isinstance(request.body, bytes) else b""
            assert sha256_digest(body) == digest
            self.blobs[(repo, digest)] = body
            return 201, {}, ""
        if kind == "blobs":
            return (200, {}, self.blobs[(repo, ref)]) if (repo, ref) in self.blobs else _err(404, "BLOB_UNKNOWN")
        return self._manifest(method, repo, ref, request)

    def _manifest(
        self, method: str, repo: str, ref: str, request: requests.PreparedRequest
    ) -> tuple[int, dict[str, str], bytes | str]:
        by_digest = ref.startswith("sha256:")
        digest = ref if by_digest else self.tags.get((repo, ref))
        if method in ("HEAD", "GET"):
            if digest is None or (repo, digest) not in self.manifests:
                return _err(404, "MANIFEST_UNKNOWN")
            media_type, body = self.manifests[(repo, digest)]
            headers = {"Docker-Content-Digest": digest, "Content-Type": media_type}
            return 200, headers, b"" if method == "HEAD" else body
        if method == "PUT":
            body = request.body if isinstance(request.body, bytes) else str(request.body).encode()
            doc = json.loads(body)
            refs = (
                [doc["config"]["digest"], *(x["digest"] for x in doc.get("layers", []))]
                if "config" in doc
                else [m["digest"] for m in doc["manifests"]]
            )
            for child in refs:
                if (repo, child) not in self.blobs and (repo, child) not in self.manifests:
                    return _err(400, "MANIFEST_BLOB_UNKNOWN")
            digest = sha256_digest(body)
            self.manifests[(repo, digest)] = (request.headers["Content-Type"], body)
            if not by_digest:
                self.tags[(repo, ref)] = digest
            return 201, {"Docker-Content-Digest": digest}, ""
        # DELETE
        if not self.manifest_delete:
            return _err(405, "UNSUPPORTED")
        if not by_digest:
            if not self.tag_delete:
                return _err(400, "DIGEST_INVALID")
            return (202, {}, "") if self.tags.pop((repo, ref), None) else _err(404, "MANIFEST_UNKNOWN")
        if (repo, ref) not in self.manifests:
            return _err(404, "MANIFEST_UNKNOWN")
        del self.manifests[(repo, ref)]
        for key in [k for k, v in self.tags.items() if k[0] == repo and v == ref]:
            del self.tags[key]
        return 202, {}, ""

    def push(self, repo: str, tags: list[str], seed: str = "x") -> str:
        """An image with one layer; returns its digest."""
        layer, config = f"layer-{seed}".encode(), json.dumps({"seed": seed}).encode()
        self.blobs[(repo, sha256_digest(layer))] = layer
        self.blobs[(repo, sha256_digest(config))] = config
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": sha256_digest(config)},
                "layers": [
                    {
                        "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": len(layer),
                        "digest": sha256_digest(layer),
                    }
                ],
            }
        ).encode()
        digest = sha256_digest(body)
        self.manifests[(repo, digest)] = (DOCKER_MANIFEST, body)
        for tag in tags:
            self.tags[(repo, tag)] = digest
        return digest


@pytest.fixture
def fake() -> FakeRegistry:
    registry = FakeRegistry()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        registry.install(rsps)
        yield registry


def make_client(**kw: object) -> RegistryClient:
    return RegistryClient(BASE, requests.Session(), gitlab_url=GITLAB, sleep=lambda s: None, **kw)  # type: ignore[arg-type]


def project(client: RegistryClient | None = None, **kw: object):  # type: ignore[no-untyped-def]
    return (client or make_client()).for_project("group/app", "secret", **kw)  # type: ignore[arg-type]


def test_oci_removes_only_the_tag_and_saves_the_manifest(fake: FakeRegistry) -> None:
    fake.tag_delete = True
    digest = fake.push("group/app", ["mr-1", "keep"])
    (result,) = project().untag([UntagRequest("group/app", "mr-1", digest)], method="oci")
    assert (result.outcome, result.method, result.reason) == ("done", "oci", None)
    assert result.saved is not None and result.saved.digest == digest
    assert result.saved.body == fake.manifests[("group/app", digest)][1]
    assert ("group/app", "mr-1") not in fake.tags and fake.tags[("group/app", "keep")] == digest
    # A fresh client first asks /v2/ whether the registry wants a token, whose grants it reads before writing.
    assert fake.log == [("GET", "/v2/"), ("GET", "mr-1"), ("DELETE", "mr-1")]


def test_guard_outcomes_superseded_and_missing_send_no_write(fake: FakeRegistry) -> None:
    fake.tag_delete = True
    old = fake.push("group/app", [], seed="old")
    fake.push("group/app", ["mr-1"], seed="new")
    results = project().untag(
        [UntagRequest("group/app", "mr-1", old), UntagRequest("group/app", "gone", old)], method="oci"
    )
    assert [(r.outcome, r.reason, r.saved) for r in results] == [
        ("skipped", "superseded", None),
        ("skipped", "missing", None),
    ]
    assert fake.writes() == []


def test_out_of_scope_items_are_skipped_without_a_request(fake: FakeRegistry) -> None:
    results = project().untag([UntagRequest("other/app", "mr-1", "sha256:" + "0" * 64)])
    assert [(r.outcome, r.reason) for r in results] == [("skipped", "out_of_scope")]
    assert fake.log == []


def test_auto_falls_back_to_placeholder_and_remembers(fake: FakeRegistry) -> None:
    a = fake.push("group/app", ["mr-1", "main"], seed="a")
    b = fake.push("group/app", ["mr-2"], seed="b")
    client = make_client()
    assert client.site.auto_method == "oci"
    results = project(client).untag([UntagRequest("group/app", "mr-1", a), UntagRequest("group/app", "mr-2", b)])
    assert [(r.outcome, r.method) for r in results] == [("done", "placeholder"), ("done", "placeholder")]
    assert client.site.auto_method == "placeholder"
    assert set(fake.tags) == {("group/app", "main")}
    assert ("group/app", a) in fake.manifests and ("group/app", b) in fake.manifests  # images stay
    fake.log.clear()
    c = fake.push("group/app", ["mr-3"], seed="c")
    (result,) = project(client).untag([UntagRequest("group/app", "mr-3", c)])
    assert result.method == "placeholder"
    assert ("DELETE", "mr-3") not in fake.log  # no tag delete tried again


def test_placeholder_batch_parks_every_tag_on_one_manifest_and_deletes_it_once(fake: FakeRegistry) -> None:
    digests = [fake.push("group/app", [f"mr-{n}"], seed=str(n)) for n in range(3)]
    client = make_client()
    client.site.remember_placeholder_delete_works()
    items = [UntagRequest("group/app", f"mr-{n}", d) for n, d in enumerate(digests)]
    results = project(client).untag(items, method="placeholder")
    assert all(r.outcome == "done" for r in results)
    kinds = [(m, ref if not ref.startswith("sha256:") else "<digest>") for m, ref in fake.log]
    assert kinds == [
        ("GET", "/v2/"),  # does the registry want a token (whose grants are read before any write)?
        ("POST", "blobs/uploads/"),
        ("PUT", "blobs/uploads/u1"),
        ("GET", "mr-0"),
        ("PUT", "mr-0"),
        ("GET", "mr-1"),
        ("PUT", "mr-1"),
        ("GET", "mr-2"),
        ("PUT", "mr-2"),
        ("DELETE", "<digest>"),
    ]


def test_placeholder_probes_once_that_the_registry_deletes_manifests(fake: FakeRegistry) -> None:
    fake.manifest_delete = False
    digest = fake.push("group/app", ["mr-1"])
    (result,) = project().untag([UntagRequest("group/app", "mr-1", digest)], method="placeholder")
    assert result.outcome == "failed" and "storage.delete.enabled" in (result.reason or "")
    assert fake.tags[("group/app", "mr-1")] == digest  # no tag was parked on an undeletable placeholder


def test_placeholder_chunks_bound_how_many_tags_share_one_placeholder(fake: FakeRegistry) -> None:
    digests = [fake.push("group/app", [f"mr-{n}"], seed=str(n)) for n in range(5)]
    client = make_client(placeholder_batch=2)
    results = project(client).untag(
        [UntagRequest("group/app", f"mr-{n}", d) for n, d in enumerate(digests)], method="placeholder"
    )
    assert all(r.outcome == "done" for r in results)
    assert sum(1 for m, ref in fake.log if m == "DELETE" and ref.startswith("sha256:")) == 3 + 1  # + probe


def test_transient_error_on_one_write_fails_that_item_only(fake: FakeRegistry) -> None:
    fake.tag_delete = True
    a = fake.push("group/app", ["mr-1"], seed="a")
    b = fake.push("group/app", ["mr-2"], seed="b")
    fake.fail[("DELETE", "mr-1")] = [503] * 5
    results = project().untag(
        [UntagRequest("group/app", "mr-1", a), UntagRequest("group/app", "mr-2", b)], method="oci"
    )
    assert results[0].outcome == "failed" and "503" in (results[0].reason or "")
    assert results[1].outcome == "done"


@pytest.mark.parametrize("method", ["oci", "placeholder"])
def test_404_on_the_write_itself_is_missing_not_failed(fake: FakeRegistry, method: str) -> None:
    fake.tag_delete = True
    digest = fake.push("group/app", ["mr-1"])
    fake.fail[("DELETE" if method == "oci" else "PUT", "mr-1")] = [404]  # gone between guard and write
    (result,) = project().untag([UntagRequest("group/app", "mr-1", digest)], method=method)
    assert (result.outcome, result.reason) == ("skipped", "missing")


def test_503_then_success_on_a_write_is_retried(fake: FakeRegistry) -> None:
    fake.tag_delete = True
    digest = fake.push("group/app", ["mr-1"])
    fake.fail[("DELETE", "mr-1")] = [503]
    (result,) = project().untag([UntagRequest("group/app", "mr-1", digest)], method="oci")
    assert result.outcome == "done"


def test_dry_run_reads_but_never_writes(fake: FakeRegistry) -> None:
    digest = fake.push("group/app", ["mr-1"])
    for method in ("auto", "oci", "placeholder", "gitlab-api"):
        results = project().untag(
            [UntagRequest("group/app", "mr-1", digest), UntagRequest("group/app", "nope", digest)],
            method=method,
            dry_run=True,
        )
        assert [(r.outcome, r.reason, r.saved) for r in results] == [
            ("dry_run", None, None),
            ("skipped", "missing", None),
        ]
    assert fake.writes() == []


def manifest_requests(fake: FakeRegistry) -> list[tuple[str, str]]:
    return [entry for entry in fake.log if "/v2/" not in entry[1]]


@pytest.mark.parametrize("method", ["oci", "placeholder", "auto"])
def test_a_token_without_delete_writes_nothing_and_fails_every_untag_no_delete_permission(
    fake: FakeRegistry, method: str
) -> None:
    """GitLab's ``/jwt/auth`` leaves ``delete`` out of a token without the api scope and the Maintainer role
    instead of refusing (``app/services/auth/container_registry_authentication_service.rb``): the grant
    is read from the token before the first write, and no tag is parked on a placeholder it cannot delete."""
    fake.granted = ("pull", "push")
    fake.tag_delete = True
    digests = [fake.push("group/app", [f"mr-{n}"], seed=str(n)) for n in range(3)]
    results = project().untag([UntagRequest("group/app", f"mr-{n}", d) for n, d in enumerate(digests)],
                              method=method)
    assert [(r.outcome, r.reason, r.saved, r.method) for r in results] == [
        ("failed", "no_delete_permission", None, None)] * 3
    fix = "token for group/app gets pull,push on group/app; give it the api scope and the Maintainer role"
    assert all(fix in (r.detail or "") and "nothing was written" in (r.detail or "") for r in results)
    assert fake.writes() == [] and manifest_requests(fake) == []  # not even a guard read
    assert {tag: fake.tags[("group/app", tag)] for tag in ("mr-0", "mr-1", "mr-2")} == {
        f"mr-{n}": d for n, d in enumerate(digests)}
    assert fake.token_requests == 1


def test_placeholder_needs_push_as_well_as_delete(fake: FakeRegistry) -> None:
    fake.granted = ("pull", "delete")
    digest = fake.push("group/app", ["mr-1"])
    (result,) = project().untag([UntagRequest("group/app", "mr-1", digest)], method="placeholder")
    assert (result.outcome, result.reason) == ("failed", "no_delete_permission")
    assert "needs pull,push,delete" in (result.detail or "")
    assert fake.writes() == [] and fake.tags[("group/app", "mr-1")] == digest


def test_a_token_with_every_action_untags_and_the_check_costs_no_request(fake: FakeRegistry) -> None:
    fake.granted = ("pull", "push", "delete")
    fake.tag_delete = True
    digest = fake.push("group/app", ["mr-1", "keep"])
    reg = project()
    reg.head("group/app", "keep")  # challenge and token known before the untag
    fake.log.clear()
    (result,) = reg.untag([UntagRequest("group/app", "mr-1", digest)], method="oci")
    assert (result.outcome, result.reason, result.method) == ("done", None, "oci")
    assert fake.log == [("GET", "mr-1"), ("DELETE", "mr-1")]
    assert fake.token_requests == 1


def test_a_dry_run_reports_a_token_without_delete_without_failing(fake: FakeRegistry) -> None:
    fake.granted = ("pull",)
    digest = fake.push("group/app", ["mr-1"])
    results = project().untag(
        [UntagRequest("group/app", "mr-1", digest), UntagRequest("group/app", "gone", digest)], dry_run=True)
    assert [(r.outcome, r.reason) for r in results] == [("dry_run", "no_delete_permission"), ("skipped", "missing")]
    assert "token for group/app gets pull on group/app" in (results[0].detail or "")
    assert fake.writes() == []


def test_a_dry_run_with_a_token_that_may_not_read_reports_without_a_read_per_tag(fake: FakeRegistry) -> None:
    fake.granted = ("push",)  # a write_registry token: push only (lib/gitlab/auth.rb, abilities_for_scopes)
    digest = fake.push("group/app", ["mr-1", "mr-2"])
    results = project().untag(
        [UntagRequest("group/app", "mr-1", digest), UntagRequest("group/app", "mr-2", digest)], dry_run=True)
    assert [(r.outcome, r.reason) for r in results] == [("dry_run", "no_delete_permission")] * 2
    assert "token for group/app gets push on group/app" in (results[0].detail or "")
    assert manifest_requests(fake) == [] and fake.token_requests == 1


def test_an_unreadable_grant_fails_the_batch_before_any_write(fake: FakeRegistry) -> None:
    fake.granted = ("pull", "push", "delete")
    fake.push("group/app", ["mr-1"])
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        for method in ("GET", "POST", "PUT", "DELETE"):
            rsps.add_callback(method, re.compile(re.escape(BASE) + r"/v2/.*"), callback=fake.handle)
        rsps.add("GET", REALM, status=401, json={"message": "HTTP Basic: Access denied"})
        (result,) = project().untag([UntagRequest("group/app", "mr-1", "sha256:" + "0" * 64)], method="placeholder")
    assert result.outcome == "failed" and "check the project's registry_token" in (result.reason or "")
    assert fake.writes() == []


def test_failed_placeholder_delete_is_reported_and_finished_by_a_retry(fake: FakeRegistry) -> None:
    digest = fake.push("group/app", ["mr-1", "keep"])
    client = make_client(max_retries=0)
    client.site.remember_placeholder_delete_works()
    fake.fail_digest_deletes = 1  # the worker dies, or the registry fails, before the placeholder goes
    item = UntagRequest("group/app", "mr-1", digest)
    (first,) = project(client).untag([item], method="placeholder")
    assert first.outcome == "failed" and "retrying the untag finishes it" in (first.reason or "")
    assert first.saved is not None and first.saved.digest == digest
    assert fake.tags[("group/app", "mr-1")] not in (digest, None)
    (second,) = project(client).untag([item], method="placeholder")  # e.g. after the worker restarts
    assert (second.outcome, second.method) == ("done", "placeholder")
    assert second.saved is not None and second.saved.digest == digest
    assert ("group/app", "mr-1") not in fake.tags and fake.tags[("group/app", "keep")] == digest


def test_a_tag_pushed_as_an_empty_image_by_someone_else_is_superseded(fake: FakeRegistry) -> None:
    digest = fake.push("group/app", [], seed="old")
    empty = new_placeholder()  # same shape as the janitor's, but without its label
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    fake.blobs[("group/app", sha256_digest(config))] = config
    body = empty.manifest.body.replace(empty.config_digest.encode(), sha256_digest(config).encode())
    body = body.replace(f'"size":{len(empty.config)}'.encode(), f'"size":{len(config)}'.encode())
    fake.manifests[("group/app", sha256_digest(body))] = (DOCKER_MANIFEST, body)
    fake.tags[("group/app", "mr-1")] = sha256_digest(body)
    (result,) = project().untag([UntagRequest("group/app", "mr-1", digest)], method="placeholder")
    assert (result.outcome, result.reason) == ("skipped", "superseded")
    assert fake.tags[("group/app", "mr-1")] == sha256_digest(body)


class FakeDeleter:
    def __init__(self, fake: FakeRegistry, missing: bool = False) -> None:
        self.fake, self.missing, self.calls = fake, missing, []  # type: ignore[var-annotated]

    def delete_tag(self, project_path: str, repository: str, tag: str) -> None:
        self.calls.append((project_path, repository, tag))
        if self.missing:
            raise TagNotFoundError("gone")
        del self.fake.tags[(repository, tag)]


def test_gitlab_api_method_guards_then_calls_the_deleter(fake: FakeRegistry) -> None:
    digest = fake.push("group/app", ["mr-1"])
    deleter = FakeDeleter(fake)
    (result,) = project(tag_deleter=deleter).untag([UntagRequest("group/app", "mr-1", digest)], method="gitlab-api")
    assert (result.outcome, result.method) == ("done", "gitlab-api")
    assert result.saved is not None and result.saved.digest == digest
    assert deleter.calls == [("group/app", "group/app", "mr-1")]
    assert fake.writes() == []


def test_gitlab_api_missing_tag_is_skipped_missing(fake: FakeRegistry) -> None:
    digest = fake.push("group/app", ["mr-1"])
    (result,) = project(tag_deleter=FakeDeleter(fake, missing=True)).untag(
        [UntagRequest("group/app", "mr-1", digest)], method="gitlab-api"
    )
    assert (result.outcome, result.reason) == ("skipped", "missing")


class RefusingDeleter:
    """GitLab's API answering 403 (``insufficient_scope``, or a role too low) to the tag delete."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def delete_tag(self, project_path: str, repository: str, tag: str) -> None:
        self.calls.append(tag)
        raise NoDeletePermissionError("GitLab forbids the token to delete tag: give it the api scope", status=403)


def test_gitlab_api_forbidden_is_no_delete_permission_and_the_rest_is_not_asked(fake: FakeRegistry) -> None:
    digests = [fake.push("group/app", [f"mr-{n}"], seed=str(n)) for n in range(3)]
    deleter = RefusingDeleter()
    results = project(tag_deleter=deleter).untag(
        [UntagRequest("group/app", f"mr-{n}", d) for n, d in enumerate(digests)], method="gitlab-api")
    assert [(r.outcome, r.reason) for r in results] == [("failed", "no_delete_permission")] * 3
    assert all("api scope" in (r.detail or "") for r in results)
    assert deleter.calls == ["mr-0"]
    assert [ref for _, ref in manifest_requests(fake)] == ["mr-0"]  # one guard read, then nothing
    assert all(fake.tags[("group/app", f"mr-{n}")] == d for n, d in enumerate(digests))


def test_gitlab_api_without_a_deleter_or_an_unknown_method_is_a_wiring_error(fake: FakeRegistry) -> None:
    with pytest.raises(ValueError, match="tag deleter"):
        project().untag([], method="gitlab-api")
    with pytest.raises(ValueError, match="unknown untag method"):
        project().untag([], method="sweep")


def test_restore_round_trip(fake: FakeRegistry) -> None:
    fake.tag_delete = True
    digest = fake.push("group/app", ["mr-1"])
    (result,) = project().untag([UntagRequest("group/app", "mr-1", digest)], method="oci")
    assert result.saved is not None
    project().restore("group/app", "mr-1", result.saved)
    assert fake.tags[("group/app", "mr-1")] == digest
    project().restore("group/app", "mr-1", result.saved)  # already there: nothing to do


def test_restore_when_blobs_are_gone_says_what_to_do(fake: FakeRegistry) -> None:
    digest = fake.push("group/app", ["mr-1"])
    saved = Manifest(digest, DOCKER_MANIFEST, fake.manifests[("group/app", digest)][1])
    del fake.tags[("group/app", "mr-1")]
    fake.blobs.clear()  # garbage collection ran
    with pytest.raises(RestoreError, match="rerun the pipeline"):
        project().restore("group/app", "mr-1", saved)


def test_restore_does_not_overwrite_a_tag_pushed_again(fake: FakeRegistry) -> None:
    old = fake.push("group/app", [], seed="old")
    saved = Manifest(old, DOCKER_MANIFEST, fake.manifests[("group/app", old)][1])
    new = fake.push("group/app", ["mr-1"], seed="new")
    with pytest.raises(RestoreConflictError):
        project().restore("group/app", "mr-1", saved)
    assert fake.tags[("group/app", "mr-1")] == new


def test_restore_rejects_a_corrupt_record_before_any_request(fake: FakeRegistry) -> None:
    with pytest.raises(RestoreError, match="does not hash"):
        project().restore("group/app", "mr-1", Manifest("sha256:" + "1" * 64, DOCKER_MANIFEST, b"{}"))
    assert fake.log == []


def test_index_is_saved_as_stored_and_restored(fake: FakeRegistry) -> None:
    fake.tag_delete = True
    child = fake.push("group/app", [], seed="amd64")
    child_body = fake.manifests[("group/app", child)][1]
    fake.manifests[("group/app", child)] = (OCI_MANIFEST, child_body)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "size": len(child_body), "digest": child}],
        }
    ).encode()
    fake.manifests[("group/app", sha256_digest(index))] = (OCI_INDEX, index)
    fake.tags[("group/app", "mr-1")] = sha256_digest(index)
    (result,) = project().untag([UntagRequest("group/app", "mr-1", sha256_digest(index))], method="oci")
    assert result.saved == Manifest(sha256_digest(index), OCI_INDEX, index)
    project().restore("group/app", "mr-1", result.saved)
    assert fake.tags[("group/app", "mr-1")] == sha256_digest(index)


def test_manifest_bytes_not_matching_their_digest_are_refused(fake: FakeRegistry) -> None:
    digest = fake.push("group/app", ["mr-1"])
    media_type, body = fake.manifests[("group/app", digest)]
    fake.manifests[("group/app", digest)] = (media_type, body + b" ")
    with pytest.raises(PermanentRegistryError, match="proxy"):
        project().get_manifest("group/app", "mr-1")


def test_invalid_tag_never_reaches_the_url(fake: FakeRegistry) -> None:
    with pytest.raises(PermanentRegistryError, match="neither a valid tag"):
        project().head("group/app", "../../other/manifests/x")
    (result,) = project().untag([UntagRequest("group/app", "a/b", "sha256:" + "0" * 64)])
    assert result.outcome == "failed"
    assert fake.log == []


def test_transient_errors_surface_as_transient(fake: FakeRegistry) -> None:
    fake.fail[("HEAD", "mr-1")] = [503] * 10
    with pytest.raises(TransientRegistryError):
        project(make_client(max_retries=1)).head("group/app", "mr-1")


def test_project_registry_offers_every_operation_the_untag_methods_use() -> None:
    assert isinstance(project(), ProjectView)


def test_an_untag_never_deletes_the_image_by_digest(fake: FakeRegistry) -> None:
    fake.tag_delete = True
    digest = fake.push("group/app", ["mr-1", "keep"])
    (result,) = project().untag([UntagRequest("group/app", digest, digest)], method="oci")
    assert result.outcome == "failed" and "not a tag" in (result.reason or "")
    assert fake.writes() == []
    assert ("group/app", digest) in fake.manifests and fake.tags[("group/app", "keep")] == digest


def test_tag_and_placeholder_deletes_refuse_the_other_kind_of_reference_before_any_request(
    fake: FakeRegistry,
) -> None:
    digest = fake.push("group/app", ["mr-1"])
    reg = project()
    with pytest.raises(PermanentRegistryError, match="not a tag"):
        reg.delete_tag("group/app", digest)
    with pytest.raises(PermanentRegistryError, match="not a digest"):
        reg.delete_placeholder("group/app", "mr-1")
    assert fake.log == []
    assert fake.tags[("group/app", "mr-1")] == digest


# --- the manifest is handed over before each write, and an interrupted batch is finished from it --------


def park(fake: FakeRegistry, repo: str, tags_: list[str]) -> str:
    """Tags parked on a placeholder of the janitor's, as a run interrupted before deleting it leaves them."""
    leftover = new_placeholder()
    fake.blobs[(repo, leftover.config_digest)] = leftover.config
    fake.manifests[(repo, leftover.manifest.digest)] = (leftover.manifest.media_type, leftover.manifest.body)
    for tag in tags_:
        fake.tags[(repo, tag)] = leftover.manifest.digest
    return leftover.manifest.digest


def saved_of(fake: FakeRegistry, repo: str, digest: str) -> Manifest:
    media_type, body = fake.manifests[(repo, digest)]
    return Manifest(digest, media_type, body)


@pytest.mark.parametrize("method", ["oci", "placeholder", "gitlab-api"])
def test_each_manifest_is_handed_to_on_saved_after_its_guard_and_before_its_write(
    fake: FakeRegistry, method: str
) -> None:
    fake.tag_delete = True
    digests = [fake.push("group/app", [f"mr-{n}"], seed=str(n)) for n in range(3)]
    seen: list[tuple[str, str, str, int]] = []
    deleter = FakeDeleter(fake) if method == "gitlab-api" else None

    def on_saved(request: UntagRequest, manifest: Manifest, used: str) -> None:
        assert fake.tags[(request.repository, request.tag)] == request.expected_digest  # nothing written yet
        seen.append((request.tag, manifest.digest, used, len(fake.writes()) + len(deleter.calls if deleter else [])))

    items = [UntagRequest("group/app", f"mr-{n}", d) for n, d in enumerate(digests)]
    results = project(tag_deleter=deleter).untag(items, method=method, on_saved=on_saved)
    assert [(r.outcome, r.method) for r in results] == [("done", method)] * 3
    assert [(tag, digest, used) for tag, digest, used, _ in seen] == [
        (f"mr-{n}", d, method) for n, d in enumerate(digests)]
    assert [r.saved for r in results] == [saved_of(fake, "group/app", d) for d in digests]
    writes_before = [n for *_, n in seen]
    assert writes_before == sorted(writes_before) and len(set(writes_before)) == 3  # one write after each


def test_an_exception_from_on_saved_stops_the_batch_before_that_write(fake: FakeRegistry) -> None:
    digests = [fake.push("group/app", [f"mr-{n}"], seed=str(n)) for n in range(3)]

    class Interrupted(Exception):
        pass

    def on_saved(request: UntagRequest, manifest: Manifest, used: str) -> None:
        if request.tag == "mr-1":
            raise Interrupted("storage is away")

    items = [UntagRequest("group/app", f"mr-{n}", d) for n, d in enumerate(digests)]
    with pytest.raises(Interrupted):
        project().untag(items, method="placeholder", on_saved=on_saved)
    assert fake.tags[("group/app", "mr-1")] == digests[1] and fake.tags[("group/app", "mr-2")] == digests[2]
    assert ("PUT", "mr-1") not in fake.log and ("PUT", "mr-2") not in fake.log


def test_a_resumed_batch_parked_on_one_placeholder_is_finished_by_one_delete_and_all_of_it_is_done(
    fake: FakeRegistry,
) -> None:
    digests = [fake.push("group/app", [f"mr-{n}"], seed=str(n)) for n in range(3)]
    fake.push("group/app", ["keep"], seed="keep")
    saved = [saved_of(fake, "group/app", d) for d in digests]
    leftover = park(fake, "group/app", ["mr-0", "mr-1", "mr-2"])
    items = [UntagRequest("group/app", f"mr-{n}", d, saved[n]) for n, d in enumerate(digests)]
    client = make_client()
    client.site.remember_placeholder_delete_works()
    results = project(client).untag(items, method="placeholder", on_saved=lambda *a: pytest.fail("saved already"))
    assert [(r.outcome, r.reason, r.saved) for r in results] == [("done", None, s) for s in saved]
    assert [ref for m, ref in fake.log if m == "DELETE"] == [leftover]  # S5: the placeholder, and only it
    assert all(("GET", d) not in fake.log for d in digests)  # the saved manifests are not read again
    assert set(fake.tags) == {("group/app", "keep")}
    assert all(("group/app", d) in fake.manifests for d in digests)


def test_a_resumed_untag_whose_tag_is_gone_is_done_without_a_write_but_a_dry_run_says_missing(
    fake: FakeRegistry,
) -> None:
    digest = fake.push("group/app", [], seed="gone")
    saved = saved_of(fake, "group/app", digest)
    item = UntagRequest("group/app", "mr-1", digest, saved)
    client = make_client()
    client.site.remember_placeholder_delete_works()
    (result,) = project(client).untag([item], method="placeholder")
    assert (result.outcome, result.reason, result.saved) == ("done", None, saved)
    (dry,) = project(client).untag([item], method="placeholder", dry_run=True)
    assert (dry.outcome, dry.reason) == ("skipped", "missing")
    assert [w for w in fake.writes() if not w[1].startswith("blobs/")] == []


def test_a_resumed_untag_interrupted_before_its_write_is_untagged_as_usual(fake: FakeRegistry) -> None:
    digest = fake.push("group/app", ["mr-1", "keep"])
    item = UntagRequest("group/app", "mr-1", digest, saved_of(fake, "group/app", digest))
    (result,) = project().untag([item], method="placeholder")
    assert (result.outcome, result.method) == ("done", "placeholder")
    assert set(fake.tags) == {("group/app", "keep")}
