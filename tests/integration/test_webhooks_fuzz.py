"""Whatever a client sends to any route (webhooks, CI, the admin API, the dashboard's forms), the answer
is never a 5xx, an API's 4xx is a JSON error, and the worker afterwards ticks through whatever the web
stored: nothing stays stuck in the inbox."""

import json
import re
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.janitor import ADMIN, REGISTRY_NOTIFY, SECRET, Clock, make_settings, make_store
from support.ops import ops_projects, seed
from support.payloads import load_payload

from daemon.domain.model import Job
from daemon.errors import JobTokenError
from daemon.wiring import build_app, build_worker

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
KINDS = ["Pipeline Hook", "Merge Request Hook", "Push Hook", "Tag Push Hook", "System Hook", "Note Hook", ""]


def _mutations():
    """Documented payloads with one field replaced by anything."""
    names = ["pipeline_event", "merge_request_event_merge", "push_event_branch_delete", "system_hook_push"]
    return st.tuples(st.sampled_from(names), st.sampled_from(["object_attributes", "project", "ref", "after",
                                                              "merge_request", "commits"]), json_values)


def _app(tmp_path_factory):
    store = make_store(tmp_path_factory.mktemp("fuzz"))
    settings_ = make_settings([{"path": "gitlab-org/gitlab-test", "webhook_secret": SECRET},
                               {"path": "gitlabhq/gitlab-test", "webhook_secret": SECRET},
                               {"path": "mike/diaspora", "webhook_secret": SECRET}])
    return build_app(settings_, store, clock=Clock()).test_client()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=_mutations(), kind=st.sampled_from(KINDS))
def test_mutated_payloads_never_500(tmp_path_factory, mutation, kind):
    client = _app(tmp_path_factory)
    name, field, value = mutation
    body = load_payload(name)
    body[field] = value
    r = client.post("/webhooks/gitlab", data=json.dumps(body), content_type="application/json",
                    headers={"X-Gitlab-Token": SECRET, "X-Gitlab-Event": kind})
    assert r.status_code in (200, 202, 400, 401), r.get_data()
    assert r.is_json and set(r.get_json()) >= ({"error", "message"} if r.status_code >= 400 else {"status"})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bodies_never_500(tmp_path_factory, body):
    client = _app(tmp_path_factory)
    for route, headers in (("/webhooks/gitlab", {"X-Gitlab-Token": SECRET}),
                           ("/webhooks/registry", {"Authorization": f"Bearer {REGISTRY_NOTIFY}"})):
        r = client.post(route, data=body, content_type="application/json", headers=headers)
        assert r.status_code in (200, 202, 400, 401), (route, r.get_data())
        assert r.is_json


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(_mutations(), min_size=1, max_size=5))
def test_the_worker_digests_whatever_the_web_accepted(tmp_path_factory, mutations):
    path = tmp_path_factory.mktemp("fuzzw")
    store = make_store(path)
    settings_ = make_settings([{"path": p, "webhook_secret": SECRET, "tags": [
        {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}]}
        for p in ("gitlab-org/gitlab-test", "gitlabhq/gitlab-test", "mike/diaspora")])
    client = build_app(settings_, store, clock=Clock()).test_client()
    for name, field, value in mutations:
        body = load_payload(name)
        body[field] = value
        client.post("/webhooks/gitlab", data=json.dumps(body), content_type="application/json",
                    headers={"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "System Hook"})
    build_worker(settings_, store, clock=Clock()).tick()  # must not raise
    assert store.pending_events() == []  # nothing stuck behind an event the ledger cannot use
    store.close()


# -- hostile shapes, on every route ----------------------------------------------------------------------

HOSTILE_TEXT = ["../../../etc/passwd", "a\nCRITICAL forged", "\r\n\x1b[2J", "x" * 5000, "", "grp/*", "..",
                "refs/merge-requests/99999999999999999999/head", "\u2028", "\x00", "%2e%2e%2f"]
hostile_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64, 2**70, 1.0, 1e300, 10**30])
    | st.floats() | st.text(max_size=20) | st.sampled_from(HOSTILE_TEXT)
)
hostile_values = st.recursive(
    hostile_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
) | st.integers(min_value=1, max_value=40).map(lambda depth: _nested(depth))
FIELDS = {
    "pipeline_event": [("object_attributes", "id"), ("object_attributes", "iid"), ("object_attributes", "ref"),
                       ("object_attributes", "sha"), ("object_attributes", "status"), ("object_attributes", "tag"),
                       ("object_attributes", "created_at"), ("project", "id"), ("project", "default_branch"),
                       ("project", "path_with_namespace"), ("merge_request",), ("merge_request", "iid"),
                       ("merge_request", "source_branch"), ("merge_request", "source_project_id"), ("builds",)],
    "merge_request_event_merge": [("object_attributes", "iid"), ("object_attributes", "source_branch"),
                                  ("object_attributes", "state"), ("object_attributes", "action"),
                                  ("object_attributes", "source_project_id"),
                                  ("object_attributes", "target_project_id"),
                                  ("project",), ("project", "default_branch"), ("object_kind",)],
    "push_event_branch_delete": [("ref",), ("after",), ("project",), ("project", "default_branch"),
                                 ("project", "path_with_namespace"), ("event_name",)],
}
KIND_OF = {"pipeline_event": "Pipeline Hook", "merge_request_event_merge": "Merge Request Hook",
           "push_event_branch_delete": "Push Hook"}
