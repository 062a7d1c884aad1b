"""GitLab's real delivery semantics against the janitor served over HTTP: the stand-in posts as GitLab
does (tests/support/hook_delivery.py) and keeps each hook's failure count and alert status from the
answers, as `WebHooks::AutoDisabling` does.

- An authentic delivery the janitor has no use for answers 200 ignored, so the hook stays executable;
  the same replay answered with 4xx disables it (for good before GitLab 17.11, after a month of backoff
  since).
- System hooks: one secret for the instance, never pipeline events.
- Delivery keys: per project, `Idempotency-Key`, then `X-Gitlab-Event-UUID`, then the body within a day.
- Ignored deliveries are counted in storage: the metrics, the status and the dashboard agree, in every
  process.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from support import hook_delivery as hd
from support.gitlab_json import Hook, Project
from support.gitlab_standin import GitLabStandin
from support.janitor import SECRET, Harness, load_payload, mr_hook, pipeline_hook, push_hook
from support.ops import BEARER
from support.servers import Recorder, ServerThread

from daemon.cli import main
from daemon.store import schema
from daemon.store.db import connect
from daemon.store.schema import MIGRATIONS, migrate

SYSTEM_SECRET = "instance-system-hook-secret"
UNUSED_EVENTS = ("note_events", "issues_events", "job_events", "releases_events")
USED_EVENTS = ("push_events", "merge_requests_events", "pipeline_events")
USER = {"id": 1, "name": "Administrator", "username": "root", "avatar_url": None, "email": "[REDACTED]"}
LEGACY = (17, 10)  # before 17.11: four failed deliveries in a row disable a hook for good
CURRENT = (18, 0)  # since 17.11: backoff, disabled for good after 40


class StandinClock:
    """The stand-in's clock (`GitLabStandin.now`), moved by hand."""

    def __init__(self) -> None:
        self.at = dt.datetime(2025, 6, 2, 9, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += dt.timedelta(seconds=seconds)


@contextmanager
def served(harness: Harness) -> Iterator[str]:
    """The janitor's web app on a real port, as GitLab reaches it; yields the webhook URL."""
    with ServerThread(harness.app, name="janitor-web") as server:
        yield f"{server.url}/webhooks/gitlab"


def configured(project: Project) -> dict[str, Any]:
    return {"path": project.path, "webhook_secret": SECRET,
            "tags": [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}]}


def attrs(project: Project) -> dict[str, Any]:
    """`Project#hook_attrs`, the `project` block of every project event."""
    web_url = f"https://gitlab.example.com/{project.path}"
    return {"id": project.id, "name": project.name, "description": None, "web_url": web_url, "avatar_url": None,
            "git_ssh_url": f"git@gitlab.example.com:{project.path}.git", "git_http_url": f"{web_url}.git",
            "namespace": project.namespace, "visibility_level": 0, "path_with_namespace": project.path,
            "default_branch": project.default_branch, "ci_config_path": None, "homepage": web_url}


def note_event(project: Project) -> dict[str, Any]:
    """doc/user/project/integrations/webhook_events.md, "Comment on merge request"."""
    return {"object_kind": "note", "event_type": "note", "user": USER, "project_id": project.id,
            "project": attrs(project),
            "object_attributes": {"id": 1244, "note": "This MR needs work.", "noteable_type": "MergeRequest",
                                  "author_id": 1, "created_at": "2015-05-17 18:21:36 UTC",
                                  "updated_at": "2015-05-17 18:21:36 UTC", "project_id": project.id,
                                  "noteable_id": 7, "system": False, "action": "create"},
            "merge_request": {"id": 7, "iid": 1, "source_branch": "feat", "target_branch": "main",
                              "state": "opened", "title": "Feature"}}


def issue_event(project: Project) -> dict[str, Any]:
    """webhook_events.md, "Issue events"."""
    return {"object_kind": "issue", "event_type": "issue", "user": USER, "project": attrs(project),
            "object_attributes": {"id": 301, "iid": 23, "title": "New API: create/update/delete file",
                                  "project_id": project.id, "state": "opened", "action": "open",
                                  "created_at": "2013-12-03T17:15:43Z", "updated_at": "2013-12-03T17:15:43Z"},
            "labels": [], "changes": {}}


