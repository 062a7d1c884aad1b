"""POST /api/v1/ci/pushes: a CI job records what it pushed. GitLab (the stand-in) vouches for the job;
the registry is real. A digest the job did not send is read from the registry before the job is
answered (SPEC 14), so what the tag points at then is what the job pushed. Every record needs evidence
that the job pushed it (test_ci_evidence.py has each kind): here jobs start before their pushes, and
GitLab's created_at of the image, or the registry's notification of the push, shows it."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from flask import Flask, Response
from support.images import digest_of, push_image, tags
from support.janitor import REGISTRY_NOTIFY, SECRET, mr_hook, pipeline_hook, push_hook, registry_section
from support.servers import ServerThread, wait_for

from daemon.domain.model import Pipeline

GRACE = 60.0
SHA = "fade0123" + "0" * 32
PATTERNS = [
    {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"},
    {"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"},
    {"pattern": "cache-$CI_PIPELINE_ID", "lifetime": "pipeline"},
    {"pattern": "preview-$CI_COMMIT_SHORT_SHA", "ttl": "2h"},
]


def build(janitor, registry, gitlab, project, **extra):
    """From the ``janitor`` factory: ``project`` on the real registry, GitLab vouching for its jobs, the
    registry's notifications accepted (``relayed`` brings them)."""
    return janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                     "dry_run": False, "grace_period": "1m", "tags": PATTERNS, **extra}],
                   registry=registry_section(registry), gitlab={"url": gitlab.url},
                   server={"registry_notification_token": registry.notification_token})


@contextmanager
def relayed(j, gitlab) -> Iterator[None]:
    """The janitor served over HTTP, the registry's notifications relayed to it by the stand-in."""
    with ServerThread(j.app, name="janitor") as server:
        gitlab.set_relay(f"{server.url}/webhooks/registry")
        try:
            yield
        finally:
            gitlab.set_relay(None)


def wait_notified(j, repo, tag, digest):
    """Wait (for I/O, not for time to pass) until the registry's notification of repo:tag at digest is stored."""

    def arrived():
        for (body,) in j.store.db.execute("SELECT body FROM inbox WHERE source = 'registry'").fetchall():
            for event in json.loads(body)["events"]:
                target = event.get("target", {})
                if (target.get("repository"), target.get("tag"), target.get("digest")) == (repo, tag, digest):
                    return True
        return False

    wait_for(arrived, timeout=10, message=f"the registry's notification of {repo}:{tag}")


def record_push(janitor, token, body):
    headers = {} if token is None else {"JOB-TOKEN": token}
    if isinstance(body, bytes):
        return janitor.client.post("/api/v1/ci/pushes", data=body, headers=headers,
                                   content_type="application/json")
    return janitor.client.post("/api/v1/ci/pushes", json=body, headers=headers)


def image(registry, repo, tag):
    return f"{registry.host}/{repo}:{tag}"


def all_records(janitor):
    rows = janitor.store.db.execute("SELECT id FROM push_records ORDER BY id").fetchall()
    return [janitor.store.record(r[0]) for r in rows]


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def elsewhere(janitor, registry, gitlab, project, registry_url, **entry):
    """A janitor whose ``registry.url`` is ``registry_url``; images still name the test registry's host."""
    return janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                     "dry_run": False, "tags": PATTERNS, **entry}],
                   registry={"url": registry_url, "hostnames": [registry.host], "requests_per_second": 0},
                   gitlab={"url": gitlab.url})


# -- answers -----------------------------------------------------------------------------------------

def test_first_record_is_201_and_the_same_again_is_200(janitor, registry, gitlab, project):
    j = build(janitor, registry, gitlab, project)
    token = gitlab.add_job(project, pipeline_id=70, ref="feat")
    digest = push_image(registry, project.path, ["feat"])
    first = record_push(j, token, {"image": image(registry, project.path, "feat")})
    assert first.status_code == 201, first.get_json()
    assert first.get_json()["status"] == "recorded" and first.get_json()["lifetime"] == "branch"
    again = record_push(j, token, {"image": image(registry, project.path, "feat")})
    assert again.status_code == 200 and again.get_json()["status"] == "already_recorded"
    assert again.get_json()["push_record_id"] == first.get_json()["push_record_id"]
    (record,) = all_records(j)
    assert (record.pipeline_id, record.ref, record.source, record.state, record.digest) == (
        70, "feat", "ci", "confirmed", digest)


