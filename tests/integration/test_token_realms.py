"""A project's registry_token goes only to a token service on ``gitlab.url``'s host or in
``registry.token_realms`` (SPEC 14), against the real registry and the GitLab stand-in.

A proxy in front of the real registry stands for a tampered (or misconfigured) registry: while told to, it
rewrites the realm of every challenge to another address on this machine, a recorder that takes whatever
is sent to it. The janitor's registry client is built by ``wiring`` from settings, as the worker's is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
import requests
from flask import Flask, Response, request
from support.gitlab_json import Project
from support.gitlab_standin import GitLabStandin
from support.images import digest_of, push_image, tags
from support.janitor import Janitors, live_entry, make_settings, mr_hook, pipeline_hook
from support.registry import Registry
from support.servers import Recorder, ServerThread

from daemon.execute.executor import ProjectRegistryLike
from daemon.registry import ProjectRegistry, UntagRequest
from daemon.wiring import build_registries

_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive", "host"}
_REALM = re.compile(r'realm="[^"]*"')


@dataclass
class Proxy:
    """The real registry behind a proxy that puts ``realm`` (when set) in every challenge it relays."""

    url: str = ""
    realm: str | None = None
    challenges: list[str] = field(default_factory=list)


def tampering_proxy(registry: Registry, proxy: Proxy) -> Flask:
    app = Flask("tampering-proxy")
    upstream = requests.Session()

    @app.route("/v2/", defaults={"path": ""}, methods=["GET", "HEAD"])
    @app.route("/v2/<path:path>", methods=["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"])
    def forward(path: str) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        answer = upstream.request(request.method, registry.url + request.full_path.rstrip("?"), headers=headers,
                                  data=request.get_data(), allow_redirects=False, timeout=10)
        out = {k.lower(): v for k, v in answer.headers.items() if k.lower() not in _HOP}
        if "location" in out:
            out["location"] = out["location"].replace(registry.url, proxy.url)
        if "www-authenticate" in out:
            if proxy.realm is not None:
                out["www-authenticate"] = _REALM.sub(f'realm="{proxy.realm}"', out["www-authenticate"])
            proxy.challenges.append(out["www-authenticate"])
        return Response(answer.content, answer.status_code, out)

    return app


@pytest.fixture
def proxy(registry: Registry) -> Iterator[Proxy]:
    found = Proxy()
    with ServerThread(tampering_proxy(registry, found), name="tampering-proxy") as server:
        found.url = server.url
        yield found


@pytest.fixture
def thief() -> Iterator[Recorder]:
    """Another port on this machine, answering 200 to anything (as a token thief would)."""
    with Recorder(status=200) as recorder:
        yield recorder


@dataclass
class TokenService:
    """A token service of its own on another port: it passes each request on to GitLab's /jwt/auth."""

    url: str
    seen: list[str]


@pytest.fixture
def token_service(gitlab: GitLabStandin) -> Iterator[TokenService]:
    app = Flask("token-service")
    seen: list[str] = []

    @app.route("/auth")
    def auth() -> Response:
        seen.append(request.headers.get("Authorization", ""))
        answer = requests.get(gitlab.realm, params=request.args, timeout=10,
                              headers={"Authorization": request.headers.get("Authorization", "")})
        return Response(answer.content, answer.status_code, content_type=answer.headers.get("Content-Type"))

    with ServerThread(app, name="token-service") as server:
        yield TokenService(f"{server.url}/auth", seen)


def view_through(proxy: Proxy, registry: Registry, project: Project, gitlab: GitLabStandin,
                 **options: object) -> ProjectRegistry:
    """The project's registry view as the worker gets it from ``wiring`` (``gitlab.url`` the stand-in, the
    registry at the proxy, ``options`` more of the registry section)."""
    settings = make_settings([live_entry(project)], gitlab={"url": gitlab.url},
                             registry={"url": proxy.url, "hostnames": [registry.host], "requests_per_second": 0,
                                       **options})
    view: ProjectRegistryLike | None = build_registries(settings)(project.path, settings.projects[0])
    assert isinstance(view, ProjectRegistry)
    return view


def untag(view: ProjectRegistry, repo: str, tag: str, digest: str) -> tuple[str, str | None]:
    (result,) = view.untag([UntagRequest(repo, tag, digest)], method="placeholder")
    return result.outcome, result.reason