def job_event(project: Project) -> dict[str, Any]:
    """webhook_events.md, "Job events" (`Gitlab::DataBuilder::Build`: object_kind `build`)."""
    return {"object_kind": "build", "ref": "main", "tag": False, "before_sha": "0" * 40, "sha": "b" * 40,
            "build_id": 1977, "build_name": "test", "build_stage": "test", "build_status": "success",
            "build_created_at": "2021-02-23T02:41:37.886Z", "build_started_at": None,
            "build_finished_at": None, "build_allow_failure": False, "pipeline_id": 2366,
            "project_id": project.id, "project_name": project.name, "user": USER,
            "commit": {"id": 2366, "sha": "b" * 40, "message": "test\n", "status": "created"},
            "repository": {"name": project.name, "homepage": attrs(project)["homepage"]},
            "project": attrs(project)}


def release_event(project: Project) -> dict[str, Any]:
    """webhook_events.md, "Release events"."""
    return {"object_kind": "release", "id": 1, "created_at": "2020-11-02 12:55:12 UTC",
            "description": "v1.1 has been released", "name": "v1.1", "released_at": "2020-11-02 12:55:12 UTC",
            "tag": "v1.1", "project": attrs(project), "url": f"{attrs(project)['web_url']}/-/releases/v1.1",
            "action": "create", "assets": {"count": 0, "links": [], "sources": []},
            "commit": {"id": "c" * 40, "message": "Release v1.1", "title": "Release v1.1"}}


def replay_unwanted(gitlab: GitLabStandin, project: Project, project_hook: Hook, other: Project,
                    other_hook: Hook) -> list[hd.Delivery]:
    """Authentic deliveries the janitor has no use for, in the order GitLab sends them: events of kinds it
    does not use on the configured project's hook, then the Test button there (the project's first note);
    the events it would use, but of a project no entry configures (a group's other project, a renamed or
    transferred one), then the Test button there once its repository is empty: GitLab's SAMPLE_DATA, which
    names `gitlab/gitlab`."""
    sent: list[hd.Delivery] = []
    for hook_name, data in (("note_hooks", note_event(project)), ("issue_hooks", issue_event(project)),
                            ("job_hooks", job_event(project)), ("release_hooks", release_event(project))):
        sent += gitlab.deliver(project, hook_name, data)
    sent.append(gitlab.test_hook(project_hook, "note_events", note_event(project)))
    sent += gitlab.deliver(other, "pipeline_hooks",
                           pipeline_hook(other.path, pipeline_id=7001, ref="feat", status="running"))
    sent += gitlab.deliver(other, "merge_request_hooks", mr_hook(other.path, iid=3, source_branch="feat",
                                                                 action="open"))
    sent += gitlab.deliver(other, "push_hooks", push_hook(other.path, ref="feat", deleted=False))
    gitlab.delete_branch(other, other.default_branch)
    sent.append(gitlab.test_hook(other_hook, "push_events"))
    return sent


def api_hook(gitlab: GitLabStandin, project: Project, hook: Hook) -> dict[str, Any]:
    """The hook as GitLab's API shows it (`GET /projects/:id/hooks/:hook_id`)."""
    response = requests.get(f"{gitlab.api_url}/projects/{project.id}/hooks/{hook.id}",
                            headers={"PRIVATE-TOKEN": project.token}, timeout=5)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def two_hooks(gitlab: GitLabStandin, project: Project, url: str) -> tuple[Hook, Project, Hook]:
    """The configured project's hook (every event the replay sends) and a hook with the same secret on a
    project no entry configures."""
    project_hook = gitlab.add_hook(project, url, token=SECRET, events=USED_EVENTS + UNUSED_EVENTS)
    other = gitlab.add_project(f"{project.path}-elsewhere")
    return project_hook, other, gitlab.add_hook(other, url, token=SECRET, events=USED_EVENTS)


