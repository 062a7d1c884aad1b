"""Issue 13: a CI record needs evidence that this job pushed that tag (SPEC 14), else ``409 no_evidence``
and the tag is never the job's to untag. Each kind of evidence on its own, against the real registry and
the GitLab stand-in: the registry's notification of the push arriving while the job runs, GitLab's tag
``created_at`` not older than the job's ``started_at``, a digest the tag did not have when the job started.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from support.images import SEEDED_CREATED, digest_of, push_image, tags
from support.janitor import SECRET, Harness, registry_section
from support.servers import ServerThread, wait_for

from daemon.gitlab.api import GitLabAPI
from daemon.gitlab.errors import GitLabAPIError
from daemon.wiring import build_app

TAG_DETAILS = "GET /api/v4/projects/:id/registry/repositories/:repository_id/tags/:tag_name"
SLUG = {"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"}
AN_HOUR = dt.timedelta(hours=1)


def janitor_for(janitor, registry, gitlab, project, *, notified: bool = False, **entry: Any) -> Harness:
    """``project`` on the real registry, GitLab (the stand-in) vouching for its jobs; ``notified``: the
    registry's notifications are accepted (serve it with ``relayed`` to receive them)."""
    server = {"registry_notification_token": registry.notification_token} if notified else {}
    return janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                     "dry_run": False, "tags": [SLUG], **entry}],
                   registry=registry_section(registry), gitlab={"url": gitlab.url}, server=server)


@contextmanager
def relayed(j: Harness, gitlab) -> Iterator[None]:
    """The janitor served over HTTP, the registry's notifications relayed to it by the stand-in."""
    with ServerThread(j.app, name="janitor") as server:
        gitlab.set_relay(f"{server.url}/webhooks/registry")
        try:
            yield
        finally:
            gitlab.set_relay(None)


def wait_notified(j: Harness, repo: str, tag: str, digest: str) -> None:
    """Wait (for I/O, not for time to pass) until the registry's notification of repo:tag at digest is stored."""

    def arrived() -> bool:
        for (body,) in j.store.db.execute("SELECT body FROM inbox WHERE source = 'registry'").fetchall():
            for event in json.loads(body)["events"]:
                target = event.get("target", {})
                if (target.get("repository"), target.get("tag"), target.get("digest")) == (repo, tag, digest):
                    return True
        return False

    wait_for(arrived, timeout=10, message=f"the registry's notification of {repo}:{tag}")


def notify(j: Harness, payload, repo: str, tag: str, digest: str, at: dt.datetime) -> None:
    """The registry's notification of a push of repo:tag at digest made at ``at``, as the registry sends it."""
    envelope = payload("registry_notification_push_v2")
    event = envelope["events"][0]
    event["timestamp"] = at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    event["target"].update(repository=repo, tag=tag, digest=digest)
    envelope["events"] = [event]
    token = j.settings.server.registry_notification_token
    assert token is not None
    answer = j.client.post("/webhooks/registry", json=envelope,
                           headers={"Authorization": f"Bearer {token.get_secret_value()}"})
    assert answer.status_code == 202, answer.get_json()


def record(j: Harness, token: str, image: str, digest: str | None = None):
    body = {"image": image, **({"digest": digest} if digest else {})}
    return j.client.post("/api/v1/ci/pushes", json=body, headers={"JOB-TOKEN": token})


def untag(j: Harness, token: str, image: str):
    return j.client.post("/api/v1/ci/untag", json={"image": image}, headers={"JOB-TOKEN": token})


def records(j: Harness) -> list[tuple[int, str, str]]:
    rows = j.store.db.execute("SELECT pipeline_id, tag, digest FROM push_records ORDER BY id").fetchall()
    return [tuple(r) for r in rows]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- the refusal ---------------------------------------------------------------------------------------

def test_a_tag_pushed_before_the_job_started_is_409_and_never_the_jobs_to_untag(
        janitor, registry, gitlab, project):
    """Issue 13: a job on feature/evil recorded release-candidate, pushed long before by someone else, then
    untagged it. Nothing shows the job pushed it: no notification since it started, GitLab's created_at
    is older, and the tag had that image before the job started. The record is 409 (with the digest sent,
    too), the untag 403 ``not_owned``, and the image stays."""
    j = janitor_for(janitor, registry, gitlab, project)
    repo, name = project.path, f"{registry.host}/{project.path}:release-candidate"
    released = push_image(registry, repo, ["release-candidate"], created=now() - AN_HOUR)
    evil = gitlab.add_job(project, pipeline_id=666, ref="feature/evil")

    claimed = record(j, evil, name)
    assert claimed.status_code == 409, claimed.get_json()
    answer = claimed.get_json()
    assert answer["error"] == "no_evidence"
    assert f"{repo}:release-candidate" in answer["message"] and "before the job started" in answer["message"]
    assert "what counts" in answer["message"]
    with_digest = record(j, evil, name, released)
    assert (with_digest.status_code, with_digest.get_json()["error"]) == (409, "no_evidence")
    assert records(j) == [] and j.store.get_pipeline(repo, 666) is None

    refused = untag(j, evil, name)
    assert (refused.status_code, refused.get_json()["error"]) == (403, "not_owned")
    j.tick()
    assert tags(registry, repo) == ["release-candidate"] and digest_of(registry, repo, "release-candidate") == released
    assert j.store.list_untags() == []


