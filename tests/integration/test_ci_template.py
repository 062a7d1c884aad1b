"""``templates/registry-janitor.gitlab-ci.yml``: the script lines of its hidden jobs, run as a GitLab runner
runs them (one POSIX sh, ``-e``, the job's CI_* variables in the environment) with real curl, against a served
janitor, the real registry and the GitLab stand-in; and against small servers that answer what a janitor
answers when it is in trouble."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask, jsonify, request
from support.images import push_image, tags
from support.janitor import SECRET, registry_section
from support.servers import ServerThread

TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "registry-janitor.gitlab-ci.yml"
SH = "/bin/sh"


class Reference(list[str]):
    """GitLab's ``!reference [job, key]``."""


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!reference", lambda loader, node: Reference(loader.construct_sequence(node)))


def load_template() -> dict[str, Any]:
    loaded = yaml.load(TEMPLATE.read_text(), Loader=_Loader)  # SafeLoader plus !reference
    assert isinstance(loaded, dict)
    return loaded


def script_lines(config: dict[str, Any], job: str) -> list[str]:
    """A job's ``script`` as GitLab expands it: ``!reference`` resolved, nested lists flattened."""
    def expand(item: Any, depth: int = 0) -> list[str]:
        assert depth < 10, "GitLab nests script lists at most 10 levels deep"
        if isinstance(item, Reference):
            target: Any = config
            for key in item:
                target = target[key]
            return expand(target, depth + 1)
        if isinstance(item, list):
            return [line for part in item for line in expand(part, depth + 1)]
        assert isinstance(item, str), f"a script line must be a string, got {item!r}"
        return [item]

    return expand(config[job]["script"])


def run_job(job: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``job``'s script lines in one ``sh -e``, with only the job's variables (no proxy settings: every
    request goes to localhost)."""
    script = "\n".join(script_lines(load_template(), job))
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", **env}
    return subprocess.run([SH, "-e", "-c", script], env=clean, capture_output=True, text=True, timeout=timeout,
                          check=False)


def job_env(token: str, url: str, registry_image: str, ref_slug: str, **extra: str) -> dict[str, str]:
    """What GitLab sets in a job (the part the template reads), plus the project's JANITOR_* variables."""
    return {"CI": "true", "GITLAB_CI": "true", "CI_JOB_TOKEN": token, "CI_REGISTRY_IMAGE": registry_image,
            "CI_COMMIT_REF_SLUG": ref_slug, "CI_COMMIT_REF_NAME": ref_slug, "CI_PIPELINE_ID": "77",
            "JANITOR_URL": url, "JANITOR_RETRY_DELAY": "0", **extra}


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_the_shell_is_posix_sh_and_curl_is_there() -> None:
    assert os.path.realpath(SH).endswith(("dash", "busybox")), "run the template under a strict POSIX sh"
    assert shutil.which("curl")


def test_the_template_has_the_two_hidden_jobs_users_extend() -> None:
    config = load_template()
    for job, call in ((".janitor-record", "janitor_call record"), (".janitor-untag", "janitor_call untag")):
        lines = script_lines(config, job)
        assert lines[-1] == call
        assert "JOB-TOKEN: $CI_JOB_TOKEN" in lines[0]
        assert "variables" not in config[job], "job-level variables would override the user's global ones"
    assert set(config) == {".janitor-lib", ".janitor-record", ".janitor-untag"}, "only hidden jobs"


def test_a_job_records_its_push_then_untags_it(janitor, registry, gitlab, project) -> None:
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token, "dry_run": False,
                  "tags": [{"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"}]}],
                registry=registry_section(registry), gitlab={"url": gitlab.url})
    push_image(registry, project.path, ["keep"])
    token = gitlab.add_job(project, pipeline_id=77, ref="feature-a")
    push_image(registry, project.path, ["feature-a"])  # the job's push, after it started
    with ServerThread(j.app) as server:
        env = job_env(token, server.url, f"{registry.host}/{project.path}", "feature-a")
        first = run_job(".janitor-record", env)
        again = run_job(".janitor-record", env)
        untag = run_job(".janitor-untag", env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("registry-janitor: 201 ") and '"recorded"' in first.stdout
    assert again.returncode == 0 and again.stdout.startswith("registry-janitor: 200 ")
    assert token not in first.stdout + first.stderr + untag.stdout + untag.stderr
    assert untag.returncode == 0, untag.stderr
    assert untag.stdout.startswith("registry-janitor: 202 ") and '"untag_id"' in untag.stdout
    j.tick()  # a CI untag runs at once, without the grace period
    assert tags(registry, project.path) == ["keep"]


def test_a_refusal_fails_the_job_even_with_soft_fail(janitor, registry, gitlab, project) -> None:
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token}],
                registry=registry_section(registry), gitlab={"url": gitlab.url})
    token = gitlab.add_job(project, pipeline_id=78, ref="feature-b")
    with ServerThread(j.app) as server:
        foreign = run_job(".janitor-untag", job_env(token, server.url, f"{registry.host}/else/where", "feature-b",
                                                    JANITOR_SOFT_FAIL="true"))
        refused = run_job(".janitor-record", job_env("not-a-job-token", server.url, f"{registry.host}/{project.path}",
                                                     "feature-b", JANITOR_SOFT_FAIL="true"))
    assert foreign.returncode != 0
    assert "registry-janitor: 403 " in foreign.stderr and "asking again would change nothing" in foreign.stderr
    assert "asking again in" not in foreign.stderr, "a 4xx is never retried"
    assert refused.returncode != 0 and "registry-janitor: 401 " in refused.stderr