@pytest.mark.parametrize("version", [LEGACY, CURRENT], ids=["gitlab-17.10", "gitlab-18.0"])
def test_unwanted_but_signed_deliveries_leave_the_hook_executable(janitor, gitlab, project, version):
    """app/models/concerns/web_hooks/auto_disabling.rb, app/services/web_hooks/log_execution_service.rb:
    every 2xx keeps `recent_failures` at 0. The janitor answers each unwanted delivery 200 ignored, with
    its reason, stores none of them and counts them; the hook then still delivers a pipeline event."""
    gitlab.version = version
    gitlab.now = StandinClock()
    j = janitor([configured(project)])
    with served(j) as url:
        project_hook, other, other_hook = two_hooks(gitlab, project, url)
        sent = replay_unwanted(gitlab, project, project_hook, other, other_hook)

        assert len(sent) == 9 and all(d.status == 200 for d in sent), [(d.hook_name, d.status) for d in sent]
        reasons = [(d.data.get("object_kind"), d.answer["status"], d.answer["reason"]) for d in sent]
        assert reasons == [("note", "ignored", "unused_kind"), ("issue", "ignored", "unused_kind"),
                           ("build", "ignored", "unused_kind"), ("release", "ignored", "unused_kind"),
                           ("note", "ignored", "unused_kind"), ("pipeline", "ignored", "unconfigured_project"),
                           ("merge_request", "ignored", "unconfigured_project"),
                           ("push", "ignored", "unconfigured_project"),
                           ("push", "ignored", "unconfigured_project")]
        assert sent[-1].data["project"]["path_with_namespace"] == "gitlab/gitlab"  # GitLab's SAMPLE_DATA
        assert j.store.pending_events() == []
        assert {c.reason: c.count for c in j.store.ignored_counts()} == {"unused_kind": 5,
                                                                         "unconfigured_project": 4}
        for owner, hook in ((project, project_hook), (other, other_hook)):
            assert (hook.recent_failures, hook.disabled_until) == (0, None)
            shown = api_hook(gitlab, owner, hook)
            assert (shown["alert_status"], shown["disabled_until"]) == ("executable", None)

        [pipeline] = gitlab.deliver(project, "pipeline_hooks",
                                    pipeline_hook(project.path, pipeline_id=7002, ref="feat", mr_iid=5))
        assert (pipeline.status, pipeline.answer) == (202, {"status": "stored", "kind": "pipeline"})
        sample = gitlab.test_hook(project_hook, "push_events")  # a push of the default branch's head
        assert (sample.status, sample.answer["status"]) == (202, "stored")
        assert [e.kind for e in j.store.pending_events()] == ["pipeline", "push"]


def test_a_receiver_answering_4xx_loses_the_hook_for_good_before_gitlab_17_11(tmp_path, gitlab, project):
    """Before 17.11 (app/services/web_hook_service.rb `response_category`: a 4xx is `:failed`;
    auto_disabling.rb `failed!`, `permanently_disabled?`): the fourth 4xx in a row disables the hook for
    good. The replay the janitor answers 200, answered 401 instead, disables both hooks; the pipeline
    event after it is never sent, a day later either, and `hooks verify` says so."""
    gitlab.version = LEGACY
    clock = gitlab.now = StandinClock()
    with Recorder(status=401) as refusing:
        url = f"{refusing.url}/webhooks/gitlab"
        project_hook, other, other_hook = two_hooks(gitlab, project, url)
        sent = replay_unwanted(gitlab, project, project_hook, other, other_hook)
        assert [d.status for d in sent] == [401] * 9
        assert [d.alert_status for d in sent] == (["executable"] * 3 + ["disabled"] * 2  # the project's hook
                                                  + ["executable"] * 3 + ["disabled"])  # the other project's
        assert project_hook.recent_failures == 5  # the Test button is sent and counted even when disabled
        assert gitlab.deliver(project, "pipeline_hooks", pipeline_hook(project.path, pipeline_id=7002, ref="feat",
                                                                       mr_iid=5)) == []
        clock.advance(86400)
        assert gitlab.deliver(project, "pipeline_hooks", pipeline_hook(project.path, pipeline_id=7003, ref="feat",
                                                                       mr_iid=5)) == []
        assert api_hook(gitlab, project, project_hook)["alert_status"] == "disabled"
        assert len(refusing.received()) == 9

    config = tmp_path / "janitor.yaml"
    config.write_text(f"gitlab: {{url: '{gitlab.url}'}}\nstorage: {{url: 'sqlite:///{tmp_path / 'j.db'}'}}\n"
                      f"projects: [{{path: '{project.path}', webhook_secret: s, registry_token: '{project.token}'}}]\n")
    verify = CliRunner().invoke(main, ["hooks", "verify", "--config", str(config), "--url", url])
    assert verify.exit_code == 1 and "GitLab has disabled it after failed deliveries" in verify.output, verify.output


