"""Retries against error sequences a real registry will not produce on demand (``responses``, no sleeping).

429 honours Retry-After (seconds and HTTP date), 5xx and connection errors back off with full jitter up to
``max_retries``, then ``TransientRegistryError``; every registry request passes the limiter.
"""

from __future__ import annotations

import email.utils
import random

import pytest
import requests
import responses

from daemon.registry import RateLimiter, RegistryClient, TransientRegistryError
from daemon.registry.transport import retry_after_seconds

BASE = "https://registry.test"
DIGEST = "sha256:" + "a" * 64
URL = f"{BASE}/v2/group/app/manifests/mr-1"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class CountingLimiter(RateLimiter):
    def __init__(self) -> None:
        super().__init__(rate=0, burst=1)
        self.count = 0

    def acquire(self) -> None:
        self.count += 1


def make(clock: Clock, **kw: object) -> RegistryClient:
    return RegistryClient(
        BASE,
        requests.Session(),
        gitlab_url="https://gitlab.test",
        sleep=clock.sleep,
        clock=clock.clock,
        rng=random.Random(7),
        **kw,  # type: ignore[arg-type]
    )


def ok_head() -> dict[str, object]:
    return {"status": 200, "headers": {"Docker-Content-Digest": DIGEST}}


@responses.activate
def test_429_with_retry_after_seconds_is_honoured() -> None:
    clock = Clock()
    responses.add("HEAD", URL, status=429, headers={"Retry-After": "3"})
    responses.add("HEAD", URL, **ok_head())  # type: ignore[arg-type]
    reg = make(clock).for_project("group/app", "secret")
    assert reg.head("group/app", "mr-1") == DIGEST
    assert clock.sleeps == [3.0]


@responses.activate
def test_429_with_http_date_is_honoured_against_the_wall_clock() -> None:
    clock = Clock()
    wall = 1_700_000_000.0
    responses.add("HEAD", URL, status=429, headers={"Retry-After": email.utils.formatdate(wall + 7, usegmt=True)})
    responses.add("HEAD", URL, **ok_head())  # type: ignore[arg-type]
    reg = make(clock, wall_clock=lambda: wall).for_project("group/app", "secret")
    assert reg.head("group/app", "mr-1") == DIGEST
    assert clock.sleeps == [pytest.approx(7.0)]


@responses.activate
def test_429_with_retry_after_beyond_the_limit_fails_without_sleeping() -> None:
    clock = Clock()
    responses.add("HEAD", URL, status=429, headers={"Retry-After": "3600"})
    reg = make(clock).for_project("group/app", "secret")
    with pytest.raises(TransientRegistryError, match="Retry-After 3600s") as info:
        reg.head("group/app", "mr-1")
    assert info.value.status == 429
    assert clock.sleeps == []


@responses.activate
def test_429_forever_becomes_transient_after_max_retries() -> None:
    clock = Clock()
    responses.add("HEAD", URL, status=429)
    reg = make(clock, max_retries=3).for_project("group/app", "secret")
    with pytest.raises(TransientRegistryError, match="still rate limited"):
        reg.head("group/app", "mr-1")
    assert len(responses.calls) == 4
    assert len(clock.sleeps) == 3


@responses.activate
def test_503_then_200_retries_with_jittered_backoff() -> None:
    clock = Clock()
    responses.add("HEAD", URL, status=503)
    responses.add("HEAD", URL, status=502)
    responses.add("HEAD", URL, **ok_head())  # type: ignore[arg-type]
    reg = make(clock, backoff_base=0.5, backoff_cap=10).for_project("group/app", "secret")
    assert reg.head("group/app", "mr-1") == DIGEST
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 0.5
    assert 0 <= clock.sleeps[1] <= 1.0


@responses.activate
def test_503_with_retry_after_waits_as_told() -> None:
    clock = Clock()
    responses.add("HEAD", URL, status=503, headers={"Retry-After": "2"})
    responses.add("HEAD", URL, **ok_head())  # type: ignore[arg-type]
    assert make(clock).for_project("group/app", "secret").head("group/app", "mr-1") == DIGEST
    assert clock.sleeps == [2.0]