def test_project_pipeline_and_ref_come_from_gitlab_not_the_body(janitor, registry, gitlab, project):
    j = build(janitor, registry, gitlab, project)
    token = gitlab.add_job(project, pipeline_id=71, ref="feat")
    push_image(registry, project.path, ["feat"])
    body = {"image": image(registry, project.path, "feat"), "project": "other/project",
            "pipeline_id": 999, "ref": "main", "sha": "0" * 40, "mr_iid": 5}
    assert record_push(j, token, body).status_code == 201
    (record,) = all_records(j)
    assert (record.project_path, record.pipeline_id, record.ref, record.mr_iid) == (project.path, 71, "feat", None)


@pytest.mark.parametrize("token", [None, "", "glcbt-not-a-job", "finished"])
def test_a_job_token_gitlab_does_not_vouch_for_is_401(janitor, registry, gitlab, project, token):
    j = build(janitor, registry, gitlab, project)
    if token == "finished":  # GitLab revokes a job's token when the job ends
        token = gitlab.add_job(project, pipeline_id=72, ref="feat")
        gitlab.set_job_status(token, "success")
    response = record_push(j, token, {"image": image(registry, project.path, "feat")})
    assert response.status_code == 401
    assert response.get_json()["error"].startswith("job_token") and response.get_json()["message"]
    assert all_records(j) == []


@pytest.mark.parametrize("repository", [
    "someone-else/app",
    "{path}-evil",          # a name that merely starts like the project's path
    "{group}/other",        # a neighbour in the same group
])
def test_a_repository_outside_the_jobs_project_is_403_and_nothing_is_recorded(
        janitor, registry, gitlab, project, repository):
    j = build(janitor, registry, gitlab, project)
    token = gitlab.add_job(project, pipeline_id=73, ref="feat")
    repo = repository.format(path=project.path, group=project.path.split("/")[0])
    response = record_push(j, token, {"image": image(registry, repo, "feat")})
    assert response.status_code == 403 and response.get_json()["error"] == "out_of_scope"
    assert all_records(j) == []


def test_a_project_the_janitor_does_not_clean_is_403(janitor, project, registry, gitlab):
    j = build(janitor, registry, gitlab, project)
    stranger = gitlab.add_project("not/configured")
    token = gitlab.add_job(stranger, pipeline_id=74, ref="feat")
    response = record_push(j, token, {"image": image(registry, stranger.path, "feat")})
    assert response.status_code == 403
    assert all_records(j) == []


@pytest.mark.parametrize("body", [
    {"image": "no-host-or-tag"},
    {"image": "{host}/{repo}"},                     # no tag
    {"image": "{host}/{repo}@sha256:" + "a" * 64},   # a digest, not a tag
    {"image": "{host}/{repo}:"},
    {"image": "{host}/{repo}:bad/tag"},
    {"image": "{host}/{repo}:-leading-dash"},
    {"image": "{host}/Upper/Case:tag"},
    {"image": "registry.elsewhere.example/{repo}:tag"},   # host not in registry.hostnames
    {"image": "{host}/{repo}:tag", "digest": "md5:abc"},
    {"image": "{host}/{repo}:tag", "digest": 12},
    {"image": 42},
    {"tag": "feat"},
    [],
    b"{not json",
    b"",
])
def test_malformed_bodies_are_400(janitor, registry, gitlab, project, body):
    j = build(janitor, registry, gitlab, project)
    token = gitlab.add_job(project, pipeline_id=75, ref="feat")
    if isinstance(body, dict):
        body = {k: v.format(host=registry.host, repo=project.path) if isinstance(v, str) else v
                for k, v in body.items()}
    response = record_push(j, token, body)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"] == "malformed" and response.get_json()["message"]
    assert all_records(j) == []