def test_a_receiver_answering_4xx_is_backed_off_then_disabled_after_40_since_gitlab_17_11(gitlab, project):
    """Since 17.11 (auto_disabling.rb `backoff!`, `next_backoff`, PERMANENTLY_DISABLED_FAILURE_THRESHOLD
    39): after 4 failures the hook is sent nothing for a minute, doubling up to a day, and the 40th
    failure disables it for good, about a month later."""
    gitlab.version = CURRENT
    clock = gitlab.now = StandinClock()
    start = clock.at
    with Recorder(status=401) as refusing:
        project_hook, other, other_hook = two_hooks(gitlab, project, refusing.url)
        sent = replay_unwanted(gitlab, project, project_hook, other, other_hook)
        assert [d.alert_status for d in sent[:5]] == ["executable"] * 3 + ["temporarily_disabled"] * 2
        assert project_hook.recent_failures == 4  # a Test while backed off changes nothing
        assert project_hook.disabled_until == clock.at + dt.timedelta(minutes=1)
        event = pipeline_hook(project.path, pipeline_id=7002, ref="feat", mr_iid=5)
        assert gitlab.deliver(project, "pipeline_hooks", event) == []
        waits = []
        while gitlab.hook_alert_status(project_hook) != "disabled":
            assert project_hook.disabled_until is not None
            waits.append(project_hook.disabled_until - clock.at)
            clock.at = project_hook.disabled_until + dt.timedelta(seconds=1)
            [failed] = gitlab.deliver(project, "pipeline_hooks", event)
            assert failed.status == 401
        assert project_hook.recent_failures == 40
        assert waits[:3] == [dt.timedelta(minutes=1), dt.timedelta(minutes=2), dt.timedelta(minutes=4)]
        assert max(waits) == dt.timedelta(days=1)
        assert clock.at - start > dt.timedelta(days=25)
        clock.advance(7 * 86400)
        assert gitlab.deliver(project, "pipeline_hooks", event) == []
        assert api_hook(gitlab, project, project_hook)["alert_status"] == "disabled"


def test_the_test_button_answered_200_brings_a_disabled_hook_back(janitor, gitlab, project):
    """app/services/test_hooks/base_service.rb executes with `force: true` and logs inline; a 2xx is
    `enable!`. A hook disabled by a receiver that answered 4xx, pointed at the janitor and tested, is
    executable again even though the janitor ignores the sample (an empty repository's SAMPLE_DATA)."""
    gitlab.version = LEGACY
    gitlab.now = StandinClock()
    j = janitor([configured(project)])
    with Recorder(status=404) as refusing, served(j) as url:
        hook = gitlab.add_hook(project, refusing.url, token=SECRET, events=USED_EVENTS)
        for n in range(4):
            gitlab.deliver(project, "push_hooks", push_hook(project.path, ref=f"topic-{n}", deleted=False))
        assert gitlab.hook_alert_status(hook) == "disabled"
        hook.url = url
        gitlab.delete_branch(project, project.default_branch)
        tested = gitlab.test_hook(hook, "push_events")
        assert (tested.status, tested.answer["reason"]) == (200, "unconfigured_project")
        assert (hook.recent_failures, gitlab.hook_alert_status(hook)) == (0, "executable")
        [merged] = gitlab.deliver(project, "merge_request_hooks",
                                  mr_hook(project.path, iid=5, source_branch="feat", action="merge"))
        assert merged.status == 202


def system_payload(name: str, path: str) -> dict[str, Any]:
    body: dict[str, Any] = load_payload(name)
    body["project"]["path_with_namespace"] = path
    return body


