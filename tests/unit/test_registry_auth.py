"""Challenge-driven token auth: scoped token requests, caching until expiry, one refresh, clear refusals.

Error sequences (expiry, a 401 on a cached token) come from ``responses``; the real token flow against
distribution and the GitLab stand-in is in test_registry_integration.py.
"""

from __future__ import annotations

import base64
import json
import threading
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from daemon.registry import OutOfScopeError, RegistryAuthError, RegistryClient
from daemon.registry.auth import TokenCache, granted_actions, parse_challenge, token_lifetime

BASE = "https://registry.test"
GITLAB = "https://gitlab.test"  # gitlab.url: GitLab's /jwt/auth is the registry's token service
REALM = f"{GITLAB}/jwt/auth"
DIGEST = "sha256:" + "b" * 64
CHALLENGE = {"WWW-Authenticate": f'Bearer realm="{REALM}",service="container_registry"'}


def url(repo: str = "group/app", ref: str = "mr-1") -> str:
    return f"{BASE}/v2/{repo}/manifests/{ref}"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def client(clock: Clock | None = None, **kw: object) -> RegistryClient:
    kw.setdefault("gitlab_url", GITLAB)
    return RegistryClient(BASE, requests.Session(), clock=clock or Clock(), sleep=lambda s: None, **kw)  # type: ignore[arg-type]


def registry_accepting(*tokens: str) -> None:
    """HEAD answers 200 for a listed bearer token, 401 with the challenge otherwise."""

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        auth = request.headers.get("Authorization", "")
        if auth.removeprefix("Bearer ") in tokens:
            return 200, {"Docker-Content-Digest": DIGEST}, ""
        return 401, CHALLENGE, ""

    responses.add_callback("HEAD", url(), callback=answer)


def token_calls() -> list[responses.Call]:
    return [c for c in responses.calls if c.request.url and c.request.url.startswith(REALM)]


@responses.activate
def test_first_request_learns_the_challenge_and_asks_for_a_scoped_token() -> None:
    registry_accepting("t1")
    responses.add("GET", REALM, json={"token": "t1", "expires_in": 300})
    reg = client().for_project("group/app", "project-secret")
    assert reg.head("group/app", "mr-1") == DIGEST
    (call,) = token_calls()
    query = parse_qs(urlsplit(call.request.url).query)
    assert query == {"scope": ["repository:group/app:pull,push,delete"], "service": ["container_registry"]}
    basic = base64.b64decode(call.request.headers["Authorization"].removeprefix("Basic ")).decode()
    assert basic.endswith(":project-secret")


@responses.activate
def test_later_requests_send_the_cached_token_upfront() -> None:
    registry_accepting("t1")
    responses.add("GET", REALM, json={"token": "t1", "expires_in": 300})
    reg = client().for_project("group/app", "project-secret")
    for _ in range(5):
        reg.head("group/app", "mr-1")
    assert len(token_calls()) == 1
    assert len(responses.calls) == 1 + 1 + 5  # one 401, the token, then five 200s with the token upfront
    assert sum(1 for c in responses.calls if c.response.status_code == 401) == 1


@responses.activate
def test_other_projects_reuse_the_challenge_but_get_their_own_tokens() -> None:
    registry_accepting("t-app", "t-lib")
    responses.add_callback(
        "HEAD",
        url("group/lib"),
        callback=lambda r: (
            (200, {"Docker-Content-Digest": DIGEST}, "")
            if r.headers.get("Authorization") == "Bearer t-lib"
            else (401, CHALLENGE, "")
        ),
    )
    responses.add("GET", REALM, json={"token": "t-app", "expires_in": 300})
    responses.add("GET", REALM, json={"token": "t-lib", "expires_in": 300})
    shared = client()
    shared.for_project("group/app", "s1").head("group/app", "mr-1")
    shared.for_project("group/lib", "s2").head("group/lib", "mr-1")
    assert [c.response.status_code for c in responses.calls] == [401, 200, 200, 200, 200]
    scopes = [parse_qs(urlsplit(c.request.url).query)["scope"] for c in token_calls()]
    assert scopes == [["repository:group/app:pull,push,delete"], ["repository:group/lib:pull,push,delete"]]


@responses.activate
def test_token_is_refetched_once_expires_in_minus_margin_has_passed() -> None:
    clock = Clock()
    registry_accepting("t1", "t2")
    responses.add("GET", REALM, json={"token": "t1", "expires_in": 100})
    responses.add("GET", REALM, json={"token": "t2", "expires_in": 100})
    reg = client(clock, token_margin=30).for_project("group/app", "s")
    reg.head("group/app", "mr-1")
    clock.now = 69.0
    reg.head("group/app", "mr-1")
    assert len(token_calls()) == 1
    clock.now = 70.0
    reg.head("group/app", "mr-1")
    assert len(token_calls()) == 2
    assert responses.calls[-1].request.headers["Authorization"] == "Bearer t2"


