"""``registry-janitor ci record|untag`` from a job's point of view, against a served janitor."""

import socket

import pytest
from click.testing import CliRunner
from flask import Flask, jsonify, request
from support.images import push_image, tags
from support.janitor import SECRET, registry_section
from support.servers import ServerThread

from daemon.cli import main


def test_a_job_records_its_push_and_untags_it(janitor, registry, gitlab, project):
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token, "dry_run": False,
                  "tags": [{"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"}]}],
                registry=registry_section(registry), gitlab={"url": gitlab.url})
    push_image(registry, project.path, ["keep"])
    token = gitlab.add_job(project, pipeline_id=77, ref="feature-a")
    push_image(registry, project.path, ["feature-a"])  # the job's push, after it started
    image = f"{registry.host}/{project.path}:feature-a"
    runner = CliRunner()
    with ServerThread(j.app) as server:
        env = {"CI_JOB_TOKEN": token, "JANITOR_URL": server.url}
        first = runner.invoke(main, ["ci", "record", image], env=env)
        again = runner.invoke(main, ["ci", "record", image], env=env)
        foreign = runner.invoke(main, ["ci", "untag", f"{registry.host}/else/where:feature-a"], env=env)
        bad = runner.invoke(main, ["ci", "untag", image], env={**env, "CI_JOB_TOKEN": "nope"})
        untag = runner.invoke(main, ["ci", "untag", image], env=env)
    assert (first.exit_code, again.exit_code) == (0, 0)
    assert first.output.startswith("201") and again.output.startswith("200")
    assert foreign.exit_code == 1 and foreign.output.startswith("403")
    assert bad.exit_code == 1 and bad.output.startswith("401")
    assert untag.exit_code == 0 and untag.output.startswith("202")
    j.tick()  # runs the plan at once (no grace for CI requests)
    assert tags(registry, project.path) == ["keep"]


@pytest.fixture
def sleeps(monkeypatch):
    """What ``ci record|untag`` would have slept, without sleeping."""
    slept: list[float] = []
    monkeypatch.setattr("daemon.cli.ci.sleep", slept.append)
    return slept


def test_a_503_is_asked_again_after_its_retry_after(sleeps):
    answers = [(503, {"error": "registry_unavailable", "message": "registry down"}, {"Retry-After": "7"}),
               (503, {"error": "registry_unavailable", "message": "registry down"}, {"Retry-After": "3"}),
               (201, {"status": "recorded", "push_record_id": 1, "lifetime": "branch"}, {})]
    seen: list[object] = []
    janitor_app = Flask("janitor-answering-503")

    @janitor_app.post("/api/v1/ci/pushes")
    def pushes():
        seen.append((request.headers.get("JOB-TOKEN"), request.get_json()))
        status, body, headers = answers[len(seen) - 1]
        return jsonify(body), status, headers

    with ServerThread(janitor_app) as server:
        env = {"CI_JOB_TOKEN": "glcbt-job", "JANITOR_URL": server.url}
        result = CliRunner().invoke(main, ["ci", "record", "registry.example/group/app:feat"], env=env)
    assert result.exit_code == 0, result.output
    assert sleeps == [7, 3]
    assert seen == [("glcbt-job", {"image": "registry.example/group/app:feat"})] * 3
    assert "asking again in 7s" in result.output and result.output.rstrip().endswith("201 recorded")


def test_a_registry_that_stays_unreachable_fails_the_job_after_a_few_tries(
        janitor, registry, gitlab, project, sleeps):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token}],
                registry={"url": dead, "hostnames": [registry.host]}, gitlab={"url": gitlab.url})
    token = gitlab.add_job(project, pipeline_id=78, ref="feature-a")
    with ServerThread(j.app) as server:
        env = {"CI_JOB_TOKEN": token, "JANITOR_URL": server.url}
        result = CliRunner().invoke(main, ["ci", "record", f"{registry.host}/{project.path}:feature-a"], env=env)
    assert result.exit_code == 1
    assert len(sleeps) == 5 and all(s > 0 for s in sleeps)
    assert result.output.rstrip().splitlines()[-1].startswith("503 ")
    assert j.store.db.execute("SELECT COUNT(*) FROM push_records").fetchone()[0] == 0