def test_system_hooks_use_the_instance_secret_and_never_carry_pipelines(janitor, gitlab, project, tmp_path):
    """app/models/hooks/system_hook.rb: AVAILABLE_HOOKS are repository update, push, tag push and merge
    request; every delivery is `X-Gitlab-Event: System Hook` with the one token of the instance
    (`gitlab.system_hook_secret`, here from a `_file`). The janitor stores a configured project's events,
    ignores the others and GitLab's Test samples (app/services/test_hooks/system_service.rb: Push and
    Repository SAMPLE_DATA), and the worker applies what it stored."""
    secret_file = tmp_path / "system-hook-secret"
    secret_file.write_text(SYSTEM_SECRET + "\n")
    j = janitor([configured(project)], gitlab={"system_hook_secret_file": str(secret_file)})
    with served(j) as url:
        system = gitlab.add_system_hook(url, token=SYSTEM_SECRET, events=(
            "push_events", "tag_push_events", "merge_requests_events", "repository_update_events"))
        with pytest.raises(ValueError, match="pipeline_hooks"):
            gitlab.deliver_system("pipeline_hooks", pipeline_hook(project.path, pipeline_id=1, ref="feat"))
        sent = [
            *gitlab.deliver_system("merge_request_hooks", system_payload("system_hook_merge_request", project.path)),
            *gitlab.deliver_system("push_hooks", system_payload("system_hook_push", project.path)),
            *gitlab.deliver_system("tag_push_hooks", system_payload("system_hook_tag_push", "elsewhere/app")),
            *gitlab.deliver_system("repository_update_hooks",
                                   system_payload("system_hook_repository_update", project.path)),
            gitlab.test_hook(system, "push_events"),
            gitlab.test_hook(system, "repository_update_events"),
        ]
        assert all(d.headers["X-Gitlab-Event"] == "System Hook" for d in sent)
        assert [(d.status, d.answer["status"], d.answer.get("reason")) for d in sent] == [
            (202, "stored", None), (202, "stored", None), (200, "ignored", "unconfigured_project"),
            (200, "ignored", "unused_kind"), (200, "ignored", "unconfigured_project"),
            (200, "ignored", "unused_kind")]

        # The instance secret speaks only for system hooks: on a project hook's delivery it is refused.
        misused = gitlab.add_hook(project, url, token=SYSTEM_SECRET, events=USED_EVENTS)
        [refused] = gitlab.deliver(project, "merge_request_hooks",
                                   mr_hook(project.path, iid=8, source_branch="x", action="merge"))
        assert (refused.hook_id, refused.status) == (misused.id, 401)

    assert [(e.kind, e.project_path) for e in j.store.pending_events()] == [
        ("merge_request", project.path), ("push", project.path)]
    j.tick()
    assert j.store.pending_events() == []
    assert j.store.db.execute("SELECT COUNT(*) FROM inbox WHERE error IS NOT NULL").fetchone()[0] == 0

    unset = janitor([configured(project)])  # no system_hook_secret: the same delivery matches no secret
    r = unset.client.post("/webhooks/gitlab", json=system_payload("system_hook_push", project.path),
                          headers={"X-Gitlab-Event": "System Hook", "X-Gitlab-Token": SYSTEM_SECRET})
    assert r.status_code == 401 and r.json["error"] == "bad_token"


@pytest.mark.parametrize("version", [(17, 3), (17, 4)], ids=["gitlab-17.3", "gitlab-17.4"])
def test_a_manual_resend_is_the_same_delivery(janitor, gitlab, project, version):
    """app/services/web_hooks/events/resend_service.rb resends the logged data with the log's
    `Idempotency-Key` (17.4+); the `X-Gitlab-Event-UUID` is the resending request's, new every time
    (lib/gitlab/web_hooks/recursion_detection.rb). Before 17.4 only the body shows it is the same
    delivery: within a day it is a duplicate, after a day a new delivery. With a key it stays one."""
    gitlab.version = version
    gitlab.now = StandinClock()
    j = janitor([configured(project)])
    with served(j) as url:
        gitlab.add_hook(project, url, token=SECRET, events=USED_EVENTS)
        [first] = gitlab.deliver(project, "merge_request_hooks",
                                 mr_hook(project.path, iid=4, source_branch="feat", action="merge"))
        again = gitlab.resend(first)
        assert again is not None
        assert again.headers["X-Gitlab-Event-UUID"] != first.headers["X-Gitlab-Event-UUID"]
        assert again.headers.get("Idempotency-Key") == first.headers.get("Idempotency-Key")
        assert ("Idempotency-Key" in first.headers) == (version >= (17, 4))
        assert (first.status, again.status, again.answer["status"]) == (202, 200, "duplicate")
        assert len(j.store.pending_events()) == 1

        j.clock.advance(86400 + 1)
        later = gitlab.resend(first)
        assert later is not None
        if version >= (17, 4):
            assert (later.status, later.answer["status"]) == (200, "duplicate")
            assert len(j.store.pending_events()) == 1
        else:
            assert (later.status, later.answer["status"]) == (202, "stored")
            assert len(j.store.pending_events()) == 2


