"""Hostile and broken input (issue 13, SPEC 14): values GitLab never sends are 400 at the door, naming the
field; an event the worker still cannot apply is set aside as unusable (visible and counted) and the
queue moves on, while a failure of storage itself leaves it pending; every hostile request shape is a
JSON 4xx; and a value from a payload cannot start a log line of its own."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from support.janitor import ADMIN, REGISTRY_NOTIFY, SECRET, load_payload, mr_hook, pipeline_hook, push_hook
from support.logs import captured_lines
from support.servers import ServerThread

from daemon.cli.options import LOG_FORMAT, OneLineFormatter
from daemon.domain.model import Job
from daemon.errors import JobTokenError
from daemon.wiring import build_app

APP = "gitlab-org/gitlab-test"
BEARER = {"Authorization": f"Bearer {ADMIN}"}
MR_TAG = {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}
JOB_TOKEN = "job-token"


def _janitor(janitor: Callable[..., Any], **sections: Any) -> Any:
    return janitor([{"path": APP, "webhook_secret": SECRET, "grace_period": "1m", "tags": [MR_TAG]}], **sections)


def _set(body: dict[str, Any], value: Any, *path: str) -> dict[str, Any]:
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return body


def _post(j: Any, event: str, body: bytes | dict[str, Any]) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return j.client.post("/webhooks/gitlab", data=data, content_type="application/json",
                         headers={"X-Gitlab-Event": event, "X-Gitlab-Token": SECRET})


def _store_raw(j: Any, event: str, kind: str, body: dict[str, Any] | bytes, key: str,
               project_path: str | None = APP) -> None:
    """An event in the inbox as a janitor before these checks accepted it (the web refuses it now)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    assert j.store.add_event(delivery_key=key, source="gitlab", kind=kind, project_path=project_path,
                             headers={"X-Gitlab-Event": event}, body=data, received_at=j.clock())


def _unusable(j: Any) -> dict[str, Any]:
    body: dict[str, Any] = j.client.get("/api/v1/status", headers=BEARER).get_json()["unusable_events"]
    return body


def _metric(j: Any, name: str) -> float:
    text = j.client.get("/metrics").get_data(as_text=True)
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} is not in /metrics"
    return float(match.group(1))


def _nested(depth: int) -> Any:
    value: Any = 1
    for n in range(depth):
        value = [value] if n % 2 else {"k": value}
    return value


# -- at the door: values GitLab never sends are 400, naming the field -----------------------------------

DOOR = [
    ("Pipeline Hook", lambda: _set(pipeline_hook(APP, pipeline_id=1, ref="f"), 2**70, "object_attributes", "id"),
     "object_attributes.id"),
    ("Merge Request Hook", lambda: _set(mr_hook(APP, iid=1, source_branch="f", action="merge"), 2**64,
                                        "object_attributes", "iid"), "object_attributes.iid"),
    ("Pipeline Hook", lambda: _set(pipeline_hook(APP, pipeline_id=1, ref="f"), [1], "project", "default_branch"),
     "project.default_branch"),
    ("Pipeline Hook", lambda: _set(pipeline_hook(APP, pipeline_id=1, ref="f"), 2**63, "object_attributes", "id"),
     "object_attributes.id"),
    ("Pipeline Hook", lambda: _set(pipeline_hook(APP, pipeline_id=1, ref="f"), 7.0, "object_attributes", "id"),
     "object_attributes.id"),
    ("Pipeline Hook", lambda: _set(pipeline_hook(APP, pipeline_id=1, ref="f"), True, "object_attributes", "iid"),
     "object_attributes.iid"),
    ("Pipeline Hook", lambda: _set(pipeline_hook(APP, pipeline_id=1, ref="f", mr_iid=3), 2**64,
                                   "merge_request", "iid"), "merge_request.iid"),
    ("Pipeline Hook", lambda: _set(pipeline_hook(APP, pipeline_id=1, ref="f"), "main", "merge_request"),
     "merge_request"),
    ("Pipeline Hook", lambda: _set(pipeline_hook(APP, pipeline_id=1, ref="f"), "f\n2026-01-01 CRITICAL forged",
                                   "object_attributes", "ref"), "object_attributes.ref"),
    ("Pipeline Hook", lambda: _set(pipeline_hook(APP, pipeline_id=1, ref="f"), "f" * 5000,
                                   "object_attributes", "ref"), "object_attributes.ref"),
    ("Pipeline Hook", lambda: _set(pipeline_hook(APP, pipeline_id=1, ref="f"), ["success"],
                                   "object_attributes", "status"), "object_attributes.status"),
    ("Pipeline Hook", lambda: _set(pipeline_hook(APP, pipeline_id=1, ref="f"), -5, "project", "id"), "project.id"),
    ("Pipeline Hook", lambda: _set(pipeline_hook(APP, pipeline_id=1, ref="f"), _nested(25), "builds"),
     "deeper than 20 levels"),
    ("Merge Request Hook", lambda: _set(mr_hook(APP, iid=1, source_branch="f", action="merge"), 0,
                                        "object_attributes", "source_project_id"),
     "object_attributes.source_project_id"),
    ("Merge Request Hook", lambda: _set(mr_hook(APP, iid=1, source_branch="f", action="merge"), {"a": 1},
                                        "object_attributes", "state"), "object_attributes.state"),
    ("Push Hook", lambda: _set(push_hook(APP, ref="f", deleted=True), ["refs/heads/f"], "ref"), "'ref'"),
    ("Push Hook", lambda: _set(push_hook(APP, ref="f", deleted=True), 7, "project", "default_branch"),
     "project.default_branch"),
]


