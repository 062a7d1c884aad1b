"""/api/v1/openapi.json: a valid OpenAPI 3.1 document naming every route and method the app serves (and
nothing else), with the admin API's real answers matching the schemas it declares."""

from __future__ import annotations

import re

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from support.ops import BEARER


@pytest.fixture
def doc(seeded_janitor):
    response = seeded_janitor.client.get("/api/v1/openapi.json")  # no auth
    assert response.status_code == 200
    return response.get_json()


def app_routes(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            out.add((path, method.lower()))
    return out


def test_the_document_is_valid_openapi(doc):
    validate(doc)
    assert doc["openapi"].startswith("3.")


def test_every_route_of_the_app_is_documented(seeded_janitor, doc):
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    served = app_routes(seeded_janitor.app)
    missing = served - documented
    assert not missing, f"routes missing from the OpenAPI document: {sorted(missing)}"
    assert not documented - served, f"documented but not served: {sorted(documented - served)}"
    for path in ("/webhooks/gitlab", "/webhooks/registry", "/api/v1/ci/pushes", "/api/v1/ci/untag",
                 "/healthz", "/readyz", "/metrics", "/dashboard"):
        assert path in doc["paths"], path


def test_admin_routes_declare_the_admin_token(doc):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path.startswith(("/api/v1/status", "/api/v1/plans", "/api/v1/untags", "/api/v1/requests",
                                "/dashboard")):
                assert {"adminBearer": []} in op["security"], (path, method)
                assert "401" in op["responses"], (path, method)


def conforms(doc, schema_name: str, body) -> None:
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    OAS31Validator(schema).validate(body)


def test_answers_match_their_schemas(seeded_janitor, doc):
    def get(url):
        response = seeded_janitor.client.get(url, headers=BEARER)
        assert response.status_code == 200, url
        return response.get_json()

    conforms(doc, "Status", get("/api/v1/status"))
    conforms(doc, "PlanPage", get("/api/v1/plans?limit=2"))
    conforms(doc, "PlanDetail", get(f"/api/v1/plans/{seeded_janitor.ids['done_plan']}"))
    conforms(doc, "UntagPage", get("/api/v1/untags"))
    accepted = seeded_janitor.client.post(f"/api/v1/untags/{seeded_janitor.ids['done'][0]}/restore", headers=BEARER)
    assert "202" in doc["paths"]["/api/v1/untags/{untag_id}/restore"]["post"]["responses"]
    conforms(doc, "Accepted", accepted.get_json())
    conforms(doc, "RequestDetail", get(accepted.headers["Location"]))
    conflict = seeded_janitor.client.post(f"/api/v1/plans/{seeded_janitor.ids['done_plan']}/approve", headers=BEARER)
    assert conflict.status_code == 409
    conforms(doc, "Error", conflict.get_json())
    approved = seeded_janitor.client.post(f"/api/v1/plans/{seeded_janitor.ids['held_plan']}/approve", headers=BEARER)
    conforms(doc, "Plan", approved.get_json())


def test_every_operation_has_a_unique_camel_case_operation_id(doc):
    ids: dict[str, list[tuple[str, str]]] = {}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("operationId"), f"{method.upper()} {path} has no operationId"
            assert re.fullmatch(r"[a-z][A-Za-z0-9]*", op["operationId"]), (path, method, op["operationId"])
            ids.setdefault(op["operationId"], []).append((method, path))
    duplicates = {op_id: where for op_id, where in ids.items() if len(where) > 1}
    assert not duplicates, f"operationIds used more than once: {duplicates}"
    assert ids["receiveGitlabWebhook"] == [("post", "/webhooks/gitlab")]
    assert ids["listPlans"] == [("get", "/api/v1/plans")]
    assert ids["rejectPlan"] == [("post", "/api/v1/plans/{plan_id}/reject")]