def test_a_bad_token_answers_before_a_bad_body(janitor, registry, gitlab, project):
    j = build(janitor, registry, gitlab, project)
    assert record_push(j, "glcbt-nobody", {"image": 42}).status_code == 401


# -- digests -------------------------------------------------------------------------------------------

def test_a_digest_the_job_did_not_send_is_read_with_one_head_before_the_answer(
        janitor, registry, gitlab, project):
    j = build(janitor, registry, gitlab, project)
    token = gitlab.add_job(project, pipeline_id=76, ref="feat")
    with relayed(j, gitlab):  # the evidence: the registry's notification of the job's push
        digest = push_image(registry, project.path, ["feat", "other"])
        wait_notified(j, project.path, "feat", digest)
    registry.mark()
    assert record_push(j, token, {"image": image(registry, project.path, "feat")}).status_code == 201
    (record,) = all_records(j)  # no worker tick: the answer came with the digest recorded
    assert (record.state, record.digest, record.source) == ("confirmed", digest, "ci")
    reads = [(r.method, r.path, r.status) for r in registry.request_log(repo=project.path)]
    assert [r for r in reads if r[2] != 401] == [("HEAD", f"/v2/{project.path}/manifests/feat", 200)]
    assert {method for method, _, _ in reads} == {"HEAD"}  # read only: nothing else reached the registry


def test_a_tag_the_registry_does_not_hold_is_409_and_nothing_is_recorded(janitor, registry, gitlab, project):
    """SPEC 7: 409 when nothing shows that this job pushed that tag."""
    j = build(janitor, registry, gitlab, project)
    push_image(registry, project.path, ["other"])
    token = gitlab.add_job(project, pipeline_id=76, ref="feat")
    response = record_push(j, token, {"image": image(registry, project.path, "never-pushed")})
    assert response.status_code == 409
    assert response.get_json()["error"] == "tag_not_found"
    assert f"{project.path}:never-pushed" in response.get_json()["message"]
    assert all_records(j) == [] and j.store.get_pipeline(project.path, 76) is None


def test_a_digest_sent_by_the_job_is_recorded_as_is(janitor, registry, gitlab, project):
    j = build(janitor, registry, gitlab, project)
    token = gitlab.add_job(project, pipeline_id=77, ref="feat")
    with relayed(j, gitlab):  # the evidence: the registry's notification of the job's push
        digest = push_image(registry, project.path, ["feat"])
        wait_notified(j, project.path, "feat", digest)
    body = {"image": image(registry, project.path, "feat"), "digest": digest}
    registry.mark()
    assert record_push(j, token, body).status_code == 201
    (record,) = all_records(j)
    assert (record.state, record.digest) == ("confirmed", digest)
    assert registry.request_log(repo=project.path) == []  # the registry is not asked


def test_a_digest_sent_by_the_job_needs_no_registry(janitor, registry, gitlab, project, payload):
    j = elsewhere(janitor, registry, gitlab, project, f"http://127.0.0.1:{closed_port()}")
    token = gitlab.add_job(project, pipeline_id=77, ref="feat")
    # the evidence: the registry notified the janitor of the job's push, as it sends it
    envelope = payload("registry_notification_push_v2")
    envelope["events"] = envelope["events"][:1]
    envelope["events"][0]["timestamp"] = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    envelope["events"][0]["target"].update(repository=project.path, tag="feat", digest="sha256:" + "d" * 64)
    notified = j.client.post("/webhooks/registry", json=envelope,
                             headers={"Authorization": f"Bearer {REGISTRY_NOTIFY}"})
    assert notified.status_code == 202, notified.get_json()
    body = {"image": image(registry, project.path, "feat"), "digest": "sha256:" + "d" * 64}
    assert record_push(j, token, body).status_code == 201
    (record,) = all_records(j)
    assert (record.state, record.digest) == ("confirmed", "sha256:" + "d" * 64)