def test_a_notification_of_that_image_before_the_job_started_is_no_evidence(
        janitor, registry, gitlab, project, payload):
    """The janitor saw release-candidate pushed at this image an hour ago: the tag had it before the job."""
    j = janitor_for(janitor, registry, gitlab, project, notified=True)
    repo, name = project.path, f"{registry.host}/{project.path}:release-candidate"
    released = push_image(registry, repo, ["release-candidate"], created=now() - AN_HOUR)
    notify(j, payload, repo, "release-candidate", released, now() - AN_HOUR)
    j.tick()  # applied: the ledger observed it
    evil = gitlab.add_job(project, pipeline_id=667, ref="feature/evil")
    for digest in (None, released):
        claimed = record(j, evil, name, digest)
        assert (claimed.status_code, claimed.get_json()["error"]) == (409, "no_evidence")
        assert f"notified at {released} before the job started" in claimed.get_json()["message"]
    assert records(j) == []


def test_a_notification_of_a_push_before_the_job_started_is_no_evidence(janitor, registry, gitlab, project):
    """The registry's real notification, relayed and stored, of a push 10 minutes before the job started."""
    j = janitor_for(janitor, registry, gitlab, project, notified=True)
    repo = project.path
    with relayed(j, gitlab):
        pushed = push_image(registry, repo, ["feature-evil"], created=now() - AN_HOUR)
        wait_notified(j, repo, "feature-evil", pushed)
    job = gitlab.add_job(project, pipeline_id=668, ref="feature/evil", started_at=now() + dt.timedelta(minutes=10))
    claimed = record(j, job, f"{registry.host}/{repo}:feature-evil")
    assert (claimed.status_code, claimed.get_json()["error"]) == (409, "no_evidence")
    assert records(j) == []


# -- evidence: the registry's notification -------------------------------------------------------------

def test_the_registrys_notification_of_the_push_while_the_job_runs_is_evidence(janitor, registry, gitlab, project):
    """Notified before the worker applied it (waiting in the inbox), or after (observed): either counts,
    and GitLab is not asked."""
    j = janitor_for(janitor, registry, gitlab, project, notified=True)
    repo = project.path
    job = gitlab.add_job(project, pipeline_id=70, ref="feat")
    with relayed(j, gitlab):
        pushed = push_image(registry, repo, ["feat", "also"], created=SEEDED_CREATED)  # a reproducible build
        wait_notified(j, repo, "feat", pushed)
        wait_notified(j, repo, "also", pushed)
    waiting = record(j, job, f"{registry.host}/{repo}:feat")
    assert waiting.status_code == 201, waiting.get_json()
    assert waiting.get_json()["evidence"] == "registry_notification"
    j.tick()  # the worker applies the notifications: now observations in the ledger
    observed = record(j, job, f"{registry.host}/{repo}:also", pushed)
    assert observed.status_code == 201 and observed.get_json()["evidence"] == "registry_notification"
    assert records(j) == [(70, "feat", pushed), (70, "also", pushed)]
    assert gitlab.calls[TAG_DETAILS] == 0


def test_a_notified_push_of_another_image_is_no_evidence_for_this_one(janitor, registry, gitlab, project, payload):
    j = janitor_for(janitor, registry, gitlab, project, notified=True)
    repo = project.path
    job = gitlab.add_job(project, pipeline_id=71, ref="feat")
    pushed = push_image(registry, repo, ["feat"], created=now() - AN_HOUR)
    notify(j, payload, repo, "feat", "sha256:" + "e" * 64, now())
    claimed = record(j, job, f"{registry.host}/{repo}:feat", pushed)
    assert (claimed.status_code, claimed.get_json()["error"]) == (409, "no_evidence")


