"""Whatever a client sends to the webhook routes, the answer is a JSON 2xx/4xx, never a 500."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.janitor import REGISTRY_NOTIFY, SECRET, Clock, make_settings, make_store
from support.payloads import load_payload

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