def test_an_unreachable_registry_is_503_with_retry_after_and_nothing_is_recorded(
        janitor, registry, gitlab, project):
    j = elsewhere(janitor, registry, gitlab, project, f"http://127.0.0.1:{closed_port()}")
    token = gitlab.add_job(project, pipeline_id=88, ref="feat")
    started = time.monotonic()
    response = record_push(j, token, {"image": image(registry, project.path, "feat")})
    assert time.monotonic() - started < 10, "one short read, no long retries"
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert response.get_json()["error"] == "registry_unavailable" and response.get_json()["message"]
    assert all_records(j) == [] and j.store.get_pipeline(project.path, 88) is None


@pytest.mark.parametrize(("status", "headers"), [(503, {}), (500, {}), (429, {"Retry-After": "120"})])
def test_a_registry_answering_5xx_or_429_is_503_after_one_short_retry_at_most(
        janitor, registry, gitlab, project, status, headers):
    seen: list[str] = []
    failing = Flask("failing-registry")

    @failing.route("/v2/", defaults={"rest": ""}, methods=["GET", "HEAD"])
    @failing.route("/v2/<path:rest>", methods=["GET", "HEAD"])
    def answer(rest: str) -> Response:
        seen.append(rest)
        return Response(status=status, headers=headers)

    with ServerThread(failing) as server:
        j = elsewhere(janitor, registry, gitlab, project, server.url)
        token = gitlab.add_job(project, pipeline_id=89, ref="feat")
        response = record_push(j, token, {"image": image(registry, project.path, "feat")})
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.get_json()["error"] == "registry_unavailable"
    assert seen and set(seen) == {f"{project.path}/manifests/feat"} and len(seen) <= 2
    assert all_records(j) == []


def test_without_a_registry_token_the_job_is_told_to_send_the_digest(janitor, registry, gitlab, project):
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "tags": PATTERNS}],
                registry=registry_section(registry), gitlab={"url": gitlab.url},
                server={"registry_notification_token": registry.notification_token})
    token = gitlab.add_job(project, pipeline_id=90, ref="feat")
    with relayed(j, gitlab):  # the evidence: without a token for GitLab, the registry's notification
        digest = push_image(registry, project.path, ["feat"])
        wait_notified(j, project.path, "feat", digest)
    response = record_push(j, token, {"image": image(registry, project.path, "feat")})
    assert response.status_code == 409 and response.get_json()["error"] == "digest_required"
    message = response.get_json()["message"]
    assert "registry_token" in message and '"digest"' in message
    assert all_records(j) == []
    body = {"image": image(registry, project.path, "feat"), "digest": digest}
    assert record_push(j, token, body).status_code == 201


def test_a_registry_token_the_registry_refuses_tells_the_job_to_send_the_digest(
        janitor, registry, gitlab, project):
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": "glpat-not-a-token",
                  "tags": PATTERNS}], registry=registry_section(registry), gitlab={"url": gitlab.url})
    push_image(registry, project.path, ["feat"])
    token = gitlab.add_job(project, pipeline_id=91, ref="feat")
    response = record_push(j, token, {"image": image(registry, project.path, "feat")})
    assert response.status_code == 409 and response.get_json()["error"] == "digest_required"
    assert "registry_token" in response.get_json()["message"]
    assert all_records(j) == []


def test_a_record_made_without_a_digest_by_an_older_janitor_is_still_resolved(janitor, registry, gitlab, project):
    """Records stored before the gate read digests itself may wait in a database: the worker ends them."""
    j = build(janitor, registry, gitlab, project)
    digest = push_image(registry, project.path, ["feat"])
    pipeline = Pipeline(project.path, 92, "feat", SHA, "running", created_at=j.clock())
    j.store.upsert_pipeline(pipeline, j.clock())
    for tag in ("feat", "never-pushed"):
        j.store.add_record(project_path=project.path, pipeline=pipeline, repository=project.path, tag=tag,
                           digest=None, lifetime="branch", ttl_seconds=None, state="expected", source="ci",
                           now=j.clock())
    j.tick()
    by_tag = {r.tag: r for r in all_records(j)}
    assert (by_tag["feat"].state, by_tag["feat"].digest) == ("confirmed", digest)
    assert (by_tag["never-pushed"].state, by_tag["never-pushed"].digest) == ("dropped", None)