def test_a_challenge_naming_another_port_gets_no_token_and_is_not_remembered(
        registry: Registry, gitlab: GitLabStandin, project: Project, proxy: Proxy, thief: Recorder) -> None:
    """The reproduction: a challenge whose realm is another port on the same machine. The project's token
    is never sent there, the untag fails saying why and what to do, and once the registry names GitLab's
    /jwt/auth again the same client untags (the refused realm was never remembered)."""
    repo = project.path
    digest = push_image(registry, repo, ["mr-1", "main"])
    view = view_through(proxy, registry, project, gitlab)
    proxy.realm = f"{thief.url}/jwt/auth"

    outcome, reason = untag(view, repo, "mr-1", digest)

    assert thief.received() == [], "the project's token went to the realm the challenge named"
    assert outcome == "failed"
    assert reason is not None
    assert reason.startswith(f"token_realm_refused: the registry's token service {thief.url}/jwt/auth is not on "
                             f"gitlab.url's host "
                             f"({urlsplit(gitlab.url).netloc}); add it to registry.token_realms if it is yours")
    assert gitlab.calls["GET /jwt/auth"] == 0
    assert view.site.challenge is None, "the refused realm was remembered"
    assert sorted(tags(registry, repo)) == ["main", "mr-1"]

    proxy.realm = None
    assert untag(view, repo, "mr-1", digest) == ("done", None)
    assert tags(registry, repo) == ["main"] and digest_of(registry, repo, "main") == digest
    challenge = view.site.challenge
    assert challenge is not None and challenge.realm == gitlab.realm
    assert thief.received() == []


def test_a_refused_realm_never_replaces_the_one_known(
        registry: Registry, gitlab: GitLabStandin, project: Project, proxy: Proxy, thief: Recorder) -> None:
    """A client that already knows GitLab's realm meets a challenge naming another one (the cached token
    was refused): that one is refused, the known realm stays, and the next untag still works."""
    repo = project.path
    digest = push_image(registry, repo, ["mr-1", "mr-2", "main"])
    view = view_through(proxy, registry, project, gitlab)
    assert untag(view, repo, "mr-1", digest) == ("done", None)
    key = (project.path, repo)
    token = view.site.tokens.peek(key)
    assert token is not None
    view.site.tokens.invalidate(key, token)
    view.site.tokens.get(key, lambda: ("revoked-token", 300.0))  # the registry answers it 401 with a challenge
    proxy.realm = f"{thief.url}/jwt/auth"

    outcome, reason = untag(view, repo, "mr-2", digest)
    assert outcome == "failed" and reason is not None and "is not on gitlab.url's host" in reason
    assert thief.received() == []
    challenge = view.site.challenge
    assert challenge is not None and challenge.realm == gitlab.realm

    proxy.realm = None
    assert untag(view, repo, "mr-2", digest) == ("done", None)
    assert tags(registry, repo) == ["main"]
    assert thief.received() == []


def test_a_token_service_listed_in_token_realms_gets_the_token(
        registry: Registry, gitlab: GitLabStandin, project: Project, proxy: Proxy,
        token_service: TokenService) -> None:
    """A registry whose token service is not on GitLab's host works once the operator lists it; unlisted,
    the same setup is refused before anything is sent there."""
    repo = project.path
    digest = push_image(registry, repo, ["mr-1", "main"])
    proxy.realm = token_service.url

    unlisted = view_through(proxy, registry, project, gitlab)
    outcome, reason = untag(unlisted, repo, "mr-1", digest)
    assert outcome == "failed" and reason is not None
    assert f"the registry's token service {token_service.url} is not on gitlab.url's host" in reason
    assert token_service.seen == []

    origin = token_service.url.removesuffix("/auth")
    listed = view_through(proxy, registry, project, gitlab, token_realms=[origin])
    assert untag(listed, repo, "mr-1", digest) == ("done", None)
    assert tags(registry, repo) == ["main"]
    assert token_service.seen and all(seen.startswith("Basic ") for seen in token_service.seen)


def test_the_janitor_records_the_refusal_on_the_untag(
        janitor: Janitors, registry: Registry, gitlab: GitLabStandin, project: Project, proxy: Proxy,
        thief: Recorder) -> None:
    """In the worker: the plan's untag fails with the reason, the tag stays, the token stays home."""
    mr_tag = {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}
    j = janitor([live_entry(project, grace_period="1m", tags=[mr_tag])],
                registry={"url": proxy.url, "hostnames": [registry.host], "requests_per_second": 0},
                gitlab={"url": gitlab.url})
    repo = project.path
    push_image(registry, repo, ["mr-3", "main"])
    proxy.realm = f"{thief.url}/jwt/auth"
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=31, ref="feature/t", mr_iid=3))
    j.hook("Merge Request Hook", mr_hook(repo, iid=3, source_branch="feature/t", action="merge"))
    j.tick()
    j.tick(advance=61)

    (recorded,) = j.store.list_untags()
    assert (recorded.tag, recorded.outcome) == ("mr-3", "failed")
    assert recorded.reason is not None and "add it to registry.token_realms if it is yours" in recorded.reason
    assert thief.received() == []
    assert sorted(tags(registry, repo)) == ["main", "mr-3"]