PROJECTS = ("gitlab-org/gitlab-test", "gitlabhq/gitlab-test", "mike/diaspora")


def _nested(depth):
    value = "x"
    for n in range(depth):
        value = [value] if n % 2 else {"k": value}
    return value


def _put(body, path, value):
    node = body
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def _is_json_error(response) -> bool:
    return response.is_json and set(response.get_json()) >= {"error", "message"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One janitor for a module's examples: its app (GitLab vouching for one job), worker and store."""
    store = make_store(tmp_path_factory.mktemp("hostile"))
    settings_ = make_settings(
        [{"path": p, "webhook_secret": SECRET, "tags": [{"pattern": "mr-$CI_MERGE_REQUEST_IID",
                                                         "lifetime": "merge_request"}]} for p in PROJECTS],
        registry={"url": "http://127.0.0.1:9", "hostnames": ["registry.test"]})
    clock = Clock()
    app = build_app(settings_, store, clock=clock, verifier=_Jobs())
    worker = build_worker(settings_, store, clock=clock)
    yield app.test_client(), worker, store
    store.close()


class _Jobs:
    def verify_job(self, job_token):
        if job_token != "job-token":
            raise JobTokenError("not a job token")
        return Job(id=1, project_id=1, project_path=PROJECTS[0], pipeline_id=1, ref="topic", sha="a" * 40,
                   is_tag=False, status="running", started_at=1.0)


def _ticks_through(worker, store):
    worker.tick()
    assert store.pending_events() == []


@settings(max_examples=120, deadline=None)
@given(name=st.sampled_from(sorted(FIELDS)), data=st.data(), project=st.sampled_from(PROJECTS))
def test_hostile_fields_of_documented_payloads_are_4xx_or_stored_and_digested(hostile, name, data, project):
    client, worker, store = hostile
    body = load_payload(name)
    body["project"]["path_with_namespace"] = project
    for path in data.draw(st.lists(st.sampled_from(FIELDS[name]), min_size=1, max_size=3, unique=True)):
        _put(body, path, data.draw(hostile_values))
    r = client.post("/webhooks/gitlab", data=json.dumps(body), content_type="application/json",
                    headers={"X-Gitlab-Token": SECRET, "X-Gitlab-Event": KIND_OF[name]})
    assert r.status_code in (200, 202, 400, 401), r.get_data()[:300]
    assert _is_json_error(r) if r.status_code >= 400 else r.is_json
    _ticks_through(worker, store)


@settings(max_examples=40, deadline=None)
@given(raw=st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b'{"events": [1e400]}',
                            b'{"object_attributes": {"id": NaN}}'])
       | st.integers(min_value=1, max_value=12_000).map(lambda n: b"[" * n + b"]" * n)
       | st.integers(min_value=1, max_value=12_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)
       | st.integers(min_value=20, max_value=5000).map(lambda n: b'{"id": ' + b"9" * n + b"}"))