def test_a_push_after_the_record_is_not_the_jobs_and_stays(janitor, registry, gitlab, project):
    """Issue 11 (S3 at record time): the job records mr-1 without a digest; one second later another
    image is pushed to mr-1 by hand; the branch is deleted. The job's record holds the digest the tag had
    when the job was answered, so the hand-pushed image stays and the untag is ``skipped: superseded``."""
    j = build(janitor, registry, gitlab, project)
    repo = project.path
    j.hook("Merge Request Hook", mr_hook(repo, iid=1, source_branch="feat-1", action="open"))
    j.tick()
    token = gitlab.add_job(project, pipeline_id=93, ref="refs/merge-requests/1/head", sha=SHA)
    pushed = push_image(registry, repo, ["mr-1"])
    answer = record_push(j, token, {"image": image(registry, repo, "mr-1")})
    assert answer.status_code == 201, answer.get_json()
    (record,) = all_records(j)
    assert (record.tag, record.state, record.digest, record.ref) == ("mr-1", "confirmed", pushed, "feat-1")

    time.sleep(1.0)
    j.clock.advance(1.0)
    by_hand = push_image(registry, repo, ["mr-1"])
    assert by_hand != pushed
    j.tick()  # the worker's turn: it leaves the job's record as the job was answered
    assert j.store.record(record.id).digest == pushed

    j.hook("Push Hook", push_hook(repo, ref="feat-1", deleted=True))
    j.tick()
    j.tick(advance=GRACE + 1)
    assert tags(registry, repo) == ["mr-1"] and digest_of(registry, repo, "mr-1") == by_hand
    (untag,) = [u for u in j.store.list_untags() if u.tag == "mr-1"]
    assert (untag.outcome, untag.reason, untag.expected_digest) == ("skipped", "superseded", pushed)


# -- job verification is cached --------------------------------------------------------------------------

def test_job_verifications_are_cached(janitor, registry, gitlab, project):
    j = build(janitor, registry, gitlab, project)
    first = gitlab.add_job(project, pipeline_id=78, ref="feat")
    push_image(registry, project.path, ["a", "b", "c"])
    for tag in ("a", "b", "c", "a"):
        assert record_push(j, first, {"image": image(registry, project.path, tag)}).status_code in (200, 201)
    assert gitlab.calls["GET /api/v4/job"] == 1
    second = gitlab.add_job(project, pipeline_id=78, ref="feat", name="test")
    push_image(registry, project.path, ["d"])
    assert record_push(j, second, {"image": image(registry, project.path, "d")}).status_code == 201
    assert gitlab.calls["GET /api/v4/job"] == 2
    for _ in range(3):  # refusals are not cached as successes; they are kept as refusals (asked once)
        assert record_push(j, "glcbt-nobody", {"image": image(registry, project.path, "e")}).status_code == 401
    assert gitlab.calls["GET /api/v4/job"] == 3


# -- lifetimes ---------------------------------------------------------------------------------------------

def test_lifetime_from_the_matching_pattern_else_default_lifetime(janitor, registry, gitlab, project):
    j = build(janitor, registry, gitlab, project, default_lifetime="branch")
    token = gitlab.add_job(project, pipeline_id=79, ref="feat", sha=SHA)
    push_image(registry, project.path, ["cache-79", "preview-fade0123", "feat", "custom-build"])
    answers = {}
    for tag in ("cache-79", "preview-fade0123", "feat", "custom-build"):
        response = record_push(j, token, {"image": image(registry, project.path, tag)})
        answers[tag] = response.get_json()["lifetime"]
    assert answers == {"cache-79": "pipeline", "preview-fade0123": "ttl", "feat": "branch",
                       "custom-build": "branch"}
    by_tag = {r.tag: r for r in all_records(j)}
    assert by_tag["preview-fade0123"].ttl_seconds == 7200
    assert by_tag["custom-build"].ttl_seconds is None