@responses.activate
def test_5xx_forever_is_transient_and_backoff_stays_under_the_cap() -> None:
    clock = Clock()
    responses.add("GET", URL, status=500, json={"errors": [{"code": "UNKNOWN", "message": "boom"}]})
    reg = make(clock, max_retries=6, backoff_base=1, backoff_cap=2).for_project("group/app", "secret")
    with pytest.raises(TransientRegistryError, match="HTTP 500 UNKNOWN after 7 attempts") as info:
        reg.get_manifest("group/app", "mr-1")
    assert info.value.codes == ("UNKNOWN",)
    assert len(clock.sleeps) == 6
    assert all(0 <= s <= 2 for s in clock.sleeps)


@responses.activate
def test_connection_error_then_success() -> None:
    clock = Clock()
    responses.add("HEAD", URL, body=requests.ConnectionError("refused"))
    responses.add("HEAD", URL, **ok_head())  # type: ignore[arg-type]
    reg = make(clock).for_project("group/app", "secret")
    assert reg.head("group/app", "mr-1") == DIGEST
    assert len(clock.sleeps) == 1


@responses.activate
def test_connection_errors_forever_become_transient() -> None:
    clock = Clock()
    responses.add("HEAD", URL, body=requests.ConnectionError("refused"))
    reg = make(clock, max_retries=2).for_project("group/app", "secret")
    with pytest.raises(TransientRegistryError, match=r"^registry unreachable at https://registry\.test: ") as info:
        reg.head("group/app", "mr-1")
    assert info.value.code == "registry_unreachable" and isinstance(info.value.__cause__, requests.ConnectionError)


@responses.activate
def test_every_registry_request_passes_the_limiter_including_retries_but_not_token_requests() -> None:
    clock = Clock()
    limiter = CountingLimiter()
    realm = "https://gitlab.test/jwt/auth"
    challenge = {"WWW-Authenticate": f'Bearer realm="{realm}",service="container_registry"'}
    responses.add("HEAD", URL, status=401, headers=challenge)
    responses.add("GET", realm, json={"token": "t1", "expires_in": 300})
    responses.add("HEAD", URL, status=503)
    responses.add("HEAD", URL, **ok_head())  # type: ignore[arg-type]
    reg = make(clock, limiter=limiter).for_project("group/app", "secret")
    assert reg.head("group/app", "mr-1") == DIGEST
    assert limiter.count == 3  # 401, 503, 200: the token request is not the registry's
    assert len(responses.calls) == 4


@responses.activate
def test_observer_sees_every_answer() -> None:
    clock = Clock()
    seen: list[tuple[str, int]] = []
    responses.add("HEAD", URL, status=503)
    responses.add("HEAD", URL, **ok_head())  # type: ignore[arg-type]
    reg = make(clock, observer=lambda m, s, _t: seen.append((m, s))).for_project("group/app", "secret")
    reg.head("group/app", "mr-1")
    assert seen == [("HEAD", 503), ("HEAD", 200)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("5", 5.0),
        ("soon", None),
        ("Thu, 01 Jan 1970 00:00:10 GMT", 10.0),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ],
)
def test_retry_after_parsing(value: str | None, expected: float | None) -> None:
    assert retry_after_seconds(value, now=0.0) == expected


@responses.activate
def test_tag_listing_follows_link_pages_and_counts_unknown_repositories_as_empty() -> None:
    clock = Clock()
    listing = f"{BASE}/v2/group/app/tags/list"
    responses.add(
        "GET",
        listing,
        json={"name": "group/app", "tags": ["a", "b"]},
        headers={"Link": '</v2/group/app/tags/list?last=b&n=1000>; rel="next"'},
        match=[responses.matchers.query_param_matcher({"n": "1000"})],
    )
    responses.add(
        "GET",
        listing,
        json={"name": "group/app", "tags": ["c"]},
        match=[responses.matchers.query_param_matcher({"n": "1000", "last": "b"})],
    )
    responses.add(
        "GET", f"{BASE}/v2/group/app/empty/tags/list", status=404, json={"errors": [{"code": "NAME_UNKNOWN"}]}
    )
    reg = make(clock).for_project("group/app", "secret")
    assert reg.list_tags("group/app") == ["a", "b", "c"]
    assert reg.tag_count("group/app/empty") == 0