@pytest.mark.parametrize("soft", [True, False])
def test_an_unreachable_janitor_is_asked_again_then_warns_or_fails(soft: bool) -> None:
    env = job_env("glcbt-job", dead_url(), "registry.example.com/group/app", "feature-c", JANITOR_RETRIES="2",
                  **({"JANITOR_SOFT_FAIL": "true"} if soft else {}))
    result = run_job(".janitor-record", env)
    assert result.stderr.count("asking again in 0s") == 2, result.stderr
    assert "after 3 tries" in result.stderr
    if soft:
        assert result.returncode == 0
        assert "WARNING: could not reach" in result.stderr
    else:
        assert result.returncode != 0
        assert "JANITOR_SOFT_FAIL=true lets the job go on" in result.stderr


def _scripted_janitor(answers: list[tuple[int, dict[str, Any], dict[str, str]]], seen: list[Any]) -> Flask:
    app = Flask("scripted-janitor")

    @app.post("/api/v1/ci/pushes")
    def pushes() -> Any:
        seen.append((request.headers.get("JOB-TOKEN"), request.get_json()))
        status, body, headers = answers[min(len(seen), len(answers)) - 1]
        return jsonify(body), status, headers

    return app


def test_a_503_is_asked_again_after_its_retry_after() -> None:
    down = (503, {"error": "registry_unavailable", "message": "registry down"}, {"Retry-After": "1"})
    seen: list[Any] = []
    app = _scripted_janitor([down, (201, {"status": "recorded", "push_record_id": 1}, {})], seen)
    digest = "sha256:" + "ab" * 32
    with ServerThread(app) as server:
        result = run_job(".janitor-record", job_env("glcbt-job", server.url + "/", "registry.example.com/group/app",
                                                    "feat", JANITOR_RETRY_DELAY="30", JANITOR_DIGEST=digest))
    assert result.returncode == 0, result.stderr
    assert "asking again in 1s (try 1 of 6)" in result.stderr, "Retry-After wins over the backoff"
    assert seen == [("glcbt-job", {"image": "registry.example.com/group/app:feat", "digest": digest})] * 2


@pytest.mark.parametrize("soft", [True, False])
def test_a_5xx_after_the_retries_warns_or_fails(soft: bool) -> None:
    seen: list[Any] = []
    app = _scripted_janitor([(500, {"error": "internal", "message": "boom"}, {})], seen)
    with ServerThread(app) as server:
        result = run_job(".janitor-record", job_env("glcbt-job", server.url, "registry.example.com/group/app", "feat",
                                                    JANITOR_RETRIES="1", JANITOR_SOFT_FAIL=str(soft).lower()))
    assert len(seen) == 2
    assert (result.returncode == 0) is soft, result.stderr
    assert "500 " in result.stderr


def test_a_429_is_retried_but_never_soft_failed() -> None:
    seen: list[Any] = []
    budget = (429, {"error": "ci_untag_budget", "message": "used up"}, {"Retry-After": "3600"})
    app = _scripted_janitor([budget], seen)
    with ServerThread(app) as server:
        result = run_job(".janitor-record", job_env("glcbt-job", server.url, "registry.example.com/group/app", "feat",
                                                    JANITOR_SOFT_FAIL="true"))
    assert len(seen) == 1, "a Retry-After beyond JANITOR_MAX_WAIT is not slept through"
    assert result.returncode != 0 and "429 " in result.stderr


@pytest.mark.parametrize(("env", "message"), [
    ({"JANITOR_URL": ""}, "set JANITOR_URL"),
    ({"JANITOR_URL": "janitor.example.com"}, "must start with https:// or http://"),
    ({"CI_JOB_TOKEN": ""}, "CI_JOB_TOKEN is empty"),
    ({"JANITOR_IMAGE": 'registry.example.com/app:x", "digest": "sha256:0'}, "is not <registry host>/"),
    ({"JANITOR_IMAGES": "registry.example.com/app:*"}, "is not <registry host>/"),
    ({"JANITOR_RETRIES": "many"}, "whole numbers"),
    ({"JANITOR_SOFT_FAIL": "yes"}, "'true' or 'false'"),
    ({"JANITOR_DIGEST": "sha256:abc"}, "64 lowercase hex digits"),
    ({"JANITOR_IMAGES": "registry.example.com/a:x registry.example.com/b:x", "JANITOR_DIGEST": "sha256:" + "0" * 64},
     "the digest of one image"),
])
def test_misuse_fails_before_anything_is_sent_even_with_soft_fail(env: dict[str, str], message: str) -> None:
    seen: list[Any] = []
    app = _scripted_janitor([(201, {"status": "recorded"}, {})], seen)
    with ServerThread(app) as server:
        base = job_env("glcbt-job", server.url, "registry.example.com/group/app", "feat", JANITOR_SOFT_FAIL="true")
        result = run_job(".janitor-record", {**base, **env})
    assert result.returncode != 0
    assert message in result.stderr
    assert seen == []


def test_several_images_are_recorded_one_by_one() -> None:
    seen: list[Any] = []
    app = _scripted_janitor([(201, {"status": "recorded"}, {})], seen)
    images = "registry.example.com/group/app:feat\n  registry.example.com/group/app/builder:feat"
    with ServerThread(app) as server:
        result = run_job(".janitor-record", job_env("glcbt-job", server.url, "unused", "unused", JANITOR_IMAGES=images))
    assert result.returncode == 0, result.stderr
    assert [body["image"] for _, body in seen] == images.split()