def test_a_ci_push_matching_no_pattern_goes_with_its_default_lifetime(janitor, registry, gitlab, project):
    # default_lifetime is merge_request: the MR's end (by source branch here) removes it
    j = build(janitor, registry, gitlab, project)
    repo = project.path
    keep = push_image(registry, repo, ["keep"])
    token = gitlab.add_job(project, pipeline_id=80, ref="feat")
    push_image(registry, repo, ["custom-build"])
    assert record_push(j, token, {"image": image(registry, repo, "custom-build")}).status_code == 201
    j.tick()
    j.hook("Merge Request Hook", mr_hook(repo, iid=15, source_branch="feat", action="merge"))
    j.tick()
    j.tick(advance=GRACE + 1)
    assert tags(registry, repo) == ["keep"] and digest_of(registry, repo, "keep") == keep


def test_a_ci_recorded_branch_tag_goes_when_the_branch_is_deleted(janitor, registry, gitlab, project):
    j = build(janitor, registry, gitlab, project, default_lifetime="branch")
    repo = project.path
    push_image(registry, repo, ["stays"])
    token = gitlab.add_job(project, pipeline_id=81, ref="feat")
    push_image(registry, repo, ["custom-build", "feat"])
    for tag in ("custom-build", "feat"):
        assert record_push(j, token, {"image": image(registry, repo, tag)}).status_code == 201
    j.tick()
    j.hook("Push Hook", push_hook(repo, ref="feat", deleted=True))
    j.tick()
    j.tick(advance=GRACE + 1)
    assert tags(registry, repo) == ["stays"]


def test_a_ci_record_and_a_pattern_of_the_same_pipeline_are_one_record(janitor, registry, gitlab, project):
    j = build(janitor, registry, gitlab, project)
    repo = project.path
    token = gitlab.add_job(project, pipeline_id=82, ref="feat", sha=SHA)
    digest = push_image(registry, repo, ["feat"])
    assert record_push(j, token, {"image": image(registry, repo, "feat"), "digest": digest}).status_code == 201
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=82, ref="feat", sha=SHA, status="running"))
    j.tick()
    feat = [r for r in all_records(j) if r.tag == "feat"]
    assert [(r.pipeline_id, r.state, r.digest, r.lifetime) for r in feat] == [(82, "confirmed", digest, "branch")]


# -- merge-request refs ------------------------------------------------------------------------------------

def test_a_job_on_refs_merge_requests_head_is_the_mrs(janitor, registry, gitlab, project):
    j = build(janitor, registry, gitlab, project)
    repo = project.path
    j.hook("Merge Request Hook", mr_hook(repo, iid=16, source_branch="feat16", action="open"))
    j.tick()
    token = gitlab.add_job(project, pipeline_id=83, ref="refs/merge-requests/16/head")
    push_image(registry, repo, ["mr-16", "custom-16"])
    for tag in ("mr-16", "custom-16"):
        assert record_push(j, token, {"image": image(registry, repo, tag)}).status_code == 201
    assert {(r.tag, r.ref, r.mr_iid, r.lifetime) for r in all_records(j)} == {
        ("mr-16", "feat16", 16, "merge_request"), ("custom-16", "feat16", 16, "merge_request")}
    j.hook("Merge Request Hook", mr_hook(repo, iid=16, source_branch="feat16", action="merge"))
    j.tick()
    j.tick(advance=GRACE + 1)
    assert tags(registry, repo) == []


def test_a_merge_request_job_recorded_before_any_hook_is_joined_by_the_pipeline_hook(
        janitor, registry, gitlab, project):
    j = build(janitor, registry, gitlab, project)
    repo = project.path
    push_image(registry, repo, ["feat17", "keep"])
    token = gitlab.add_job(project, pipeline_id=84, ref="refs/merge-requests/17/head", sha=SHA)
    push_image(registry, repo, ["mr-17"])
    assert record_push(j, token, {"image": image(registry, repo, "mr-17")}).status_code == 201
    (record,) = all_records(j)
    assert record.mr_iid == 17 and record.lifetime == "merge_request"

    # the pipeline hook, later, says which branch that MR pipeline is for
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=84, ref="feat17", mr_iid=17, sha=SHA,
                                          status="running"))
    j.tick()
    assert j.store.get_pipeline(repo, 84).ref == "feat17"
    by_tag = {r.tag: r for r in all_records(j)}
    assert "feat17" in by_tag, "the ref slug pattern expands to the source branch's slug"
    assert {r.ref for r in by_tag.values()} == {"feat17"}

    j.hook("Push Hook", push_hook(repo, ref="feat17", deleted=True))
    j.tick()
    j.tick(advance=GRACE + 1)
    assert tags(registry, repo) == ["keep"]