@responses.activate
def test_401_on_a_cached_token_refreshes_once() -> None:
    registry_accepting("t2")  # the registry stopped accepting t1 (revoked, clock skew ...)
    responses.add("GET", REALM, json={"token": "t2", "expires_in": 300})
    reg = client().for_project("group/app", "s")
    reg.site.learn_challenge(_response_with(CHALLENGE))
    reg.site.tokens.get(("group/app", "group/app"), lambda: ("t1", 300.0))
    responses.calls.reset()
    assert reg.head("group/app", "mr-1") == DIGEST
    assert len(token_calls()) == 1
    assert responses.calls[-1].request.headers["Authorization"] == "Bearer t2"


@responses.activate
def test_401_after_the_refresh_is_an_auth_error_naming_project_and_repository() -> None:
    responses.add(
        "HEAD",
        url(),
        status=401,
        headers={"WWW-Authenticate": CHALLENGE["WWW-Authenticate"] + ',error="insufficient_scope"'},
    )
    responses.add("GET", REALM, json={"token": "empty-access", "expires_in": 300})
    reg = client().for_project("group/app", "s")
    with pytest.raises(RegistryAuthError) as info:
        reg.head("group/app", "mr-1")
    message = str(info.value)
    assert "group/app" in message and "insufficient_scope" in message
    assert "check the project's registry_token" in message
    assert len(token_calls()) == 1  # a fresh token that is refused is not asked for again


@responses.activate
def test_token_service_refusing_the_credential_is_an_auth_error() -> None:
    responses.add("HEAD", url(), status=401, headers=CHALLENGE)
    responses.add("GET", REALM, status=401, json={"message": "HTTP Basic: Access denied"})
    with pytest.raises(RegistryAuthError, match="check the project's registry_token"):
        client().for_project("group/app", "wrong").head("group/app", "mr-1")


@responses.activate
def test_basic_challenge_is_refused_clearly() -> None:
    responses.add("HEAD", url(), status=401, headers={"WWW-Authenticate": 'Basic realm="registry"'})
    with pytest.raises(RegistryAuthError, match="Bearer"):
        client().for_project("group/app", "s").head("group/app", "mr-1")


@responses.activate
@pytest.mark.parametrize(
    "repo", ["other/app", "group/application", "group/app/../../other/x", "Group/App", "group/app/", ""]
)
def test_out_of_scope_raises_before_any_request(repo: str) -> None:
    reg = client().for_project("group/app", "s")
    with pytest.raises(OutOfScopeError):
        reg.head(repo, "mr-1")
    assert len(responses.calls) == 0


@responses.activate
def test_sub_repositories_are_in_scope() -> None:
    registry_accepting()
    responses.add("HEAD", url("group/app/builder"), status=404)
    assert client().for_project("Group/App", "s").head("group/app/builder", "mr-1") is None


def test_threads_asking_for_the_same_token_fetch_it_once() -> None:
    cache = TokenCache(Clock(), margin=30)
    fetched: list[int] = []
    start = threading.Barrier(8)
    got: list[str] = []

    def fetch() -> tuple[str, float]:
        fetched.append(1)
        return f"t{len(fetched)}", 300.0

    def worker() -> None:
        start.wait()
        got.append(cache.get(("group/app", "group/app"), fetch)[0])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fetched == [1] and got == ["t1"] * 8


def test_challenge_parsing() -> None:
    found = parse_challenge(
        'Bearer realm="https://gl/jwt/auth",service="container_registry",scope="repository:a/b:pull",'
        'error="insufficient_scope"'
    )
    assert found is not None
    assert found.scheme == "bearer"
    assert found.realm == "https://gl/jwt/auth" and found.service == "container_registry"
    assert found.params["scope"] == "repository:a/b:pull"
    assert parse_challenge(None) is None


def _jwt(claims: dict[str, int]) -> str:
    part = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"e30.{part}.sig"


@pytest.mark.parametrize(
    ("answer", "token", "lifetime"),
    [
        ({"expires_in": 300}, "opaque", 300.0),
        ({}, "opaque", 60.0),
        ({}, _jwt({"iat": 1000, "exp": 1900}), 900.0),
        ({"expires_in": 120}, _jwt({"iat": 0, "exp": 900}), 120.0),
    ],
)
def test_token_lifetime(answer: dict[str, int], token: str, lifetime: float) -> None:
    assert token_lifetime(answer, token) == lifetime


