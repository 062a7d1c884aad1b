"""The note on a merge request (``mr_note: true``), end to end: webhooks, the real registry and the strict
GitLab stand-in, time passing only on the harness clock.

Off by default; on, one note once the merge request's plan is done, listing each untagged image with its
restore command and the kept ones briefly; never a second note (a follow-up plan, a worker that died after
posting); GitLab's refusal recorded and never asked again, its failures asked again a bounded number of
times; nothing for dry runs, and nothing for a held plan until it runs.

GitLab's rules behind it: ``POST /projects/:id/merge_requests/:iid/notes`` (doc/api/notes.md,
lib/api/notes.rb) needs the ``api`` scope (``read_api`` is refused for any POST, lib/api/api_guard.rb)
and ``create_note`` on a merge request the token can read (app/policies/merge_request_policy.rb); an
archived project refuses notes (app/policies/concerns/archived_abilities.rb).
"""

from __future__ import annotations

from typing import Any

import jwt
import pytest
import requests
from support.gitlab_json import Project
from support.gitlab_standin import GitLabStandin
from support.images import push_image, tags
from support.janitor import Harness, Janitors, live_entry, mr_hook, pipeline_hook, registry_section, sha_of
from support.ops import BEARER
from support.registry import Registry

from daemon.domain.policy import LEASE_SECONDS
from daemon.execute.notes import MAX_ATTEMPTS, marker