def test_hostile_json_is_400_on_every_json_route(hostile, raw):
    client, worker, store = hostile
    for route, headers in (("/webhooks/gitlab", {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Pipeline Hook"}),
                           ("/webhooks/registry", {"Authorization": f"Bearer {REGISTRY_NOTIFY}"}),
                           ("/api/v1/ci/pushes", {"JOB-TOKEN": "job-token"}),
                           ("/api/v1/ci/untag", {"JOB-TOKEN": "job-token"})):
        r = client.post(route, data=raw, content_type="application/json", headers=headers)
        assert r.status_code in (200, 202, 400), (route, r.get_data()[:300])
        assert _is_json_error(r) if r.status_code >= 400 else r.is_json
    _ticks_through(worker, store)


@settings(max_examples=80, deadline=None)
@given(field=st.sampled_from(["mediaType", "tag", "repository", "digest", "useragent", "timestamp", "action",
                              "target", "request"]), value=hostile_values,
       name=st.sampled_from(["registry_notification_push_v1", "registry_notification_push_v2"]))
def test_hostile_registry_notifications_are_4xx_or_stored_and_digested(hostile, field, value, name):
    client, worker, store = hostile
    envelope = load_payload(name)
    event = envelope["events"][0]
    event["target"]["tag"] = "mr-1"
    if field == "useragent":
        event.setdefault("request", {})["useragent"] = value
    elif field in ("timestamp", "action", "target", "request"):
        event[field] = value
    else:
        event["target"][field] = value
    r = client.post("/webhooks/registry", data=json.dumps(envelope), content_type="application/json",
                    headers={"Authorization": f"Bearer {REGISTRY_NOTIFY}"})
    assert r.status_code in (202, 400), r.get_data()[:300]
    assert _is_json_error(r) if r.status_code >= 400 else r.is_json
    _ticks_through(worker, store)


images = (hostile_values
          | st.builds(lambda host, repo, tag: f"{host}/{repo}:{tag}",
                      st.sampled_from(["registry.test", "elsewhere.test", "", "registry.test:443"]),
                      st.sampled_from(["other/app", "../gitlab-org/gitlab-test", "gitlab-org/gitlab-test/../x",
                                       "a" * 300, "UPPER/case"]) | st.text(max_size=20),
                      st.sampled_from(["mr-1", "../latest", "a\nb", "x" * 200]) | st.text(max_size=20)))


@settings(max_examples=80, deadline=None)
@given(route=st.sampled_from(["/api/v1/ci/pushes", "/api/v1/ci/untag"]), image=images,
       digest=st.none() | hostile_values, extra=st.dictionaries(st.text(max_size=8), hostile_values, max_size=2),
       token=st.sampled_from(["job-token", "", "other", "x" * 300]))
def test_ci_routes_answer_hostile_bodies_with_4xx(hostile, route, image, digest, extra, token):
    client, worker, store = hostile
    body = {**extra, "image": image, "digest": digest}
    r = client.post(route, data=json.dumps(body), content_type="application/json",
                    headers={"JOB-TOKEN": token} if token else {})
    assert 400 <= r.status_code < 500, (r.status_code, r.get_data()[:300])
    assert _is_json_error(r)
    _ticks_through(worker, store)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    store = make_store(tmp_path_factory.mktemp("hostile-ops"))
    clock = Clock()
    seed(store, clock())
    app = build_app(make_settings(ops_projects()), store, clock=clock)
    yield app.test_client()
    store.close()


ids = (st.integers(min_value=-5, max_value=2**80).map(str) | st.sampled_from(["9" * 5000, "0", "1", "2", "3"])
       | st.text(max_size=12).map(lambda t: urllib.parse.quote(t, safe="")))
query_values = st.integers(min_value=-(2**70), max_value=2**70).map(str) | st.sampled_from(
    ["1e400", "nan", "inf", "-0", "9" * 5000, "2h", "99999999999999999999d", "0001-01-01T00:00:00+14:00",
     "9999-12-31T23:59:59-23:59", "done", "held"]) | st.text(max_size=12)
ADMIN_ROUTES = [("get", "/api/v1/plans/{}"), ("post", "/api/v1/plans/{}/approve"),
                ("post", "/api/v1/plans/{}/reject"), ("get", "/api/v1/untags/{}"),
                ("post", "/api/v1/untags/{}/restore"), ("post", "/api/v1/untags/{}/retry"),
                ("get", "/api/v1/requests/{}")]


@settings(max_examples=100, deadline=None)
@given(route=st.sampled_from(ADMIN_ROUTES), id_=ids,
       listing=st.sampled_from(["/api/v1/plans", "/api/v1/untags"]),
       query=st.dictionaries(st.sampled_from(["limit", "offset", "cursor", "state", "outcome", "since", "project"]),
                             query_values, max_size=4))
def test_the_admin_api_answers_hostile_ids_and_queries_with_json(seeded, route, id_, listing, query):
    method, template = route
    for r in (getattr(seeded, method)(template.format(id_), headers={"Authorization": f"Bearer {ADMIN}"}),
              seeded.get(f"{listing}?{urllib.parse.urlencode(query)}", headers={"Authorization": f"Bearer {ADMIN}"})):
        assert r.status_code < 500, r.get_data()[:300]
        assert r.is_json
        if r.status_code >= 400:
            assert _is_json_error(r)


def _page_csrf(client, auth):
    """The token the dashboard puts in its forms for this client's cookie, whether or not the page shows a
    form right now (earlier examples may have approved every held plan)."""
    from daemon.web.dashboard import CSRF_COOKIE, csrf_token

    page = client.get("/dashboard", headers=auth).get_data(as_text=True)
    nonce = client.get_cookie(CSRF_COOKIE, path="/dashboard").value
    with client.application.test_request_context(headers=auth):
        token = csrf_token(nonce)
    shown = re.findall(r'name="csrf" value="([0-9a-f]+)"', page)
    assert all(t == token for t in shown)
    return token


DASHBOARD_FORMS = ["/dashboard/plans/{}/approve", "/dashboard/plans/{}/reject", "/dashboard/untags/{}/restore",
                   "/dashboard/untags/{}/retry"]


@settings(max_examples=80, deadline=None)
@given(form=st.sampled_from(DASHBOARD_FORMS), id_=ids, good_csrf=st.booleans(),
       fields=st.dictionaries(st.sampled_from(["csrf", "note", "id", "x"]),
                              st.text(max_size=30) | st.sampled_from(HOSTILE_TEXT), max_size=3))
def test_dashboard_forms_answer_hostile_posts_without_5xx(seeded, form, id_, good_csrf, fields):
    auth = {"Authorization": f"Bearer {ADMIN}"}
    if good_csrf:
        fields = {**fields, "csrf": _page_csrf(seeded, auth)}
    r = seeded.post(form.format(id_), data=fields, headers=auth)
    assert r.status_code < 500, r.get_data()[:300]
    assert r.status_code == 303 or (r.status_code >= 400 and _is_json_error(r)), (r.status_code, r.get_data()[:300])