def test_delivery_keys_are_scoped_by_project(janitor):
    """The same `Idempotency-Key` or `X-Gitlab-Event-UUID` value sent for two projects is two deliveries;
    for the same project, one."""
    j = janitor([{"path": "group/a", "webhook_secret": "secret-a"}, {"path": "group/b", "webhook_secret": "secret-b"}])

    def post(path: str, secret: str, **headers: str) -> Any:
        body = pipeline_hook(path, pipeline_id=11, ref="main")
        return j.client.post("/webhooks/gitlab", json=body,
                             headers={"X-Gitlab-Event": "Pipeline Hook", "X-Gitlab-Token": secret, **headers})

    for header in ("Idempotency-Key", "X-Gitlab-Event-UUID"):
        assert post("group/a", "secret-a", **{header: f"{header}-1"}).status_code == 202
        assert post("group/b", "secret-b", **{header: f"{header}-1"}).status_code == 202
        repeated = post("group/a", "secret-a", **{header: f"{header}-1"})
        assert (repeated.status_code, repeated.json["status"]) == (200, "duplicate")
        j.clock.advance(2 * 86400)  # the next header's round must not meet these bodies within a day
    keys = sorted(r[0] for r in j.store.db.execute("SELECT delivery_key FROM inbox"))
    assert keys == ["gitlab:group/a:idempotency-key:Idempotency-Key-1",
                    "gitlab:group/a:x-gitlab-event-uuid:X-Gitlab-Event-UUID-1",
                    "gitlab:group/b:idempotency-key:Idempotency-Key-1",
                    "gitlab:group/b:x-gitlab-event-uuid:X-Gitlab-Event-UUID-1"]


def test_a_body_without_delivery_headers_is_the_same_delivery_for_a_day(janitor):
    j = janitor()
    body = pipeline_hook("gitlab-org/gitlab-test", pipeline_id=12, ref="main")
    headers = {"X-Gitlab-Event": "Pipeline Hook", "X-Gitlab-Token": SECRET}
    answers = [j.client.post("/webhooks/gitlab", json=body, headers=headers).status_code]
    j.clock.advance(86400 - 1)
    answers.append(j.client.post("/webhooks/gitlab", json=body, headers=headers).status_code)
    j.clock.advance(2)
    answers.append(j.client.post("/webhooks/gitlab", json=body, headers=headers).status_code)
    assert answers == [202, 200, 202]
    assert len(j.store.pending_events()) == 2


def test_stored_keys_of_an_older_janitor_still_find_their_resends(janitor, tmp_path, monkeypatch):
    """The migration that scopes delivery keys rewrites the ones an older janitor stored, so a resend
    after the upgrade is still recognised."""
    path = tmp_path / "older.db"
    older = MIGRATIONS[:MIGRATIONS.index(schema._v9_delivery_keys)]
    monkeypatch.setattr("daemon.store.schema.MIGRATIONS", older)
    db = connect(str(path))
    assert migrate(db) == len(older)
    db.execute("INSERT INTO inbox (delivery_key, source, kind, project_path, headers, body, received_at,"
               " processed_at) VALUES ('gitlab:idempotency-key:k-1', 'gitlab', 'pipeline',"
               " 'gitlab-org/gitlab-test', '{}', x'7b7d', 1.0, 2.0)")
    db.close()
    monkeypatch.undo()
    j = janitor(storage={"url": f"sqlite:///{path}"})
    assert j.store.db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == len(MIGRATIONS)
    assert [r[0] for r in j.store.db.execute("SELECT delivery_key FROM inbox")] == [
        "gitlab:gitlab-org/gitlab-test:idempotency-key:k-1"]
    r = j.client.post("/webhooks/gitlab", json=pipeline_hook("gitlab-org/gitlab-test", pipeline_id=13, ref="main"),
                      headers={"X-Gitlab-Event": "Pipeline Hook", "X-Gitlab-Token": SECRET, "Idempotency-Key": "k-1"})
    assert (r.status_code, r.json["status"]) == (200, "duplicate")