GRACE = 60
PATTERNS = [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"},
            {"pattern": "sha-$CI_COMMIT_SHORT_SHA", "lifetime": "merge_request"},
            {"pattern": "keep-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}]
NOTES = "/api/v4/projects/:id/merge_requests/:iid/notes"
POST_NOTES, GET_NOTES = f"POST {NOTES}", f"GET {NOTES}"


def entry(project: Project, **policy: Any) -> dict[str, Any]:
    return live_entry(project, grace_period=f"{GRACE}s", tags=PATTERNS, protected_tags=["keep-.*"], **policy)


def live(janitor: Janitors, registry: Registry, gitlab: GitLabStandin, project: Project, **policy: Any) -> Harness:
    return janitor([entry(project, **policy)], registry=registry_section(registry), gitlab={"url": gitlab.url})


def pipeline(j: Harness, registry: Registry, path: str, *, pipeline_id: int, iid: int) -> None:
    """A pipeline of MR !iid: hook `running`, its job pushes one image under every pattern, hook `success`."""
    sha = sha_of(pipeline_id)
    hook = pipeline_hook(path, pipeline_id=pipeline_id, ref=f"feature/{iid}", mr_iid=iid, sha=sha, status="running")
    j.hook("Pipeline Hook", hook)
    j.tick()
    push_image(registry, path, [f"mr-{iid}", f"sha-{sha[:8]}", f"keep-{iid}"])
    j.hook("Pipeline Hook", {**hook, "object_attributes": {**hook["object_attributes"], "status": "success"}})
    j.tick()


def end_mr(j: Harness, gitlab: GitLabStandin, project: Project, *, iid: int, action: str = "merge") -> None:
    """MR !iid is merged (or closed) in GitLab and its hook arrives; its plan waits GRACE."""
    gitlab.set_mr(project, iid, source_branch=f"feature/{iid}", state={"merge": "merged", "close": "closed"}[action])
    j.hook("Merge Request Hook", mr_hook(project.path, iid=iid, source_branch=f"feature/{iid}", action=action))
    j.tick()


def mr_plans(j: Harness) -> list[Any]:
    return sorted((p for p in j.store.list_plans() if p.trigger_kind.startswith("merge_request_")),
                  key=lambda p: p.id)


def done_untags(j: Harness, plan_id: int) -> dict[str, int]:
    return {u.tag: u.id for u in j.store.plan_untags(plan_id) if u.outcome == "done"}


def note_calls(gitlab: GitLabStandin) -> tuple[int, int]:
    calls = gitlab.calls
    return calls[POST_NOTES], calls[GET_NOTES]


# -- off by default, on: one note ----------------------------------------------------------------------

def test_off_by_default_no_note_is_posted(janitor, registry, gitlab, project):
    j = live(janitor, registry, gitlab, project)
    assert j.settings.projects[0].mr_note is False
    pipeline(j, registry, project.path, pipeline_id=701, iid=7)
    end_mr(j, gitlab, project, iid=7)
    j.tick(advance=GRACE + 1)

    (plan,) = mr_plans(j)
    assert j.store.get_plan(plan.id).state == "done" and "mr-7" in done_untags(j, plan.id)
    for _ in range(3):
        j.tick(advance=LEASE_SECONDS + 1)
    assert gitlab.mr_notes(project, 7) == []
    assert note_calls(gitlab) == (0, 0)
    assert j.store.mr_note(project.path, 7) is None


@pytest.mark.parametrize(("action", "ended"), [("merge", "was merged"), ("close", "was closed")])
def test_on_one_note_once_the_plan_is_done(janitor, registry, gitlab, project, action, ended):
    j = janitor([entry(project)], registry=registry_section(registry), gitlab={"url": gitlab.url},
                defaults={"mr_note": True})  # from defaults, as every project key
    assert j.settings.projects[0].mr_note is True
    pipeline(j, registry, project.path, pipeline_id=701, iid=7)
    end_mr(j, gitlab, project, iid=7, action=action)
    (plan,) = mr_plans(j)
    j.tick(advance=GRACE - 1)
    assert j.store.get_plan(plan.id).state == "scheduled"
    assert gitlab.mr_notes(project, 7) == [], "no note while the plan waits"

    j.tick(advance=2)
    assert j.store.get_plan(plan.id).state == "done"
    untagged = done_untags(j, plan.id)
    sha_tag = f"sha-{sha_of(701)[:8]}"
    assert sorted(untagged) == sorted(["mr-7", sha_tag])
    assert tags(registry, project.path) == ["keep-7"]

    (note,) = gitlab.mr_notes(project, 7)
    assert note.author["username"] == gitlab.token_info(project.token).username  # the project's own token
    body = note.body
    assert body.startswith(marker(plan.id))
    assert ended in body
    host = registry.url.split("://", 1)[1]
    for tag, untag_id in untagged.items():
        assert f"- `{host}/{project.path}:{tag}`: put back with `registry-janitor restore {untag_id}`" in body
    assert f"Kept 1: `{host}/{project.path}:keep-7` (protected)." in body
    assert "registry-janitor restore <untag id>" in body
    recorded = j.store.mr_note(project.path, 7)
    assert (recorded.state, recorded.note_id, recorded.plan_id, recorded.attempts) == ("posted", note.id, plan.id, 1)

    for _ in range(3):
        j.tick(advance=LEASE_SECONDS + 1)
    assert len(gitlab.mr_notes(project, 7)) == 1
    assert note_calls(gitlab) == (1, 0)


def test_a_follow_up_plan_adds_no_second_note(janitor, registry, gitlab, project):
    j = live(janitor, registry, gitlab, project, mr_note=True)
    pipeline(j, registry, project.path, pipeline_id=701, iid=7)
    end_mr(j, gitlab, project, iid=7)
    j.tick(advance=GRACE + 1)
    (first,) = mr_plans(j)
    (note,) = gitlab.mr_notes(project, 7)
    assert "Tags of this merge request found later are untagged without another note" in note.body

    # A pipeline of the MR that finished after its plan ran: its tags go in a follow-up plan.
    pipeline(j, registry, project.path, pipeline_id=702, iid=7)
    first_plan, follow_up = mr_plans(j)
    assert first_plan.id == first.id and ":after:" in follow_up.trigger_key
    j.tick(advance=GRACE + 1)
    assert j.store.get_plan(follow_up.id).state == "done"
    assert f"sha-{sha_of(702)[:8]}" in done_untags(j, follow_up.id)

    j.tick(advance=LEASE_SECONDS + 1)
    assert gitlab.mr_notes(project, 7) == [note]
    assert note_calls(gitlab) == (1, 0)
    recorded = j.store.mr_note(project.path, 7)
    assert (recorded.state, recorded.plan_id) == ("posted", first.id)


def test_a_second_merge_request_gets_its_own_note(janitor, registry, gitlab, project):
    j = live(janitor, registry, gitlab, project, mr_note=True)
    pipeline(j, registry, project.path, pipeline_id=701, iid=7)
    pipeline(j, registry, project.path, pipeline_id=801, iid=8)
    end_mr(j, gitlab, project, iid=7)
    end_mr(j, gitlab, project, iid=8, action="close")
    j.tick(advance=GRACE + 1)
    (seven,) = gitlab.mr_notes(project, 7)
    (eight,) = gitlab.mr_notes(project, 8)
    assert f"{project.path}:mr-7`" in seven.body and f"{project.path}:mr-8`" not in seven.body
    assert f"{project.path}:mr-8`" in eight.body and "was closed" in eight.body


# -- never twice: a worker that dies after GitLab took the note ----------------------------------------

class Killed(BaseException):
    """The worker process dying (SIGKILL) at that point: nothing after it runs."""


def test_a_worker_that_died_after_posting_does_not_post_again(janitor, registry, gitlab, project, monkeypatch):
    j = live(janitor, registry, gitlab, project, mr_note=True)
    pipeline(j, registry, project.path, pipeline_id=701, iid=7)
    end_mr(j, gitlab, project, iid=7)
    gitlab.add_note(project, 7, "LGTM, thanks!")
    finish = j.store.finish_mr_note

    def die_once_posted(note_id: int, state: str, now: float, **kwargs: Any) -> None:
        if state == "posted":
            raise Killed
        finish(note_id, state, now, **kwargs)

    monkeypatch.setattr(j.store, "finish_mr_note", die_once_posted)
    with pytest.raises(Killed):
        j.tick(advance=GRACE + 1)
    posted = [n for n in gitlab.mr_notes(project, 7) if n.body.startswith("<!-- registry-janitor")]
    assert len(posted) == 1, "GitLab took the note; the worker died before recording it"
    assert j.store.mr_note(project.path, 7).state == "sending"
    gitlab.add_note(project, 7, "Where did mr-7 go?")

    restarted = janitor(settings=j.settings, clock=j.clock)  # the same storage, a new process
    restarted.tick()
    assert note_calls(gitlab) == (1, 0), "the dead worker's claim holds until its lease runs out"
    restarted.tick(advance=LEASE_SECONDS + 1)
    recorded = restarted.store.mr_note(project.path, 7)
    assert (recorded.state, recorded.note_id, recorded.attempts) == ("posted", posted[0].id, 2)
    assert note_calls(gitlab) == (1, 1), "found among the MR's notes, not posted again"
    for _ in range(3):
        restarted.tick(advance=LEASE_SECONDS + 1)
    assert [n.body.startswith("<!-- registry-janitor") for n in gitlab.mr_notes(project, 7)] == [False, True, False]
    assert note_calls(gitlab) == (1, 1)


# -- GitLab refusing, GitLab failing --------------------------------------------------------------------

def test_a_refusal_is_recorded_and_never_asked_again(janitor, registry, gitlab, project):
    j = live(janitor, registry, gitlab, project, mr_note=True)
    pipeline(j, registry, project.path, pipeline_id=701, iid=7)
    end_mr(j, gitlab, project, iid=7)
    gitlab.fail_note_posts(1, status=502)
    j.tick(advance=GRACE + 1)  # untagged, then GitLab fails the note: tried again later
    assert done_untags(j, mr_plans(j)[0].id)
    first = j.store.mr_note(project.path, 7)
    assert (first.state, first.attempts) == ("pending", 1) and "502" in first.detail

    gitlab.archive_project(project)  # GitLab now answers 403 to any note in the project
    j.tick(advance=3600)
    refused = j.store.mr_note(project.path, 7)
    assert (refused.state, refused.attempts) == ("refused", 2)
    assert "403" in refused.detail and "forbids" in refused.detail
    assert note_calls(gitlab) == (2, 1)

    for _ in range(6):
        j.tick(advance=3600)
    assert note_calls(gitlab) == (2, 1), "a refusal is not asked again"
    assert gitlab.mr_notes(project, 7) == []
    assert j.store.mr_note(project.path, 7).state == "refused"


def test_a_deleted_merge_request_is_a_refusal_too(janitor, registry, gitlab, project):
    j = live(janitor, registry, gitlab, project, mr_note=True)
    pipeline(j, registry, project.path, pipeline_id=701, iid=7)
    j.hook("Merge Request Hook", mr_hook(project.path, iid=7, source_branch="feature/7", action="close"))
    j.tick()
    j.tick(advance=GRACE + 1)  # GitLab no longer shows !7 (an owner deleted it): 404
    refused = j.store.mr_note(project.path, 7)
    assert refused.state == "refused" and "404" in refused.detail
    j.tick(advance=3600)
    assert note_calls(gitlab) == (1, 0)


def test_failures_are_asked_again_a_bounded_number_of_times(janitor, registry, gitlab, project):
    j = live(janitor, registry, gitlab, project, mr_note=True)
    pipeline(j, registry, project.path, pipeline_id=701, iid=7)
    end_mr(j, gitlab, project, iid=7)
    gitlab.fail_note_posts(MAX_ATTEMPTS + 5, status=503)
    j.tick(advance=GRACE + 1)
    for _ in range(MAX_ATTEMPTS + 3):
        j.tick(advance=3600)
    failed = j.store.mr_note(project.path, 7)
    assert (failed.state, failed.attempts) == ("failed", MAX_ATTEMPTS) and "503" in failed.detail
    assert note_calls(gitlab) == (MAX_ATTEMPTS, MAX_ATTEMPTS - 1)
    assert gitlab.mr_notes(project, 7) == []


def test_a_failure_that_passes_posts_the_note_once(janitor, registry, gitlab, project):
    j = live(janitor, registry, gitlab, project, mr_note=True)
    pipeline(j, registry, project.path, pipeline_id=701, iid=7)
    end_mr(j, gitlab, project, iid=7)
    gitlab.fail_note_posts(2, status=500)
    j.tick(advance=GRACE + 1)
    j.tick(advance=30)
    assert note_calls(gitlab) == (1, 0), "not asked again at once"
    for _ in range(4):
        j.tick(advance=3600)
    (note,) = gitlab.mr_notes(project, 7)
    recorded = j.store.mr_note(project.path, 7)
    assert (recorded.state, recorded.note_id, recorded.attempts) == ("posted", note.id, 3)
    assert note_calls(gitlab) == (3, 2)


# -- nothing for dry runs; a held plan only once it runs -------------------------------------------------

def test_dry_run_projects_post_nothing(janitor, registry, gitlab, project):
    j = live(janitor, registry, gitlab, project, mr_note=True, dry_run=True)
    pipeline(j, registry, project.path, pipeline_id=701, iid=7)
    end_mr(j, gitlab, project, iid=7)
    j.tick(advance=GRACE + 1)
    (plan,) = mr_plans(j)
    assert j.store.get_plan(plan.id).state == "dry_run"
    assert "mr-7" in tags(registry, project.path)
    for _ in range(3):
        j.tick(advance=LEASE_SECONDS + 1)
    assert gitlab.mr_notes(project, 7) == [] and note_calls(gitlab) == (0, 0)
    assert j.store.mr_note(project.path, 7) is None


def test_a_held_plan_posts_nothing_until_it_is_approved_and_done(janitor, registry, gitlab, project):
    j = live(janitor, registry, gitlab, project, mr_note=True, max_tags_per_plan=1)
    pipeline(j, registry, project.path, pipeline_id=701, iid=7)
    end_mr(j, gitlab, project, iid=7)
    j.tick(advance=GRACE + 1)
    (plan,) = mr_plans(j)
    assert j.store.get_plan(plan.id).state == "held"
    j.tick(advance=3600)
    assert gitlab.mr_notes(project, 7) == []

    assert j.client.post(f"/api/v1/plans/{plan.id}/approve", headers=BEARER).status_code == 200
    j.tick()
    assert j.store.get_plan(plan.id).state == "done"
    (note,) = gitlab.mr_notes(project, 7)
    assert f"{project.path}:mr-7`: put back with `registry-janitor restore {done_untags(j, plan.id)['mr-7']}`" \
        in note.body


# -- the stand-in's notes API is GitLab's ------------------------------------------------------------------

def notes_url(gitlab: GitLabStandin, project: Project, iid: int) -> str:
    return f"{gitlab.api_url}/projects/{project.id}/merge_requests/{iid}/notes"


def test_standin_notes_need_the_api_scope_and_a_merge_request_the_token_sees(gitlab, project):
    gitlab.set_mr(project, 3, source_branch="feature/3", state="merged")
    reader = gitlab.add_token(project, role="maintainer", scopes=("read_api",))
    url = notes_url(gitlab, project, 3)

    refused = requests.post(url, json={"body": "hi"}, headers={"PRIVATE-TOKEN": reader}, timeout=5)
    assert refused.status_code == 403 and refused.json()["error"] == "insufficient_scope"
    assert requests.post(url, json={}, headers={"PRIVATE-TOKEN": project.token}, timeout=5).json() == \
        {"error": "body is missing"}
    missing = requests.post(notes_url(gitlab, project, 99), json={"body": "hi"},
                            headers={"PRIVATE-TOKEN": project.token}, timeout=5)
    assert (missing.status_code, missing.json()) == (404, {"message": "404 Not found"})
    blank = requests.post(url, json={"body": " "}, headers={"PRIVATE-TOKEN": project.token}, timeout=5)
    assert blank.status_code == 400 and "can't be blank" in blank.json()["message"]

    reporter = gitlab.add_token(project, role="reporter", scopes=("api",))
    made = requests.post(url, data={"body": "first"}, headers={"PRIVATE-TOKEN": reporter}, timeout=5)
    assert made.status_code == 201
    note = made.json()
    assert (note["body"], note["noteable_type"], note["noteable_iid"], note["system"]) == \
        ("first", "MergeRequest", 3, False)
    assert note["author"]["username"] == gitlab.token_info(reporter).username and note["author"]["bot"] is True
    requests.post(url, params={"body": "second"}, headers={"PRIVATE-TOKEN": project.token}, timeout=5)

    listed = requests.get(url, headers={"PRIVATE-TOKEN": reader}, timeout=5)  # read_api reads
    assert listed.status_code == 200 and [n["body"] for n in listed.json()] == ["second", "first"]
    oldest_first = requests.get(url, params={"sort": "asc"}, headers={"PRIVATE-TOKEN": reader}, timeout=5)
    assert [n["body"] for n in oldest_first.json()] == ["first", "second"]
    assert [n.body for n in gitlab.mr_notes(project, 3)] == ["first", "second"]


def test_standin_archived_projects_refuse_notes_and_registry_writes(gitlab, registry, project):
    gitlab.set_mr(project, 3, source_branch="feature/3", state="merged")
    gitlab.archive_project(project)
    refused = requests.post(notes_url(gitlab, project, 3), json={"body": "hi"},
                            headers={"PRIVATE-TOKEN": project.token}, timeout=5)
    assert (refused.status_code, refused.json()) == (403, {"message": "403 Forbidden"})
    answer = requests.get(gitlab.realm, params=[("service", "container_registry"),
                                                ("scope", f"repository:{project.path}:pull,push,delete")],
                          auth=("janitor", project.token), timeout=5)
    assert answer.status_code == 200
    key = gitlab.issuer.certificate.public_key()
    claims = jwt.decode(answer.json()["token"], key, algorithms=["RS256"],  # type: ignore[arg-type]
                        audience="container_registry")
    assert claims["access"] == [{"type": "repository", "name": project.path, "actions": ["pull"]}]