@pytest.mark.parametrize(
    ("token", "lifetime"),
    [
        (_jwt({"exp": 1_700_000_300}), 300.0),  # GitLab's answer with no iat: exp against the wall clock
        (_jwt({"iat": 1_699_999_000, "exp": 1_699_999_600}), 600.0),  # the issuer's own clock first
        (_jwt({"exp": 1_699_999_990}), 60.0),  # already past by the janitor's clock: the spec's 60
        ("opaque", 60.0),
    ],
)
def test_token_lifetime_from_exp_against_the_wall_clock(token: str, lifetime: float) -> None:
    assert token_lifetime({}, token, now=1_700_000_000.0) == lifetime


@responses.activate
def test_a_token_service_answering_only_a_token_is_refreshed_before_its_exp() -> None:
    """GitLab's ``JwtController`` answers ``{"token": ...}`` only (no ``expires_in``, no ``issued_at``):
    the lifetime comes from the JWT's ``exp``, and the token is replaced ``margin`` before it ends."""
    wall = 1_700_000_000.0
    clock = Clock()
    first, second = (_jwt({"exp": int(wall) + 300 + n, "n": n}) for n in range(2))
    registry_accepting(first, second)
    responses.add("GET", REALM, json={"token": first})
    responses.add("GET", REALM, json={"token": second})
    reg = client(clock, token_margin=30, wall_clock=lambda: wall + clock.now).for_project("group/app", "s")
    reg.head("group/app", "mr-1")
    clock.now = 269.0
    reg.head("group/app", "mr-1")
    assert len(token_calls()) == 1
    assert responses.calls[-1].request.headers["Authorization"] == f"Bearer {first}"
    clock.now = 270.0  # 30 s before exp: a new token, never a 401 on an expired one
    reg.head("group/app", "mr-1")
    assert len(token_calls()) == 2
    assert responses.calls[-1].request.headers["Authorization"] == f"Bearer {second}"
    assert all(c.response.status_code != 401 for c in responses.calls[1:])


def _response_with(headers: dict[str, str]) -> requests.Response:
    resp = requests.Response()
    resp.status_code = 401
    resp.headers.update(headers)
    return resp


def _jwt(claims: dict[str, object]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJSUzI1NiJ9.{body}.c2ln"


@pytest.mark.parametrize(("access", "granted"), [
    ([{"type": "repository", "name": "group/app", "actions": ["pull", "push", "delete"]}],
     frozenset({"pull", "push", "delete"})),
    ([{"type": "repository", "name": "group/app", "actions": ["pull", "push"]}], frozenset({"pull", "push"})),
    ([{"type": "repository", "name": "group/app", "actions": []}], frozenset()),
    ([{"type": "repository", "name": "group/other", "actions": ["pull", "push", "delete"]}], frozenset()),
    ([{"type": "registry", "name": "catalog", "actions": ["*"]}], frozenset()),
    ([], frozenset()),
])
def test_granted_actions_are_read_from_the_tokens_access_claim(access: list[object], granted: frozenset[str]) -> None:
    """GitLab grants fewer actions than asked for without refusing (``app/services/auth/
    container_registry_authentication_service.rb``): only the JWT's ``access`` claim says what was granted."""
    assert granted_actions(_jwt({"exp": 2, "access": access}), "group/app") == granted


@pytest.mark.parametrize("token", ["opaque-token", _jwt({"exp": 2}), "a.b.c"])
def test_a_token_that_says_nothing_readable_grants_nothing_known(token: str) -> None:
    assert granted_actions(token, "group/app") is None


@responses.activate
def test_a_project_view_reads_its_grants_from_the_token_it_was_issued() -> None:
    token = _jwt({"exp": 10**10, "iat": 0, "access": [
        {"type": "repository", "name": "group/app", "actions": ["pull", "push"]}]})
    responses.get(f"{BASE}/v2/", status=401, headers=CHALLENGE)
    responses.get(f"{BASE}/v2/", status=200)
    responses.get(REALM, json={"token": token})  # GitLab's whole answer: no expires_in, no issued_at
    reg = client().for_project("group/app", "write-registry-token")
    assert reg.granted_actions("group/app") == frozenset({"pull", "push"})
    assert reg.granted_actions("group/app") == frozenset({"pull", "push"})  # cached: asked once
    assert len(token_calls()) == 1
    with pytest.raises(OutOfScopeError):
        reg.granted_actions("group/other")
