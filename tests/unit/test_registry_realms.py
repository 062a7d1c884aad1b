"""A project's registry_token goes only to a token service on ``gitlab.url``'s host or in
``registry.token_realms``, over https unless loopback (SPEC 14); a refused realm is never remembered.

Registry answers come from ``responses``; the real registry behind a tampering proxy is in
tests/integration/test_token_realms.py.
"""

from __future__ import annotations

import base64

import pytest
import requests
import responses

from daemon.config import settings_from_dict
from daemon.domain.names import is_loopback
from daemon.errors import ConfigError
from daemon.registry import RegistryAuthError, RegistryClient, TokenRealmRefusedError
from daemon.registry.realms import TokenRealms, origin
from daemon.wiring import build_registry_client

DIGEST = "sha256:" + "c" * 64


def client(base: str, gitlab_url: str, token_realms: tuple[str, ...] = ()) -> RegistryClient:
    return RegistryClient(base, requests.Session(), gitlab_url=gitlab_url, token_realms=token_realms,
                          sleep=lambda s: None, max_retries=0)


def challenge(realm: str) -> dict[str, str]:
    return {"WWW-Authenticate": f'Bearer realm="{realm}",service="container_registry"'}


def registry(base: str, realm: str, token: str = "t1") -> None:
    """HEAD of group/app:mr-1 answers 200 with ``token``, else 401 naming ``realm``."""

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        if request.headers.get("Authorization") == f"Bearer {token}":
            return 200, {"Docker-Content-Digest": DIGEST}, ""
        return 401, challenge(realm), ""

    responses.add_callback("HEAD", f"{base}/v2/group/app/manifests/mr-1", callback=answer)


def sent_to(prefix: str) -> list[responses.Call]:
    return [c for c in responses.calls if c.request.url and c.request.url.startswith(prefix)]


def basic_password(call: responses.Call) -> str:
    return base64.b64decode(call.request.headers["Authorization"].removeprefix("Basic ")).decode().split(":", 1)[1]


# --- GitLab's own token service ------------------------------------------------------------------------

@responses.activate
def test_gitlab_com_registry_on_its_own_host_sends_the_token_to_gitlab_com() -> None:
    """registry.gitlab.com names https://gitlab.com/jwt/auth: gitlab.url's host, whatever the registry's."""
    registry("https://registry.gitlab.com", "https://gitlab.com/jwt/auth")
    responses.add("GET", "https://gitlab.com/jwt/auth", json={"token": "t1"})
    view = client("https://registry.gitlab.com", "https://gitlab.com").for_project("group/app", "glpat-app")
    assert view.head("group/app", "mr-1") == DIGEST
    (call,) = sent_to("https://gitlab.com/jwt/auth")
    assert basic_password(call) == "glpat-app"


@responses.activate
def test_self_managed_registry_on_another_host_and_port_names_gitlabs_realm() -> None:
    """A self-managed GitLab whose registry has a host (and port) of its own: the realm is still GitLab's."""
    base = "https://registry.example.com:5050"
    registry(base, "https://gitlab.example.com/jwt/auth")
    responses.add("GET", "https://gitlab.example.com/jwt/auth", json={"token": "t1"})
    view = client(base, "https://gitlab.example.com").for_project("group/app", "glpat-app")
    assert view.head("group/app", "mr-1") == DIGEST
    assert len(sent_to("https://gitlab.example.com/jwt/auth")) == 1


@pytest.mark.parametrize("realm", [
    "https://gitlab.example.com:443/jwt/auth",  # the default port, written out
    "https://GitLab.Example.COM/jwt/auth",  # host names are case-insensitive
    "https://gitlab.example.com/other/path",  # the origin counts, not the path
])
def test_the_same_origin_written_otherwise_is_gitlabs(realm: str) -> None:
    assert TokenRealms("https://gitlab.example.com").refusal(realm) is None


def test_gitlab_under_a_relative_url_root_keeps_its_realm() -> None:
    assert TokenRealms("https://example.com/gitlab").refusal("https://example.com/gitlab/jwt/auth") is None


# --- refused realms ------------------------------------------------------------------------------------

REFUSED_NOT_GITLABS = [
    "https://gitlab.example.com:8443/jwt/auth",  # another port of GitLab's host
    "https://registry.example.com/jwt/auth",  # the registry's own host: not listed
    "https://gitlab.example.com.evil.test/jwt/auth",
    "https://evil.test/jwt/auth?next=https://gitlab.example.com",
    "https://evil.test/gitlab.example.com/jwt/auth",
]
REFUSED_NOT_PLAIN = [
    "https://gitlab.example.com@evil.test/jwt/auth",  # user info: the host is evil.test
    "https://user:pass@gitlab.example.com/jwt/auth",
    "https://evil.test\\@gitlab.example.com/jwt/auth",
    "/jwt/auth",
    "ftp://gitlab.example.com/jwt/auth",
    "https://gitlab.example.com:99999/jwt/auth",
]


