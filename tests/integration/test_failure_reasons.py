"""Failure reasons people can read: a stored reason is ``<code>: <one sentence>``, never a library's repr;
the dashboard shows it once (under Failures; Recent untags links there by its code); the whole exception
is in the worker's log at WARNING with the untag and plan ids. Real sockets stand for each way a registry
can fail to answer: a closed port, a name no DNS resolves, a server that never answers, plain http where
TLS was expected."""

from __future__ import annotations

import http.server
import logging
import re
import socket
import threading
from collections.abc import Iterator

import pytest
import requests
from support.images import push_image, tags
from support.janitor import ADMIN, Harness, mr_hook, pipeline_hook
from support.ops import BEARER, live_janitor

from daemon.registry.failures import connection_failure, failure_reason

GRACE = 15 * 60
UNREACHABLE = re.compile(
    r"^registry_unreachable: registry unreachable at http://127\.0\.0\.1:(\d+): connection refused$")
REPRS = ("HTTPConnectionPool", "object at 0x", "NewConnectionError", "MaxRetryError", "Errno")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_registry_at(janitor, j: Harness, url: str) -> Harness:
    """A worker over ``j``'s storage (and clock) whose registry is at ``url``."""
    reg = j.settings.registry.model_copy(update={"url": url})
    return janitor(settings=j.settings.model_copy(update={"registry": reg}), clock=j.clock)


def merged(j: Harness, repo: str) -> int:
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=101, ref="feature/42", mr_iid=42))
    j.tick()
    j.hook("Merge Request Hook", mr_hook(repo, iid=42, source_branch="feature/42", action="merge"))
    j.tick()
    (plan,) = j.store.list_plans(state="scheduled", project_path=repo)
    return plan.id


def dashboard(j: Harness) -> str:
    response = j.client.get("/dashboard", auth=("ops", ADMIN))
    assert response.status_code == 200
    return str(response.get_data(as_text=True))


def test_an_unreachable_registry_is_one_readable_reason_shown_once(janitor, registry, project, caplog):
    j = live_janitor(janitor, registry, project)
    push_image(registry, project.path, ["mr-42", "mr-42-debug", "keep"])
    plan_id = merged(j, project.path)
    port = closed_port()
    down = with_registry_at(janitor, j, f"http://127.0.0.1:{port}")

    with caplog.at_level(logging.WARNING, logger="daemon.execute.executor"):
        down.tick(advance=GRACE + 1)

    untags = j.store.plan_untags(plan_id)
    assert {u.outcome for u in untags} == {"failed"}
    for u in untags:
        match = UNREACHABLE.match(u.reason or "")
        assert match and int(match.group(1)) == port, u.reason
    api = j.client.get("/api/v1/untags?outcome=failed", headers=BEARER).get_json()["untags"]
    assert {u["reason"] for u in api} == {untags[0].reason}

    html = dashboard(j)
    for text in REPRS:
        assert text not in html, f"{text} shown on the dashboard"
    assert html.count(untags[0].reason) == len(untags), "each untag's reason shows once, under Failures"
    for u in untags:
        failure = re.search(rf'<section id="failures">.*?<tr data-untag="{u.id}">(.*?)</tr>', html, re.S)
        assert failure and u.reason in failure.group(1)
        recent = re.search(rf'<section id="recent">.*?<tr data-untag="{u.id}">(.*?)</tr>', html, re.S)
        assert recent and 'href="#failures"' in recent.group(1) and ">registry_unreachable</a>" in recent.group(1)
        assert "connection refused" not in recent.group(1)

    for u in untags:  # the detail, with the library's own words, is in the log
        (line,) = [r for r in caplog.records if r.levelno == logging.WARNING
                   and r.getMessage().startswith(f"untag {u.id} of plan {plan_id} ")]
        assert "HTTPConnectionPool" in line.getMessage() and "Connection refused" in line.getMessage()
        assert u.reason in line.getMessage()

    for u in untags:  # through the janitor whose registry answers: retried, the untags are done
        assert j.client.post(f"/api/v1/untags/{u.id}/retry", headers=BEARER).status_code == 202
    j.tick()
    assert sorted(tags(registry, project.path)) == ["keep"]
    assert "registry_unreachable" not in dashboard(j)


def test_a_restore_against_an_unreachable_registry_fails_readably(janitor, registry, project, caplog):
    j = live_janitor(janitor, registry, project)
    push_image(registry, project.path, ["mr-42", "mr-42-debug"])
    plan_id = merged(j, project.path)
    j.tick(advance=GRACE + 1)
    done = next(u for u in j.store.plan_untags(plan_id) if u.tag == "mr-42")
    assert done.outcome == "done"
    down = with_registry_at(janitor, j, f"http://127.0.0.1:{closed_port()}")

    response = j.client.post(f"/api/v1/untags/{done.id}/restore", headers=BEARER)
    assert response.status_code == 202
    with caplog.at_level(logging.WARNING, logger="daemon.execute.operator"):
        down.tick()
    body = j.client.get(response.headers["Location"], headers=BEARER).get_json()
    reason = body["request"]["reason"]
    assert body["request"]["state"] == "failed"
    assert re.match(r"^registry_unreachable: registry unreachable at http://127\.0\.0\.1:\d+: connection refused; "
                    r"it may be back shortly: ask for the restore again$", reason), reason
    assert not any(text in dashboard(j) for text in REPRS)
    assert any(f"restore of untag {done.id}" in r.getMessage() and "HTTPConnectionPool" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


# each way of getting no answer, from real sockets -------------------------------------------------------
@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


@pytest.fixture
def plain_http_port() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_port)
    server.shutdown()
    server.server_close()


def failure_of(url: str, timeout: float = 2.0) -> requests.RequestException:
    with pytest.raises(requests.RequestException) as info:
        requests.get(url, timeout=timeout)
    return info.value


def test_refused_timeout_tls_and_dns_each_read_as_one_sentence(silent_port, plain_http_port):
    refused = f"http://127.0.0.1:{closed_port()}/v2/"
    assert connection_failure(failure_of(refused), refused) == (
        "registry_unreachable", f"registry unreachable at {refused[:-4]}: connection refused")
    silent = f"http://127.0.0.1:{silent_port}/v2/"
    assert connection_failure(failure_of(silent, 0.3), silent, timeout=0.3) == (
        "registry_timeout", f"registry at {silent[:-4]} timed out: no answer within 0.3s")
    tls = f"https://127.0.0.1:{plain_http_port}/v2/"
    code, text = connection_failure(failure_of(tls), tls)
    assert code == "registry_tls_error" and text.startswith(f"registry at {tls[:-4]}: TLS failed: "), text
    nowhere = "http://registry.invalid:5000/v2/"
    assert connection_failure(failure_of(nowhere), nowhere, server="token service") == (
        "token_service_unreachable",
        "token service unreachable at http://registry.invalid:5000: host name registry.invalid could not be "
        "resolved (DNS)")
    for exc in (failure_of(refused), failure_of(silent, 0.3), failure_of(tls)):
        reason = failure_reason(exc)
        assert re.match(r"^registry_[a-z_]+: registry", reason) and not any(t in reason for t in REPRS), reason


def test_an_unexpected_exception_never_stores_its_repr():
    class Odd(Exception):
        pass

    assert failure_reason(Odd("<urllib3.connection.HTTPConnection object at 0x7f00>: boom")) == \
        "unexpected_error: Odd (the worker's log has the details)"
    assert failure_reason(Odd("disk full\n  while writing")) == "unexpected_error: disk full while writing"