def scrape_ignored(client: Any) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for sample in family.samples if sample.name == "janitor_events_ignored_total"}


def test_ignored_deliveries_are_counted_for_every_process(janitor):
    """One row per reason in storage, so a second web process (gunicorn runs several) reports the same
    counts; the metric, the status JSON and the dashboard agree, and the counts only rise."""
    j = janitor()
    assert scrape_ignored(j.client) == {"unconfigured_project": 0, "unused_kind": 0}
    headers = {"X-Gitlab-Token": SECRET}
    elsewhere = pipeline_hook("someone/else", pipeline_id=21, ref="main")
    for _ in range(3):
        r = j.client.post("/webhooks/gitlab", json=elsewhere, headers={**headers, "X-Gitlab-Event": "Pipeline Hook"})
        assert r.status_code == 200
    note = {"object_kind": "note", "project": {"path_with_namespace": "gitlab-org/gitlab-test"}}
    assert j.client.post("/webhooks/gitlab", json=note, headers={**headers, "X-Gitlab-Event": "Note Hook"}
                         ).status_code == 200

    other_process = janitor(settings=j.settings)
    for client in (j.client, other_process.client):
        assert scrape_ignored(client) == {"unconfigured_project": 3, "unused_kind": 1}
        status = client.get("/api/v1/status", headers=BEARER).get_json()["ignored_deliveries"]
        assert status["unconfigured_project"]["count"] == 3
        assert status["unconfigured_project"]["last_project"] == "someone/else"
        assert status["unconfigured_project"]["last_kind"] == "pipeline"
        assert (status["unused_kind"]["count"], status["unused_kind"]["last_kind"]) == (1, "note")
        page = client.get("/dashboard", headers=BEARER).get_data(as_text=True)
        section = page.split('id="webhooks"', 1)[1]
        row = section.split('data-ignored="unconfigured_project"', 1)[1].split("</tr>", 1)[0]
        assert '<td class="num" data-col="count">3</td>' in row and "someone/else" in row

    assert other_process.client.post("/webhooks/gitlab", json=elsewhere, headers={
        **headers, "X-Gitlab-Event": "Pipeline Hook"}).status_code == 200
    assert scrape_ignored(j.client) == {"unconfigured_project": 4, "unused_kind": 1}


def test_a_stored_delivery_writes_one_row_and_an_ignored_one_only_its_count(janitor):
    """The hot path: a stored event is its inbox row and the one upsert that counts it, nothing else; an
    ignored delivery is one count."""
    j = janitor()
    conn = j.store.db.conn  # the test client answers on this thread, through this connection
    headers = {"X-Gitlab-Event": "Pipeline Hook", "X-Gitlab-Token": SECRET}
    before = conn.total_changes
    stored = j.client.post("/webhooks/gitlab", json=pipeline_hook("gitlab-org/gitlab-test", pipeline_id=31,
                                                                  ref="main"), headers=headers)
    assert stored.status_code == 202 and conn.total_changes - before == 2
    assert j.store.event_counts() == [("gitlab-org/gitlab-test", "pipeline", 1)]
    assert j.store.ignored_counts() == []
    before = conn.total_changes
    ignored = j.client.post("/webhooks/gitlab", json=pipeline_hook("someone/else", pipeline_id=32, ref="main"),
                            headers=headers)
    assert ignored.status_code == 200 and conn.total_changes - before == 1
    assert len(j.store.pending_events()) == 1