@responses.activate
@pytest.mark.parametrize("realm", REFUSED_NOT_GITLABS + REFUSED_NOT_PLAIN + ["http://gitlab.example.com/jwt/auth"])
def test_a_realm_off_gitlabs_origin_gets_nothing_and_is_not_remembered(realm: str) -> None:
    base = "https://registry.example.com:5050"
    registry(base, realm)
    view = client(base, "https://gitlab.example.com").for_project("group/app", "glpat-app")
    with pytest.raises(TokenRealmRefusedError) as refused:
        view.head("group/app", "mr-1")
    assert isinstance(refused.value, RegistryAuthError) and refused.value.realm == realm
    assert [c.request.url for c in responses.calls] == [f"{base}/v2/group/app/manifests/mr-1"]
    assert "glpat-app" not in str(refused.value)
    assert view.site.challenge is None


@pytest.mark.parametrize("realm", REFUSED_NOT_GITLABS)
def test_the_refusal_names_the_realm_gitlabs_host_and_the_fix(realm: str) -> None:
    assert TokenRealms("https://gitlab.example.com").refusal(realm) == (
        f"the registry's token service {realm} is not on gitlab.url's host (gitlab.example.com); add it to "
        "registry.token_realms if it is yours (the project's registry_token was not sent to it)")


def test_the_refusal_names_a_port_that_is_not_the_default() -> None:
    why = TokenRealms("http://127.0.0.1:8929").refusal("http://127.0.0.1:9000/jwt/auth")
    assert why is not None and "is not on gitlab.url's host (127.0.0.1:8929)" in why


@pytest.mark.parametrize("realm", REFUSED_NOT_PLAIN)
def test_a_realm_that_is_not_a_plain_url_is_refused_as_such(realm: str) -> None:
    why = TokenRealms("https://gitlab.example.com", ["https://evil.test"]).refusal(realm)
    assert why is not None and "is not an http(s) URL with a plain host name" in why


@pytest.mark.parametrize(("gitlab_url", "realm"), [
    ("http://gitlab.example.com", "http://gitlab.example.com/jwt/auth"),  # gitlab.url itself plain http
    ("http://10.0.0.7:8080", "http://10.0.0.7:8080/jwt/auth"),
])
def test_plain_http_off_loopback_is_refused_even_on_gitlabs_origin(gitlab_url: str, realm: str) -> None:
    why = TokenRealms(gitlab_url).refusal(realm)
    assert why is not None
    assert f"{realm} is plain http to a host that is not loopback" in why and "only over https" in why


@pytest.mark.parametrize(("gitlab_url", "realm"), [
    ("http://127.0.0.1:8929", "http://127.0.0.1:8929/jwt/auth"),
    ("http://127.8.9.10:8929", "http://127.8.9.10:8929/jwt/auth"),
    ("http://localhost:8929", "http://localhost:8929/jwt/auth"),
    ("http://[::1]:8929", "http://[::1]:8929/jwt/auth"),
])
def test_plain_http_to_loopback_is_allowed(gitlab_url: str, realm: str) -> None:
    assert TokenRealms(gitlab_url).refusal(realm) is None


def test_loopback_and_origins() -> None:
    assert [is_loopback(h) for h in ("127.0.0.1", "127.255.0.1", "::1", "LOCALHOST", "10.0.0.1", "localhost.evil",
                                      "0.0.0.0", "gitlab.com")] == [True, True, True, True, False, False, False, False]
    assert origin("https://GitLab.com/jwt/auth") == ("https", "gitlab.com", 443)
    assert origin("http://[::1]:5000/x") == ("http", "::1", 5000)
    assert origin("https://a@b.test/") is None and origin("https://b.test:x/") is None and origin("b.test") is None


# --- registry.token_realms -----------------------------------------------------------------------------

@pytest.mark.parametrize("listed", ["https://auth.example.com", "https://auth.example.com/jwt/auth",
                                    "https://auth.example.com:443/"])
def test_a_listed_realm_is_allowed_by_its_origin(listed: str) -> None:
    realms = TokenRealms("https://gitlab.example.com", [listed])
    assert realms.refusal("https://auth.example.com/token") is None
    assert realms.refusal("https://auth.example.com:8443/token") is not None
    assert realms.refusal("https://gitlab.example.com/jwt/auth") is None


def test_a_listed_plain_http_realm_off_loopback_is_still_refused() -> None:
    """Config refuses it at load; the client refuses it too, whoever builds it."""
    why = TokenRealms("https://gitlab.example.com", ["http://auth.example.com"]).refusal("http://auth.example.com/t")
    assert why is not None and "only over https" in why


@responses.activate
def test_a_listed_token_service_gets_the_token() -> None:
    base = "https://registry.example.com"
    registry(base, "https://auth.example.com/token")
    responses.add("GET", "https://auth.example.com/token", json={"token": "t1"})
    view = client(base, "https://gitlab.example.com", ("https://auth.example.com",)).for_project("group/app", "s")
    assert view.head("group/app", "mr-1") == DIGEST
    (call,) = sent_to("https://auth.example.com/token")
    assert basic_password(call) == "s"