def test_a_fork_merge_request_job_is_not_the_targets_same_named_branch(janitor, registry, gitlab, project):
    j = build(janitor, registry, gitlab, project)
    repo = project.path
    fork_open = mr_hook(repo, iid=18, source_branch="feature", action="open")
    fork_open["object_attributes"].update(source_project_id=project.id + 1000, target_project_id=project.id)
    j.hook("Merge Request Hook", fork_open)
    j.tick()
    token = gitlab.add_job(project, pipeline_id=85, ref="refs/merge-requests/18/head")
    push_image(registry, repo, ["mr-18"])
    assert record_push(j, token, {"image": image(registry, repo, "mr-18")}).status_code == 201

    j.hook("Push Hook", push_hook(repo, ref="feature", deleted=True))  # the target's own branch
    j.tick()
    j.tick(advance=GRACE + 1)
    assert tags(registry, repo) == ["mr-18"]

    fork_merge = mr_hook(repo, iid=18, source_branch="feature", action="merge")
    fork_merge["object_attributes"].update(source_project_id=project.id + 1000, target_project_id=project.id)
    j.hook("Merge Request Hook", fork_merge)
    j.tick()
    j.tick(advance=GRACE + 1)
    assert tags(registry, repo) == []


def test_a_fork_merge_request_jobs_ref_slug_tag_gets_the_patterns_lifetime(janitor, registry, gitlab, project):
    """In a fork's MR pipeline run in the target project, GitLab's ``$CI_COMMIT_REF_SLUG`` is the source
    branch's slug (``Ci::Pipeline#source_ref``), so a job recording that tag records it with the
    pattern's lifetime, not the default one."""
    j = build(janitor, registry, gitlab, project, default_lifetime="pipeline")
    repo = project.path
    fork_open = mr_hook(repo, iid=21, source_branch="Fork/Topic", action="open")
    fork_open["object_attributes"].update(source_project_id=project.id + 1000, target_project_id=project.id)
    j.hook("Merge Request Hook", fork_open)
    j.tick()
    token = gitlab.add_job(project, pipeline_id=87, ref="refs/merge-requests/21/head")
    push_image(registry, repo, ["fork-topic"])
    answer = record_push(j, token, {"image": image(registry, repo, "fork-topic")})
    assert answer.status_code == 201 and answer.get_json()["lifetime"] == "branch"


def test_a_merge_request_job_known_only_by_its_pipeline_hook_may_untag_its_own_tag(janitor, registry, gitlab, project):
    # No MR hook was seen (it went to another janitor, or was lost): the pipeline hook alone names
    # the branch of refs/merge-requests/19/head, and the job's own tag is still its own.
    j = build(janitor, registry, gitlab, project)
    repo = project.path
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=86, ref="feat19", mr_iid=19, sha=SHA,
                                          status="running"))
    j.tick()
    push_image(registry, repo, ["keep"])
    token = gitlab.add_job(project, pipeline_id=86, ref="refs/merge-requests/19/head", sha=SHA)
    digest = push_image(registry, repo, ["mr-19"])
    assert record_push(j, token, {"image": image(registry, repo, "mr-19"), "digest": digest}).status_code == 200
    answer = j.client.post("/api/v1/ci/untag", json={"image": image(registry, repo, "mr-19")},
                           headers={"JOB-TOKEN": token})
    assert answer.status_code == 202, answer.get_json()
    j.tick()
    assert tags(registry, repo) == ["keep"]
