"""Logs operators can use: one JSON object a line (``--log-format json``) with the fields project, plan,
untag and delivery; an access log line per request without any token's value; a push the worker cannot
resolve yet logged once, not every tick. Real registry and SQLite; GitLab stood in."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from support.images import push_image, tags
from support.janitor import ADMIN, SECRET, mr_hook, pipeline_hook, registry_section
from support.logs import captured_lines

from daemon.cli.options import LOG_FORMAT, JsonFormatter, OneLineFormatter, setup_logging
from daemon.cli.process import web
from daemon.demo.env import free_port

MR_TAG = {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}


def _capture(formatter: logging.Formatter) -> Iterator[Callable[[], list[str]]]:
    with captured_lines(formatter) as lines:
        yield lines


@pytest.fixture
def json_lines() -> Iterator[Callable[[], list[str]]]:
    """What the ``daemon`` loggers write at INFO and above in the JSON format, as lines."""
    yield from _capture(JsonFormatter())


@pytest.fixture
def text_lines() -> Iterator[Callable[[], list[str]]]:
    yield from _capture(OneLineFormatter(LOG_FORMAT))


def parsed(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


def test_an_untag_outcome_and_a_webhook_carry_their_fields_in_json(janitor, registry, project, json_lines):
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                  "dry_run": False, "grace_period": "1m", "tags": [MR_TAG]}],
                registry=registry_section(registry))
    push_image(registry, project.path, ["mr-42"])
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=101, ref="feature/x", mr_iid=42),
           **{"X-Gitlab-Event-UUID": "uuid-pipeline-101"})
    j.hook("Merge Request Hook", mr_hook(project.path, iid=42, source_branch="feature/x", action="merge"),
           **{"Idempotency-Key": "idem-mr-42"})
    j.tick()
    j.tick(advance=61)
    assert tags(registry, project.path) == []
    (untag,) = j.store.list_untags()
    (plan,) = j.store.list_plans()

    lines = json_lines()
    records = parsed(lines)
    assert len(records) == len(lines) > 0
    for record in records:
        assert {"ts", "level", "logger", "message"} <= set(record), record
        assert record["ts"].endswith("Z") and "T" in record["ts"]
    [outcome] = [r for r in records if r["logger"] == "daemon.execute.executor" and r["message"].startswith("untag ")]
    assert (outcome["project"], outcome["plan"], outcome["untag"]) == (project.path, plan.id, untag.id)
    assert outcome["message"].endswith("-> done")
    finished = [r for r in records if r.get("plan") == plan.id and r["message"] == f"plan {plan.id} finished: done"]
    assert finished and finished[0]["project"] == project.path

    # one line per delivery: its access line says what became of it, with its project and delivery
    assert not [r for r in records if r["logger"] == "daemon.web.webhooks"]
    stored = [r for r in records if r["logger"] == "daemon.web.access" and r["path"] == "/webhooks/gitlab"]
    assert [(r["delivery"], r["project"], r["status"], r["message"]) for r in stored] == [
        ("uuid-pipeline-101", project.path, 202, "POST /webhooks/gitlab 202: pipeline delivery stored"),
        ("idem-mr-42", project.path, 202, "POST /webhooks/gitlab 202: merge_request delivery stored"),
    ]
    assert all(r["request_id"] for r in stored)
    applied = {r["delivery"]: r for r in records if r["logger"] == "daemon.ingest.inbox" and "applied" in r["message"]}
    assert set(applied) == {"uuid-pipeline-101", "idem-mr-42"}
    assert all(r["project"] == project.path for r in applied.values())


def test_a_duplicate_an_ignored_and_a_refused_delivery_are_logged_with_their_delivery(janitor, json_lines):
    j = janitor()
    body = pipeline_hook("gitlab-org/gitlab-test", pipeline_id=7, ref="main")
    uuid = {"X-Gitlab-Event-UUID": "uuid-7"}
    j.hook("Pipeline Hook", body, **uuid)
    j.hook("Pipeline Hook", body, **uuid)
    j.hook("Pipeline Hook", pipeline_hook("someone/else", pipeline_id=8, ref="main"),
           **{"X-Gitlab-Event-UUID": "uuid-8"})
    refused = j.client.post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Pipeline Hook", "X-Gitlab-Token": "not-the-secret", "X-Gitlab-Event-UUID": "uuid-9"})
    assert refused.status_code == 401
    records = parsed(json_lines())
    access = [(r.get("delivery"), r["level"], r["message"]) for r in records
              if r["logger"] == "daemon.web.access" and r["path"] == "/webhooks/gitlab"]
    assert access == [
        ("uuid-7", "INFO", "POST /webhooks/gitlab 202: pipeline delivery stored"),
        ("uuid-7", "INFO", "POST /webhooks/gitlab 200: pipeline delivery is a duplicate; not stored again"),
        ("uuid-8", "INFO", "POST /webhooks/gitlab 200: pipeline delivery ignored: unconfigured_project"),
        (None, "INFO", "POST /webhooks/gitlab 401"),
    ]
    # a refusal is a warning of its own, besides its access line
    refusals = {(r["delivery"], r["level"], r["message"]) for r in records if r["logger"] == "daemon.web.webhooks"}
    assert refusals == {("uuid-9", "WARNING", "GitLab delivery refused: X-Gitlab-Token matches no configured secret")}


def test_no_token_value_reaches_the_access_log(janitor, registry, gitlab, project, json_lines):
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                  "tags": [MR_TAG]}],
                registry=registry_section(registry), gitlab={"url": gitlab.url})
    job_token = gitlab.add_job(project, pipeline_id=70, ref="feat")
    push_image(registry, project.path, ["mr-3"])
    hooked = j.client.post("/webhooks/gitlab?token=query-secret-1",
                           json=pipeline_hook(project.path, pipeline_id=70, ref="feat"),
                           headers={"X-Gitlab-Event": "Pipeline Hook", "X-Gitlab-Token": SECRET})
    assert hooked.status_code == 202
    recorded = j.client.post("/api/v1/ci/pushes", json={"image": f"{registry.host}/{project.path}:mr-3"},
                             headers={"JOB-TOKEN": job_token, "User-Agent": "curl/8.5.0 (x86_64) extra"})
    assert recorded.status_code in (200, 201), recorded.get_json()
    status = j.client.get("/api/v1/status?token=query-secret-2",
                          headers={"Authorization": f"Bearer {ADMIN}", "PRIVATE-TOKEN": "private-secret-3"})
    assert status.status_code == 200
    refused = j.client.post("/api/v1/ci/pushes", json={"image": f"{registry.host}/{project.path}:mr-3"},
                            headers={"JOB-TOKEN": "guessed-job-token-4"})
    assert refused.status_code == 401

    lines = json_lines()
    text = "\n".join(lines)
    for secret in (SECRET, job_token, ADMIN, "query-secret-1", "query-secret-2", "private-secret-3",
                   "guessed-job-token-4", project.token):
        assert secret not in text, secret
    access = [r for r in parsed(lines) if r["logger"] == "daemon.web.access"]
    assert [(r["method"], r["path"], r["status"]) for r in access] == [
        ("POST", "/webhooks/gitlab", 202), ("POST", "/api/v1/ci/pushes", recorded.status_code),
        ("GET", "/api/v1/status", 200), ("POST", "/api/v1/ci/pushes", 401)]
    assert all(r["level"] == "INFO" and r["duration_ms"] >= 0 and r["remote"] and r["request_id"] for r in access)
    assert access[1]["agent"] == "curl/8.5.0"


def test_probes_are_logged_at_debug(janitor, json_lines):
    j = janitor()
    assert j.client.get("/healthz").status_code == 200
    assert j.client.get("/api/v1/openapi.json").status_code == 200
    assert [r["path"] for r in parsed(json_lines()) if r["logger"] == "daemon.web.access"] == ["/api/v1/openapi.json"]
    logging.getLogger("daemon.web.access").setLevel(logging.DEBUG)
    try:
        j.client.get("/healthz", headers={"X-Request-Id": "probe-1"})
    finally:
        logging.getLogger("daemon.web.access").setLevel(logging.NOTSET)
    [probe] = [r for r in parsed(json_lines()) if r.get("path") == "/healthz"]
    assert (probe["level"], probe["status"], probe["request_id"]) == ("DEBUG", 200, "probe-1")


def test_a_hostile_value_stays_on_one_line_in_both_formats(json_lines, text_lines):
    forged = '{"level": "CRITICAL", "message": "forged"}'
    logging.getLogger("daemon.ingest.inbox").warning(
        "event of %s", f"grp/app\n{forged}", extra={"project": f"grp/app\n{forged}\u2028\x1b[2J\x85",
                                                     "delivery": "a b=c", "plan": 3})
    [line] = json_lines()
    record = json.loads(line)
    assert record["project"] == f"grp/app\n{forged}\u2028\x1b[2J\x85" and record["plan"] == 3
    assert "\u2028" not in line and "\x1b" not in line and "\x85" not in line
    [text] = text_lines()
    assert "\x1b" not in text and "\u2028" not in text
    assert text.endswith(' plan=3 delivery="a b=c"'), text
    assert "project=" in text and "\\n" in text


def test_a_log_level_that_is_not_one_stops_the_process_with_exit_2(monkeypatch):
    monkeypatch.setenv("JANITOR_LOG_LEVEL", "chatty")
    result = CliRunner().invoke(web, [])
    assert result.exit_code == 2 and "JANITOR_LOG_LEVEL='CHATTY' is not a log level" in result.output
    monkeypatch.setenv("JANITOR_LOG_LEVEL", "INFO")
    result = CliRunner().invoke(web, ["--log-format", "xml"])
    assert result.exit_code == 2 and "'xml' is not one of 'text', 'json'" in result.output


def test_setup_logging_gives_every_root_handler_the_format(monkeypatch):
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    monkeypatch.setenv("JANITOR_LOG_LEVEL", "INFO")
    try:
        setup_logging("json")
        assert isinstance(handler.formatter, JsonFormatter)
        setup_logging("text")
        assert isinstance(handler.formatter, OneLineFormatter)
    finally:
        root.removeHandler(handler)


def test_an_unresolvable_push_is_logged_once_not_every_tick(janitor, registry, project, caplog):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every HEAD fails at once
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                  "dry_run": False, "tags": [MR_TAG]}],
                registry={"url": closed, "hostnames": [registry.host], "requests_per_second": 0})
    caplog.set_level(logging.DEBUG, logger="daemon.ingest.inbox")
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=5, ref="feature/y", mr_iid=9))
    for _ in range(3):
        j.tick(advance=61)  # each tick past the retry interval asks the registry again
    failures = [r for r in caplog.records if r.name == "daemon.ingest.inbox"
                and r.getMessage().startswith(f"could not resolve {project.path}:mr-9")]
    assert len(failures) >= 3, [r.getMessage() for r in caplog.records]
    assert [r.levelname for r in failures] == ["WARNING"] + ["DEBUG"] * (len(failures) - 1)
    assert getattr(failures[0], "project", None) == project.path
    (record,) = [r for r in j.store.records_of_pipeline(project.path, 5)]
    assert record.state == "expected", "still asked again: only the log line is not repeated"


def _chart_env(values: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Container name -> its environment, as the chart renders the Deployment with ``values``."""
    import helm_python

    chart_dir = Path(__file__).resolve().parents[2] / "helm" / "registry-janitor"
    with helm_python.Chart.load(str(chart_dir)) as chart:
        files = chart.render(values, name="janitor", namespace="ops")
    deployment = yaml.safe_load(next(text for path, text in files.items() if path.endswith("deployment.yaml")))
    return {c["name"]: {e["name"]: e.get("value") for e in c["env"]}
            for c in deployment["spec"]["template"]["spec"]["containers"]}


def test_the_chart_passes_log_format_and_level_to_every_container():
    assert _chart_env({})["janitor"]["JANITOR_LOG_FORMAT"] == "text"
    split = _chart_env({"splitProcesses": True, "logFormat": "json", "logLevel": "WARNING"})
    assert set(split) == {"web", "worker"}
    for env in split.values():
        assert (env["JANITOR_LOG_FORMAT"], env["JANITOR_LOG_LEVEL"]) == ("json", "WARNING")
    with pytest.raises(Exception, match="logFormat"):
        _chart_env({"logFormat": "xml"})