def test_the_janitors_own_pushes_are_no_evidence(janitor, registry, gitlab, project, payload):
    """A placeholder or restore the janitor pushed notifies too; it is nobody's push."""
    j = janitor_for(janitor, registry, gitlab, project, notified=True)
    repo = project.path
    job = gitlab.add_job(project, pipeline_id=72, ref="feat")
    pushed = push_image(registry, repo, ["feat"], created=now() - AN_HOUR)
    envelope = payload("registry_notification_push_v2")
    event = envelope["events"][0]
    event["timestamp"] = now().isoformat().replace("+00:00", "Z")
    event["target"].update(repository=repo, tag="feat", digest=pushed)
    event["request"]["useragent"] = "registry-janitor/1.0"
    envelope["events"] = [event]
    headers = {"Authorization": f"Bearer {registry.notification_token}"}
    assert j.client.post("/webhooks/registry", json=envelope, headers=headers).status_code == 202
    claimed = record(j, job, f"{registry.host}/{repo}:feat")
    assert (claimed.status_code, claimed.get_json()["error"]) == (409, "no_evidence")


# -- evidence: GitLab's created_at -------------------------------------------------------------------

def test_an_image_gitlab_says_was_created_after_the_job_started_is_evidence(janitor, registry, gitlab, project):
    """No notifications: GitLab's tag details (the image config's creation time) show the job built it."""
    j = janitor_for(janitor, registry, gitlab, project)
    repo = project.path
    job = gitlab.add_job(project, pipeline_id=73, ref="feat")
    pushed = push_image(registry, repo, ["feat", "sent"])
    read = record(j, job, f"{registry.host}/{repo}:feat")
    assert read.status_code == 201, read.get_json()
    assert read.get_json()["evidence"] == "gitlab_created_at"
    sent = record(j, job, f"{registry.host}/{repo}:sent", pushed)
    assert sent.status_code == 201 and sent.get_json()["evidence"] == "gitlab_created_at"
    assert records(j) == [(73, "feat", pushed), (73, "sent", pushed)]
    assert gitlab.calls[TAG_DETAILS] == 2


def test_an_image_built_before_the_job_started_is_no_evidence_by_gitlab(janitor, registry, gitlab, project):
    """A reproducible build (or an image pulled and pushed again) is older than the job: GitLab's created_at
    shows nothing; the answer says so."""
    j = janitor_for(janitor, registry, gitlab, project)
    repo = project.path
    job = gitlab.add_job(project, pipeline_id=74, ref="feat")
    push_image(registry, repo, ["feat"], seed=74)
    claimed = record(j, job, f"{registry.host}/{repo}:feat")
    assert (claimed.status_code, claimed.get_json()["error"]) == (409, "no_evidence")
    assert "GitLab says the image" in claimed.get_json()["message"]
    assert "2024-01-01T00:00:00Z" in claimed.get_json()["message"]


def test_gitlab_showing_another_image_on_the_tag_is_no_evidence(janitor, registry, gitlab, project):
    j = janitor_for(janitor, registry, gitlab, project)
    repo = project.path
    job = gitlab.add_job(project, pipeline_id=75, ref="feat")
    push_image(registry, repo, ["feat"])
    claimed = record(j, job, f"{registry.host}/{repo}:feat", "sha256:" + "a" * 64)
    assert (claimed.status_code, claimed.get_json()["error"]) == (409, "no_evidence")
    assert f"GitLab shows {repo}:feat at sha256:" in claimed.get_json()["message"]


def test_gitlab_is_asked_with_a_read_api_token(janitor, registry, gitlab, project):
    """GitLab's tag details need read_container_image: the ``read_api`` scope is enough, with the project's
    own token or ``gitlab.api_token``."""
    reader = gitlab.add_token(project, role="reporter", scopes=("read_api",))
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "tags": [SLUG]}],
                registry=registry_section(registry), gitlab={"url": gitlab.url, "api_token": reader})
    job = gitlab.add_job(project, pipeline_id=76, ref="feat")
    pushed = push_image(registry, project.path, ["feat"])
    claimed = record(j, job, f"{registry.host}/{project.path}:feat", pushed)
    assert claimed.status_code == 201 and claimed.get_json()["evidence"] == "gitlab_created_at"


def test_a_token_gitlab_refuses_for_tag_details_is_named_in_the_409(janitor, registry, gitlab, project):
    """A ``read_registry`` token cannot reach GitLab's API (403 insufficient_scope): asking again would not
    help, so 409, saying what GitLab answered."""
    weak = gitlab.add_token(project, role="maintainer", scopes=("read_registry",))
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": weak, "tags": [SLUG]}],
                registry=registry_section(registry), gitlab={"url": gitlab.url})
    job = gitlab.add_job(project, pipeline_id=77, ref="feat")
    push_image(registry, project.path, ["feat"])
    claimed = record(j, job, f"{registry.host}/{project.path}:feat")
    assert (claimed.status_code, claimed.get_json()["error"]) == (409, "no_evidence")
    assert "GitLab could not be asked for the tag's created_at" in claimed.get_json()["message"]
    assert "403" in claimed.get_json()["message"]