@pytest.mark.parametrize(("event", "body", "field"), DOOR)
def test_values_gitlab_never_sends_are_refused_at_the_door_naming_the_field(janitor, event, body, field):
    j = _janitor(janitor)
    r = _post(j, event, body())
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"] == "malformed_event"
    assert field in r.get_json()["message"]
    assert j.store.pending_events() == []


def test_ids_at_the_edge_of_63_bits_are_accepted(janitor):
    j = _janitor(janitor)
    r = _post(j, "Pipeline Hook", pipeline_hook(APP, pipeline_id=2**63 - 1, ref="f", mr_iid=2**63 - 1))
    assert r.status_code == 202
    j.tick()
    assert j.store.get_pipeline(APP, 2**63 - 1) is not None
    assert _unusable(j)["count"] == 0


RAW_BODIES = [
    b"[" * 10_000 + b"]" * 10_000,
    b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    b'{"object_kind": "pipeline", "object_attributes": {"id": NaN}}',
    b'{"object_kind": "pipeline", "object_attributes": {"id": Infinity}}',
    b'{"object_kind": "pipeline", "object_attributes": {"id": -Infinity}}',
    b'{"object_kind": "pipeline", "object_attributes": {"id": 1e400}}',
    b'{"object_kind": "pipeline", "object_attributes": {"id": ' + b"9" * 5000 + b"}}",
]


@pytest.mark.parametrize("raw", RAW_BODIES, ids=["deep-list", "deep-object", "nan", "inf", "-inf", "1e400",
                                                  "5000-digits"])
