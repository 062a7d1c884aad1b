"""POST /webhooks/gitlab and /webhooks/registry: auth, durability before 2xx, dedupe, bad input."""

import json

import pytest
from support.janitor import REGISTRY_NOTIFY, SECRET, Clock
from support.payloads import load_payload


def web(janitor, projects=None, **sections):
    """A janitor's test client and store; its app answers like production (JSON errors, not tracebacks)."""
    j = janitor(projects, **sections)
    j.app.testing = False
    return j.client, j.store


def post(client, body, *, token=SECRET, event="Pipeline Hook", content_type="application/json", **headers):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"X-Gitlab-Event": event, **headers}
    if token is not None:
        hdrs["X-Gitlab-Token"] = token
    return client.post("/webhooks/gitlab", data=data, headers=hdrs, content_type=content_type)


def test_authentic_event_is_stored_before_202(janitor):
    c, store = web(janitor)
    r = post(c, load_payload("pipeline_event"))
    assert r.status_code == 202 and r.json["status"] == "stored"
    (event,) = store.pending_events()
    assert event.kind == "pipeline" and event.project_path == "gitlab-org/gitlab-test"
    assert json.loads(event.body)["object_attributes"]["id"] == 31


@pytest.mark.parametrize("headers", [
    {"Idempotency-Key": "3a427872"},
    {"X-Gitlab-Event-UUID": "9cebe914"},
    {},
])
def test_duplicates_answer_200_and_store_once(janitor, headers):
    c, store = web(janitor)
    body = load_payload("merge_request_event_merge")
    body["project"]["path_with_namespace"] = "gitlab-org/gitlab-test"
    assert post(c, body, event="Merge Request Hook", **headers).status_code == 202
    again = post(c, body, event="Merge Request Hook", **headers)
    assert again.status_code == 200 and again.json["status"] == "duplicate"
    assert len(store.pending_events()) == 1


def test_idempotency_key_wins_over_a_changed_body(janitor):
    c, store = web(janitor)
    body = load_payload("pipeline_event")
    assert post(c, body, **{"Idempotency-Key": "same"}).status_code == 202
    body["object_attributes"]["status"] = "running"
    assert post(c, body, **{"Idempotency-Key": "same"}).status_code == 200
    assert len(store.pending_events()) == 1


TWO_PROJECTS = [{"path": "gitlab-org/gitlab-test", "webhook_secret": SECRET},
                {"path": "group/other", "webhook_secret": "other-secret"}]


@pytest.mark.parametrize(("token", "path"), [
    (None, "gitlab-org/gitlab-test"),
    ("wrong", "gitlab-org/gitlab-test"),
    ("other-secret", "gitlab-org/gitlab-test"),  # another configured project's secret
    (SECRET, "group/other"),
])
def test_a_token_of_no_configured_secret_or_of_another_project_is_401(janitor, token, path):
    c, store = web(janitor, TWO_PROJECTS)
    body = load_payload("pipeline_event")
    body["project"]["path_with_namespace"] = path
    r = post(c, body, token=token)
    assert r.status_code == 401 and r.json["error"] == "bad_token" and r.json["message"]
    assert store.pending_events() == []
    assert store.ignored_counts() == []


@pytest.mark.parametrize("token", [SECRET, "other-secret"])
def test_a_signed_event_of_an_unconfigured_project_is_ignored_not_refused(janitor, token):
    c, store = web(janitor, TWO_PROJECTS)
    body = load_payload("pipeline_event")
    body["project"]["path_with_namespace"] = "someone/else"
    r = post(c, body, token=token)
    assert r.status_code == 200
    assert r.json == {"status": "ignored", "kind": "pipeline", "reason": "unconfigured_project"}
    assert store.pending_events() == []
    [counted] = store.ignored_counts()
    assert (counted.reason, counted.count, counted.last_project, counted.last_kind) == (
        "unconfigured_project", 1, "someone/else", "pipeline")


@pytest.mark.parametrize(("body", "content_type", "status", "error"), [
    (b"{not json", "application/json", 400, "malformed_json"),
    (b"[1, 2]", "application/json", 400, "malformed_event"),
    (b"{}", "text/plain", 415, "unsupported_media_type"),
])
def test_bad_input_never_500(janitor, body, content_type, status, error):
    c, _ = web(janitor)
    r = post(c, body, content_type=content_type)
    assert r.status_code == status and r.json["error"] == error


def test_malformed_known_kind_is_400(janitor):
    c, store = web(janitor)
    body = load_payload("pipeline_event")
    del body["object_attributes"]["id"]
    r = post(c, body)
    assert r.status_code == 400 and "object_attributes.id" in r.json["message"]
    assert store.pending_events() == []


def test_oversized_body_is_413(janitor):
    c, _ = web(janitor, server={"max_body_bytes": 1000})
    r = post(c, b"{" + b" " * 2000 + b"}")
    assert r.status_code == 413 and r.json["error"] == "payload_too_large"


def test_other_kinds_are_acknowledged_and_ignored(janitor):
    c, store = web(janitor)
    body = {"object_kind": "note", "project": {"path_with_namespace": "gitlab-org/gitlab-test"}}
    r = post(c, body, event="Note Hook")
    assert r.status_code == 200 and r.json == {"status": "ignored", "kind": "note", "reason": "unused_kind"}
    assert store.pending_events() == []
    assert [(i.reason, i.count) for i in store.ignored_counts()] == [("unused_kind", 1)]


def test_system_hook_push_is_matched_by_project_path(janitor):
    c, store = web(janitor, [{"path": "mike/diaspora", "webhook_secret": SECRET}])
    r = post(c, load_payload("system_hook_push"), event="System Hook")
    assert r.status_code == 202 and store.pending_events()[0].kind == "push"


def test_registry_notifications(janitor):
    c, store = web(janitor)
    envelope = load_payload("registry_notification_pull_v2")
    envelope["events"][0]["action"] = "push"
    hdrs = {"Authorization": f"Bearer {REGISTRY_NOTIFY}"}
    ctype = "application/vnd.docker.distribution.events.v2+json"
    assert c.post("/webhooks/registry", data=json.dumps(envelope), headers=hdrs,
                  content_type=ctype).status_code == 202
    assert [e.source for e in store.pending_events()] == ["registry"]
    bad = c.post("/webhooks/registry", data=json.dumps(envelope),
                 headers={"Authorization": "Bearer nope"}, content_type=ctype)
    assert bad.status_code == 401
    junk = c.post("/webhooks/registry", data="{}", headers=hdrs, content_type=ctype)
    assert junk.status_code == 400


def test_healthz_and_readyz(janitor):
    c, store = web(janitor)
    assert c.get("/healthz").status_code == 200
    r = c.get("/readyz")  # no worker has ever run: the web still takes events
    assert r.status_code == 200 and r.json["worker"] == {"heartbeat_age_seconds": None, "fresh": False}
    store.set_value("worker_heartbeat", "x", Clock().now)
    assert c.get("/readyz").json["worker"] == {"heartbeat_age_seconds": 0.0, "fresh": True}


def test_unknown_route_is_json_404(janitor):
    c, _ = web(janitor)
    r = c.get("/nope")
    assert r.status_code == 404 and r.json["error"] == "not_found"