class _FailingTagDetails:
    def __init__(self, status: int | None) -> None:
        self.status = status
        self.asked = 0

    def registry_tag(self, project_path: str, token: str, repository: str, tag: str) -> None:
        self.asked += 1
        raise GitLabAPIError(f"GitLab answered {self.status}", self.status)


@pytest.mark.parametrize(("status", "expected"), [(None, 503), (502, 503), (429, 503), (403, 409), (404, 409)])
def test_gitlab_that_cannot_answer_now_is_503_with_retry_after(janitor, registry, gitlab, project, status, expected):
    """When nothing else shows the push, GitLab unreachable, failing or rate limiting is asked again
    (``503`` with ``Retry-After``); GitLab refusing is final (``409``). Nothing is recorded either way."""
    j = janitor_for(janitor, registry, gitlab, project)
    failing = _FailingTagDetails(status)
    app = build_app(j.settings, j.store, clock=j.clock, tag_details=failing)
    job = gitlab.add_job(project, pipeline_id=78, ref="feat")
    push_image(registry, project.path, ["feat"])
    answer = app.test_client().post("/api/v1/ci/pushes", json={"image": f"{registry.host}/{project.path}:feat"},
                                    headers={"JOB-TOKEN": job})
    assert answer.status_code == expected, answer.get_json()
    assert failing.asked == 1
    if expected == 503:
        assert answer.get_json()["error"] == "gitlab_unavailable" and int(answer.headers["Retry-After"]) > 0
    else:
        assert answer.get_json()["error"] == "no_evidence"
    assert records(j) == []


# -- evidence: a digest the tag did not have when the job started ------------------------------------------

def test_a_digest_the_tag_did_not_have_when_the_job_started_is_evidence(
        janitor, registry, gitlab, project, payload):
    """The janitor last saw feat at another image before the job started; feat points at the job's digest
    now, though neither its notification nor a fresh created_at (a reproducible build) shows it."""
    j = janitor_for(janitor, registry, gitlab, project, notified=True)
    repo, name = project.path, f"{registry.host}/{project.path}:feat"
    before = push_image(registry, repo, ["feat"], seed=7900)
    notify(j, payload, repo, "feat", before, now() - AN_HOUR)
    job = gitlab.add_job(project, pipeline_id=79, ref="feat")
    pushed = push_image(registry, repo, ["feat"], seed=7901)  # the job's push, not notified (yet)
    sent = record(j, job, name, pushed)
    assert sent.status_code == 201, sent.get_json()
    assert sent.get_json()["evidence"] == "digest_changed"
    again = record(j, job, name)  # the digest read from the registry, the same evidence
    assert again.status_code == 200 and again.get_json()["evidence"] == "digest_changed"
    assert records(j) == [(79, "feat", pushed)]
    assert gitlab.calls[TAG_DETAILS] == 0


def test_a_sent_digest_the_tag_does_not_point_at_is_no_evidence(janitor, registry, gitlab, project, payload):
    """Another digest before the job started, but the tag does not point at the one sent: nothing shows
    the job pushed it (a digest guessed ahead of someone else's push proves nothing)."""
    j = janitor_for(janitor, registry, gitlab, project, notified=True)
    repo, name = project.path, f"{registry.host}/{project.path}:feat"
    before = push_image(registry, repo, ["feat"], seed=8000)
    notify(j, payload, repo, "feat", before, now() - AN_HOUR)
    job = gitlab.add_job(project, pipeline_id=80, ref="feat")
    claimed = record(j, job, name, "sha256:" + "b" * 64)
    assert (claimed.status_code, claimed.get_json()["error"]) == (409, "no_evidence")
    assert f"{repo}:feat points at {before} now" in claimed.get_json()["message"]
    assert records(j) == []


# -- GitLab's answers, as the janitor reads them ------------------------------------------------------------

def test_the_job_answer_gives_started_at_and_the_tag_details_give_created_at(registry, gitlab, project):
    started = dt.datetime(2030, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC)
    job = GitLabAPI(gitlab.url).verify_job(gitlab.add_job(project, pipeline_id=81, ref="feat", started_at=started))
    assert job.started_at == started.timestamp()

    client = GitLabAPI(gitlab.url)
    built = dt.datetime(2031, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    pushed = push_image(registry, project.path, ["feat"], created=built)
    details = client.registry_tag(project.path, project.token, project.path, "feat")
    assert details is not None and (details.digest, details.created_at) == (pushed, built.timestamp())
    assert client.registry_tag(project.path, project.token, project.path, "nothing") is None
    assert client.registry_tag(project.path, project.token, f"{project.path}/none", "feat") is None
    weak = gitlab.add_token(project, scopes=("read_registry",))
    with pytest.raises(GitLabAPIError) as refused:
        client.registry_tag(project.path, weak, project.path, "feat")
    assert refused.value.status == 403