@pytest.mark.parametrize(("realm", "why"), [
    ("http://auth.example.com", "must use https (plain http only to a loopback address"),
    ("https://user@auth.example.com", "must be a plain URL"),
    ("auth.example.com", "is not an http(s) URL"),
    ("https://auth.example.com:70000", "is not a URL"),
])
def test_config_refuses_a_token_realm_the_credential_could_not_go_to(realm: str, why: str) -> None:
    with pytest.raises(ConfigError) as refused:
        settings_from_dict({"registry": {"token_realms": [realm]}}, environ={})
    (problem,) = refused.value.problems
    assert problem.startswith("registry.token_realms: ") and repr(realm) in problem and why in problem


def test_config_takes_https_and_loopback_token_realms() -> None:
    realms = ["https://auth.example.com", "http://127.0.0.1:8929/jwt/auth", "http://localhost:3000"]
    settings = settings_from_dict({"registry": {"token_realms": realms}}, environ={})
    assert settings.registry.token_realms == tuple(realms)
    assert settings_from_dict({}, environ={}).registry.token_realms == ()


def test_the_wiring_passes_gitlab_url_and_token_realms_to_the_client() -> None:
    settings = settings_from_dict({"gitlab": {"url": "https://gitlab.example.com"},
                                   "registry": {"url": "https://registry.example.com",
                                                "token_realms": ["https://auth.example.com"]}}, environ={})
    realms = build_registry_client(settings).site.realms
    assert realms.refusal("https://gitlab.example.com/jwt/auth") is None
    assert realms.refusal("https://auth.example.com/token") is None
    assert realms.refusal("https://registry.example.com/jwt/auth") is not None
    alone = build_registry_client(settings_from_dict({"gitlab": {"url": "https://gitlab.example.com"}},
                                                     environ={})).site.realms
    assert alone.refusal("https://auth.example.com/token") is not None


# --- never remembered, never followed ------------------------------------------------------------------

@responses.activate
def test_a_refused_challenge_is_not_remembered_and_a_correct_one_then_works() -> None:
    base = "https://registry.example.com"
    mr1 = f"{base}/v2/group/app/manifests/mr-1"
    responses.add("HEAD", mr1, status=401, headers=challenge("https://evil.test/jwt/auth"))
    responses.add("HEAD", mr1, status=401, headers=challenge("https://gitlab.example.com/jwt/auth"))
    responses.add("HEAD", mr1, status=200, headers={"Docker-Content-Digest": DIGEST})
    responses.add("GET", "https://gitlab.example.com/jwt/auth", json={"token": "t1"})
    view = client(base, "https://gitlab.example.com").for_project("group/app", "s")
    with pytest.raises(TokenRealmRefusedError):
        view.head("group/app", "mr-1")
    assert view.site.challenge is None
    assert view.head("group/app", "mr-1") == DIGEST
    challenge_now = view.site.challenge
    assert challenge_now is not None and challenge_now.realm == "https://gitlab.example.com/jwt/auth"
    assert sent_to("https://evil.test") == []


@responses.activate
def test_a_refused_challenge_keeps_the_known_one() -> None:
    base = "https://registry.example.com"
    mr1 = f"{base}/v2/group/app/manifests/mr-1"
    good = "https://gitlab.example.com/jwt/auth"
    responses.add("HEAD", mr1, status=401, headers=challenge(good))
    responses.add("HEAD", mr1, status=200, headers={"Docker-Content-Digest": DIGEST})
    responses.add("HEAD", mr1, status=401, headers=challenge("https://gitlab.example.com:4443/jwt/auth"))
    responses.add("HEAD", mr1, status=200, headers={"Docker-Content-Digest": DIGEST})
    responses.add("GET", good, json={"token": "t1"})
    responses.add("GET", good, json={"token": "t2"})
    view = client(base, "https://gitlab.example.com").for_project("group/app", "s")
    assert view.head("group/app", "mr-1") == DIGEST
    with pytest.raises(TokenRealmRefusedError):
        view.head("group/app", "mr-1")  # t1 refused, and the new challenge names another port
    known = view.site.challenge
    assert known is not None and known.realm == good
    assert view.head("group/app", "mr-1") == DIGEST  # a fresh token from GitLab's realm
    assert len(sent_to(good)) == 2 and sent_to("https://gitlab.example.com:4443") == []
    assert responses.calls[-1].request.headers["Authorization"] == "Bearer t2"


@responses.activate
def test_a_token_service_redirect_is_not_followed() -> None:
    base = "https://registry.example.com"
    realm = "https://gitlab.example.com/jwt/auth"
    registry(base, realm)
    responses.add("GET", realm, status=302, headers={"Location": "https://evil.test/jwt/auth"})
    responses.add("GET", "https://evil.test/jwt/auth", json={"token": "t1"})
    view = client(base, "https://gitlab.example.com").for_project("group/app", "s")
    with pytest.raises(RegistryAuthError) as refused:
        view.head("group/app", "mr-1")
    assert "the token service https://gitlab.example.com/jwt/auth redirected to 'https://evil.test/jwt/auth'" in str(
        refused.value)
    assert sent_to("https://evil.test") == []