def test_json_nobody_sends_is_400_on_every_json_route(janitor, raw):
    j = _janitor(janitor)
    app = build_app(j.settings, j.store, clock=j.clock, verifier=_Jobs())
    client = app.test_client()
    for route, headers in (("/webhooks/gitlab", {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Pipeline Hook"}),
                           ("/webhooks/registry", {"Authorization": f"Bearer {REGISTRY_NOTIFY}"}),
                           ("/api/v1/ci/pushes", {"JOB-TOKEN": JOB_TOKEN}),
                           ("/api/v1/ci/untag", {"JOB-TOKEN": JOB_TOKEN})):
        r = client.post(route, data=raw, content_type="application/json", headers=headers)
        assert r.status_code == 400, (route, r.get_data()[:200])
        assert set(r.get_json()) >= {"error", "message"}
    assert j.store.pending_events() == []


def test_the_same_payload_with_a_float_id_that_json_reads_as_1e400_names_the_field(janitor):
    j = _janitor(janitor)
    body = json.dumps(pipeline_hook(APP, pipeline_id=1, ref="f")).replace('"id": 1,', '"id": 1e300,', 1)
    assert '"id": 1e300' in body
    r = _post(j, "Pipeline Hook", body.encode())
    assert r.status_code == 400 and "object_attributes.id" in r.get_json()["message"]


@pytest.mark.parametrize(("field", "value"), [("mediaType", ["application/vnd.oci.image.manifest.v1+json"]),
                                              ("tag", ["mr-1"]), ("repository", {"a": 1}), ("digest", 7)])
def test_a_registry_push_with_a_field_of_the_wrong_type_is_400_naming_it(janitor, field, value):
    j = _janitor(janitor)
    envelope = load_payload("registry_notification_push_v2")
    envelope["events"][0]["target"]["tag"] = "mr-1"
    envelope["events"][0]["target"][field] = value
    r = j.client.post("/webhooks/registry", json=envelope, headers={"Authorization": f"Bearer {REGISTRY_NOTIFY}"})
    assert r.status_code == 400
    assert r.get_json()["error"] == "malformed_event" and f"events[0].target.{field}" in r.get_json()["message"]
    assert j.store.pending_events() == []


# -- the worker: no event blocks the queue -------------------------------------------------------------

def test_events_the_ledger_cannot_use_are_set_aside_and_the_queue_moves_on(janitor):
    """The three deliveries of the report, stored as a janitor before these checks stored them: each used to
    make every tick fail on it, first in the queue, for good."""
    j = _janitor(janitor)
    _store_raw(j, "Pipeline Hook", "pipeline",
               _set(pipeline_hook(APP, pipeline_id=1, ref="f"), 2**70, "object_attributes", "id"), "bad-1")
    _store_raw(j, "Merge Request Hook", "merge_request",
               _set(mr_hook(APP, iid=1, source_branch="f", action="merge"), 2**64, "object_attributes", "iid"),
               "bad-2")
    _store_raw(j, "Pipeline Hook", "pipeline",
               _set(pipeline_hook(APP, pipeline_id=2, ref="f"), [1], "project", "default_branch"), "bad-3")
    j.hook("Pipeline Hook", pipeline_hook(APP, pipeline_id=5, ref="topic", mr_iid=5))
    j.hook("Merge Request Hook", mr_hook(APP, iid=5, source_branch="topic", action="merge"))
    assert j.tick()["events"] == 5
    assert j.store.pending_events() == []
    assert [p.trigger_kind for p in j.store.plan_page(limit=10)] == ["merge_request_merged"]

    unusable = _unusable(j)
    assert unusable["count"] == 3
    assert [(e["kind"], e["project"]) for e in unusable["events"]] == [
        ("pipeline", APP), ("merge_request", APP), ("pipeline", APP)]
    assert all(e["error"] and e["set_aside_at"] for e in unusable["events"])
    assert "object_attributes.id" in unusable["events"][2]["error"]
    assert _metric(j, "janitor_events_unusable_total") == 3
    page = j.client.get("/dashboard", headers=BEARER).get_data(as_text=True)
    assert page.count("data-unusable-event=") == 3 and 'id="unusable-count"' in page
    j.tick(advance=30)
    assert _unusable(j)["count"] == 3 and _metric(j, "janitor_events_unusable_total") == 3


def test_whatever_a_handler_raises_sets_the_event_aside_with_none_of_its_writes(janitor, monkeypatch):
    j = _janitor(janitor)
    ingest = j.worker.ingest

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug this payload reaches")

    monkeypatch.setattr(ingest, "expect_tags", broken)  # runs after the pipeline row is written
    j.hook("Pipeline Hook", pipeline_hook(APP, pipeline_id=7, ref="topic", mr_iid=7))
    j.tick()
    assert j.store.pending_events() == []
    assert j.store.get_pipeline(APP, 7) is None  # the savepoint undid what it wrote
    (event,) = _unusable(j)["events"]
    assert event["error"] == "RuntimeError: a bug this payload reaches"
    monkeypatch.undo()
    j.hook("Pipeline Hook", pipeline_hook(APP, pipeline_id=8, ref="topic", mr_iid=7))
    j.tick()
    assert j.store.get_pipeline(APP, 8) is not None
    assert _unusable(j)["count"] == 1


def test_a_failure_of_storage_inside_a_handler_is_not_the_events_fault(janitor, monkeypatch):
    j = _janitor(janitor)
    ingest = j.worker.ingest

    def locked(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(ingest, "on_gitlab", locked)
    j.hook("Pipeline Hook", pipeline_hook(APP, pipeline_id=9, ref="topic"))
    with pytest.raises(sqlite3.OperationalError):
        ingest.drain()
    assert len(j.store.pending_events()) == 1
    assert _unusable(j)["count"] == 0
    monkeypatch.undo()
    j.tick()
    assert j.store.pending_events() == [] and j.store.get_pipeline(APP, 9) is not None
    assert _unusable(j)["count"] == 0


def test_a_locked_database_leaves_the_event_pending_for_the_next_tick(janitor, tmp_path):
    j = _janitor(janitor)
    j.hook("Pipeline Hook", pipeline_hook(APP, pipeline_id=10, ref="topic"))
    other = sqlite3.connect(str(tmp_path / "janitor.db"), isolation_level=None)
    j.store.db.execute("PRAGMA busy_timeout=50")
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            j.worker.ingest.drain()
        other.execute("ROLLBACK")
    finally:
        other.close()
        j.store.db.execute("PRAGMA busy_timeout=30000")
    assert len(j.store.pending_events()) == 1 and _unusable(j)["count"] == 0
    j.tick()
    assert j.store.pending_events() == [] and j.store.get_pipeline(APP, 10) is not None
    assert _unusable(j)["count"] == 0


# -- the admin API, the dashboard and HTTP itself: 4xx, JSON ---------------------------------------------

BEYOND = str(2**63)


@pytest.mark.parametrize(("method", "url"), [
    ("post", f"/api/v1/plans/{BEYOND}/approve"), ("post", f"/api/v1/plans/{2**70}/reject"),
    ("post", f"/api/v1/untags/{BEYOND}/restore"), ("post", f"/api/v1/untags/{2**64}/retry"),
    ("get", f"/api/v1/plans/{BEYOND}"), ("get", f"/api/v1/untags/{BEYOND}"), ("get", f"/api/v1/requests/{BEYOND}"),
    ("get", "/api/v1/plans/" + "9" * 5000),
    ("get", f"/api/v1/plans?offset={BEYOND}"), ("get", f"/api/v1/plans?cursor={2**64}"),
    ("get", f"/api/v1/plans?limit={2**70}"), ("get", f"/api/v1/untags?offset={2**64}"),
    ("get", f"/api/v1/untags?cursor={BEYOND}"), ("get", "/api/v1/untags?offset=" + "9" * 5000),
    ("get", "/api/v1/untags?since=1e400"), ("get", "/api/v1/untags?since=nan"),
    ("post", f"/dashboard/plans/{BEYOND}/approve"), ("post", f"/dashboard/untags/{2**64}/restore"),
], ids=lambda value: value if len(value) < 60 else value[:40] + "...")
def test_numbers_beyond_63_bits_in_admin_urls_are_400(seeded_janitor, method, url):
    r = getattr(seeded_janitor.client, method)(url, headers=BEARER)
    assert r.status_code == 400, (url, r.get_data()[:300])
    assert set(r.get_json()) == {"error", "message"}


@pytest.mark.parametrize("url", [f"/api/v1/plans/{2**63 - 1}", f"/api/v1/untags/{2**63 - 1}"])
def test_the_largest_id_is_merely_not_found(seeded_janitor, url):
    r = seeded_janitor.client.get(url, headers=BEARER)
    assert r.status_code == 404 and r.get_json()["error"] == "not_found"


@pytest.fixture
def served(janitor) -> Iterator[tuple[Any, str]]:
    j = _janitor(janitor, server={"max_body_bytes": 4096})
    with ServerThread(j.app) as server:
        yield j, server.url


def _chunks(size: int) -> Iterator[bytes]:
    body = json.dumps({"object_kind": "pipeline", "pad": "x" * size}).encode()
    for start in range(0, len(body), 1000):
        yield body[start:start + 1000]


def test_a_chunked_body_over_max_body_bytes_is_413(served):
    j, url = served
    r = requests.post(f"{url}/webhooks/gitlab", data=_chunks(10_000), timeout=10,
                      headers={"X-Gitlab-Token": SECRET, "Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "payload_too_large" and "max_body_bytes" in r.json()["message"]
    r = requests.post(f"{url}/webhooks/gitlab", data=b"x" * 5000, timeout=10,
                      headers={"X-Gitlab-Token": SECRET, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    assert j.store.pending_events() == []


def test_a_chunked_body_within_max_body_bytes_is_read_whole(janitor):
    j = _janitor(janitor, server={"max_body_bytes": 64 * 1024})
    body = json.dumps(pipeline_hook(APP, pipeline_id=11, ref="topic")).encode()
    with ServerThread(j.app) as server:
        r = requests.post(f"{server.url}/webhooks/gitlab", data=iter([body[:3000], body[3000:]]), timeout=10,
                          headers={"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Pipeline Hook",
                                   "Content-Type": "application/json"})
    assert r.status_code == 202, r.text
    (event,) = j.store.pending_events()
    assert event.body == body


def test_a_header_over_8_kib_is_a_json_431(served):
    _, url = served
    for route in ("/webhooks/gitlab", "/api/v1/status", "/healthz"):
        r = requests.get(f"{url}{route}", headers={"X-Padding": "p" * 9000}, timeout=10)
        assert r.status_code == 431, (route, r.text[:200])
        assert r.json()["error"] == "request_header_fields_too_large"


def test_every_http_error_is_json(served):
    _, url = served
    for method, route in (("get", "/nowhere"), ("delete", "/webhooks/gitlab"), ("put", "/api/v1/status")):
        r = getattr(requests, method)(f"{url}{route}", timeout=10)
        assert r.status_code in (404, 405)
        assert r.headers["Content-Type"] == "application/json" and set(r.json()) == {"error", "message"}


# -- CI routes --------------------------------------------------------------------------------------------

class _Jobs:
    """GitLab vouching for one job of APP; any other token is refused."""

    def verify_job(self, job_token: str) -> Job:
        if job_token != JOB_TOKEN:
            raise JobTokenError("not a job token")
        return Job(id=1, project_id=14, project_path=APP, pipeline_id=1, ref="topic", sha="a" * 40,
                   is_tag=False, status="running", started_at=1.0)


# -- logs ------------------------------------------------------------------------------------------------

FORGED = "2026-01-01 00:00:00,000 CRITICAL daemon.execute.executor: forged"
_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[str]]]:
    """What the ``daemon`` loggers write through the CLI's formatter, as lines."""
    with captured_lines(OneLineFormatter(LOG_FORMAT)) as lines:
        yield lines


def test_a_newline_from_a_payload_cannot_start_a_log_line(janitor, log_lines):
    j = _janitor(janitor)
    path = f"{APP}\n{FORGED}"
    body = _set(pipeline_hook(path, pipeline_id=1, ref=f"f\r\n{FORGED}\x1b[2K"), 2**70, "object_attributes", "id")
    _store_raw(j, "Pipeline Hook", "pipeline", body, "forging", project_path=path)
    logging.getLogger("daemon.ingest.inbox").warning("%s:%s was pushed", f"repo\n{FORGED}", "tag\u2028\x1b[31m")
    j.tick()
    assert _unusable(j)["count"] == 1
    lines = log_lines()
    assert len(lines) >= 2
    for line in lines:
        assert _RECORD_START.match(line) or line.startswith("    "), line
        assert "\x1b" not in line and "\r" not in line and "\u2028" not in line
    assert not any(line.startswith(FORGED) for line in lines)


def test_the_cli_logging_writes_each_record_on_one_line():
    script = (
        "import logging\n"
        "from daemon.cli.options import setup_logging\n"
        "setup_logging()\n"
        "log = logging.getLogger('daemon.web')\n"
        f"log.warning('project %s ref %s', 'grp/*\\n{FORGED}', 'main\\r\\x1b[2J')\n"
        "try:\n"
        f"    raise ValueError('bad\\n{FORGED}')\n"
        "except ValueError:\n"
        "    log.exception('failed on %s', 'x\\ny')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True)
    lines = done.stderr.splitlines()
    records = [line for line in lines if _RECORD_START.match(line)]
    assert len(records) == 2, lines
    assert all(_RECORD_START.match(line) or line.startswith("    ") for line in lines), lines
    assert "\\n" + FORGED in records[0] and "\\x1b" in records[0]
