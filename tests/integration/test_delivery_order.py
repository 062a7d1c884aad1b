"""GitLab's real delivery orders, replayed on the real registry (and the GitLab stand-in where GitLab is
asked): GitLab sends hooks asynchronously, out of order and once, keeps running (and sending hooks of) a
pipeline after its branch is deleted, and loses deliveries. Each test says which order it replays.

Time passes only on the harness clock; pipelines' ``created_at`` are written as GitLab writes them.
"""

from __future__ import annotations

from typing import Any

import pytest
from support.images import digest_of, push_image, tags
from support.janitor import SECRET, gitlab_time, mr_hook, pipeline_hook, push_hook, registry_section, sha_of, short

from daemon.ingest.inbox import RESOLVE_RETRY

GRACE = 60.0
PATTERNS = [
    {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"},
    {"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"},
    {"pattern": "$CI_COMMIT_REF_SLUG-$CI_COMMIT_SHORT_SHA", "lifetime": "merge_request"},
    {"pattern": "cache-$CI_PIPELINE_ID", "lifetime": "pipeline"},
    {"pattern": "tmp-$CI_PIPELINE_ID", "lifetime": "pipeline"},  # a job that runs only now and then
]
BRANCH_LOOKUP = "GET /api/v4/projects/:id/repository/branches/:branch"


def entry(project: Any) -> dict[str, Any]:
    return {"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
            "dry_run": False, "grace_period": "1m", "tags": PATTERNS}


def pipeline(repo: str, pipeline_id: int, ref: str, status: str, *, created: float | None,
             mr_iid: int | None = None) -> dict[str, Any]:
    """A pipeline hook; ``created`` None: one without ``created_at``."""
    body = pipeline_hook(repo, pipeline_id=pipeline_id, ref=ref, mr_iid=mr_iid, sha=sha_of(pipeline_id),
                         status=status)
    if created is None:
        del body["object_attributes"]["created_at"]
    else:
        body["object_attributes"]["created_at"] = gitlab_time(created)
    return body


def merge_request(repo: str, iid: int, branch: str, *, action: str, state: str, at: float) -> dict[str, Any]:
    """A merge request hook as GitLab builds it: ``action`` and ``state`` are separate facts, and each
    event's body differs (its ``updated_at``)."""
    body = mr_hook(repo, iid=iid, source_branch=branch, action=action)
    body["object_attributes"].update(state=state, updated_at=gitlab_time(at))
    return body


def plans_of(janitor: Any, kind: str) -> list[Any]:
    return [p for p in janitor.store.list_plans() if p.trigger_kind == kind]


def planned_in(janitor: Any, plan: Any) -> list[str]:
    return sorted(u.tag for u in janitor.store.plan_untags(plan.id))


def untagged_by(janitor: Any, plan: Any) -> list[str]:
    return sorted(u.tag for u in janitor.store.plan_untags(plan.id) if u.outcome == "done")


def audit(janitor: Any) -> list[tuple[str, str, str | None]]:
    return sorted((u.tag, u.outcome, u.reason) for u in janitor.store.list_untags())


# -- one pipeline's hooks, out of order ----------------------------------------------------------------

def test_pending_running_success_out_of_order_end_the_pipeline_once(janitor, registry, project):
    # PipelineHooksWorker jobs run on any Sidekiq thread: "success" may be stored before "pending" and
    # "running". Its jobs pushed cache-11 and the branch tag; tmp-11's job did not run.
    j = janitor([entry(project)], registry=registry_section(registry))
    repo = project.path
    created = j.clock() - 300
    push_image(registry, repo, ["cache-11", "topic", f"topic-{short(11)}"])
    for status in ("success", "pending", "running"):
        j.hook("Pipeline Hook", pipeline(repo, 11, "topic", status, created=created))
    j.tick()
    j.hook("Pipeline Hook", pipeline(repo, 11, "topic", "running", created=created),
           **{"X-Gitlab-Event-UUID": "late-running-again"})
    j.tick()

    assert j.store.get_pipeline(repo, 11).status == "success"
    (plan,) = plans_of(j, "pipeline_finished")
    assert planned_in(j, plan) == ["cache-11"]
    j.tick(advance=GRACE + 1)
    assert audit(j) == [("cache-11", "done", None)]  # tmp-11 was never pushed: no row at all
    assert tags(registry, repo) == sorted(["topic", f"topic-{short(11)}"])
    states = {r.tag: r.state for r in j.store.records_of_pipeline(repo, 11)}
    assert states == {"cache-11": "untagged", "tmp-11": "dropped", "topic": "confirmed",
                      f"topic-{short(11)}": "confirmed"}


# -- late hooks of a pipeline whose branch was deleted ----------------------------------------------------

def test_late_hooks_of_a_pipeline_created_before_the_deletion_never_cancel_it(janitor, registry, project):
    # GitLab keeps running the pipeline after its branch is deleted; its running and success hooks
    # arrive after the push hook of the deletion.
    j = janitor([entry(project)], registry=registry_section(registry))
    repo = project.path
    created = j.clock()
    j.hook("Pipeline Hook", pipeline(repo, 21, "gone", "pending", created=created))
    j.tick()
    push_image(registry, repo, ["gone", f"gone-{short(21)}", "cache-21", "keep"])
    j.tick(advance=30)
    j.hook("Push Hook", push_hook(repo, ref="gone", deleted=True))
    j.tick()
    (plan,) = plans_of(j, "branch_deleted")
    j.tick(advance=5)
    for status in ("running", "success"):
        j.hook("Pipeline Hook", pipeline(repo, 21, "gone", status, created=created))
        j.tick()

    assert j.store.get_plan(plan.id).state == "scheduled"
    assert j.store.ref_known_live(repo, "gone") is False, "an old pipeline's hook does not bring a branch back"
    j.tick(advance=GRACE + 1)
    assert untagged_by(j, plan) == sorted(["gone", f"gone-{short(21)}"])
    assert tags(registry, repo) == ["keep"]  # cache-21 went with its pipeline
    assert ("tmp-21", "skipped", "missing") not in audit(j)


def test_a_pipeline_created_after_the_deletion_brings_the_branch_back(janitor, registry, project):
    j = janitor([entry(project)], registry=registry_section(registry))
    repo = project.path
    j.hook("Pipeline Hook", pipeline(repo, 22, "phoenix", "running", created=j.clock()))
    j.tick()
    push_image(registry, repo, ["phoenix"])
    j.hook("Pipeline Hook", pipeline(repo, 22, "phoenix", "success", created=j.clock()))
    j.tick(advance=30)
    j.hook("Push Hook", push_hook(repo, ref="phoenix", deleted=True))
    j.tick()
    (plan,) = plans_of(j, "branch_deleted")
    j.tick(advance=20)
    j.hook("Pipeline Hook", pipeline(repo, 23, "phoenix", "pending", created=j.clock()))
    j.tick()
    assert j.store.get_plan(plan.id).state == "cancelled"
    assert j.store.ref_known_live(repo, "phoenix") is True
    j.tick(advance=GRACE * 3)
    assert "phoenix" in tags(registry, repo)


@pytest.mark.parametrize("exists", [False, True], ids=["still-deleted", "recreated"])
def test_a_late_hook_without_creation_time_asks_gitlab_whether_the_branch_exists(
        janitor, registry, gitlab, project, exists):
    j = janitor([entry(project)], registry=registry_section(registry), gitlab={"url": gitlab.url})
    repo = project.path
    j.hook("Pipeline Hook", pipeline(repo, 31, "maybe", "running", created=j.clock()))
    j.tick()
    push_image(registry, repo, ["maybe", "keep"])
    j.tick(advance=30)
    j.hook("Push Hook", push_hook(repo, ref="maybe", deleted=True))
    j.tick()
    (plan,) = plans_of(j, "branch_deleted")
    if exists:
        gitlab.add_branch(project, "maybe")  # recreated, and that push hook was lost
    asked = gitlab.calls[BRANCH_LOOKUP]
    j.hook("Pipeline Hook", pipeline(repo, 31, "maybe", "success", created=None))
    j.tick()

    assert gitlab.calls[BRANCH_LOOKUP] > asked
    assert j.store.get_plan(plan.id).state == ("cancelled" if exists else "scheduled")
    j.tick(advance=GRACE + 1)
    assert tags(registry, repo) == (["keep", "maybe"] if exists else ["keep"])


# -- a lost merge hook ---------------------------------------------------------------------------------

@pytest.mark.parametrize("later", ["update", "approved"])
def test_a_lost_merge_hook_followed_by_another_mr_hook_still_ends_the_mr(janitor, registry, project, later):
    j = janitor([entry(project)], registry=registry_section(registry))
    repo = project.path
    j.hook("Merge Request Hook", merge_request(repo, 4, "lost", action="open", state="opened", at=j.clock()))
    j.hook("Pipeline Hook", pipeline(repo, 41, "lost", "running", created=j.clock(), mr_iid=4))
    j.tick()
    push_image(registry, repo, ["mr-4", f"lost-{short(41)}", "lost", "cache-41"])
    j.hook("Pipeline Hook", pipeline(repo, 41, "lost", "success", created=j.clock(), mr_iid=4))
    j.tick(advance=10)
    # the "merge" delivery was lost; the next hook GitLab sends says the MR is merged
    j.hook("Merge Request Hook", merge_request(repo, 4, "lost", action=later, state="merged", at=j.clock()))
    j.tick()
    (plan,) = plans_of(j, "merge_request_merged")
    assert planned_in(j, plan) == sorted(["mr-4", f"lost-{short(41)}"])
    assert j.store.merge_request_trigger_raised(repo, 4) == "merged"

    # a label change later, and an update GitLab sent before the merge and delivered after it
    j.tick(advance=5)
    j.hook("Merge Request Hook", merge_request(repo, 4, "lost", action="update", state="merged", at=j.clock()))
    j.hook("Merge Request Hook", merge_request(repo, 4, "lost", action="update", state="opened",
                                               at=j.clock() - 60))
    j.tick()
    assert j.store.merge_request_state(repo, 4) == "merged"
    assert plans_of(j, "merge_request_merged") == [j.store.get_plan(plan.id)]
    j.tick(advance=GRACE + 1)
    assert untagged_by(j, plan) == sorted(["mr-4", f"lost-{short(41)}"])
    assert tags(registry, repo) == ["lost"]


def test_a_lost_close_hook_then_reopen_and_close_again(janitor, registry, project):
    j = janitor([entry(project)], registry=registry_section(registry))
    repo = project.path
    j.hook("Pipeline Hook", pipeline(repo, 42, "twice", "running", created=j.clock(), mr_iid=5))
    j.tick()
    push_image(registry, repo, ["mr-5"])
    j.hook("Pipeline Hook", pipeline(repo, 42, "twice", "success", created=j.clock(), mr_iid=5))
    j.tick()
    j.hook("Merge Request Hook", merge_request(repo, 5, "twice", action="update", state="closed", at=j.clock()))
    j.tick()
    (first,) = plans_of(j, "merge_request_closed")
    j.hook("Merge Request Hook", merge_request(repo, 5, "twice", action="reopen", state="opened",
                                               at=j.clock() + 1))
    j.tick(advance=5)
    assert j.store.get_plan(first.id).state == "cancelled"
    assert j.store.merge_request_trigger_raised(repo, 5) is None
    j.hook("Merge Request Hook", merge_request(repo, 5, "twice", action="close", state="closed", at=j.clock()))
    j.tick()
    second = next(p for p in plans_of(j, "merge_request_closed") if p.id != first.id)
    j.tick(advance=GRACE + 1)
    assert untagged_by(j, second) == ["mr-5"]


# -- a SHA-256 repository --------------------------------------------------------------------------------

def test_a_branch_deleted_in_a_sha256_repository(janitor, registry, project):
    j = janitor([entry(project)], registry=registry_section(registry))
    repo = project.path
    j.hook("Pipeline Hook", pipeline(repo, 51, "wide", "running", created=j.clock()))
    j.tick()
    push_image(registry, repo, ["wide", f"wide-{short(51)}", "keep"])
    j.hook("Pipeline Hook", pipeline(repo, 51, "wide", "success", created=j.clock()))
    j.tick(advance=10)
    delete = push_hook(repo, ref="wide", deleted=True)
    delete.update(before="c" * 64, after="0" * 64)  # object format sha256
    j.hook("Push Hook", delete)
    j.tick()
    (plan,) = plans_of(j, "branch_deleted")
    j.tick(advance=GRACE + 1)
    assert untagged_by(j, plan) == sorted(["wide", f"wide-{short(51)}"])
    assert tags(registry, repo) == ["keep"]


# -- a fork's merge request pipeline, run in the target project ----------------------------------------

@pytest.mark.parametrize("hook_ref", ["source_branch", "merge_request_ref"])
def test_a_fork_merge_request_pipeline_is_attributed_by_gitlabs_variables(janitor, registry, project, hook_ref):
    # GitLab's $CI_COMMIT_REF_SLUG in a fork MR's pipeline run here is the fork's source branch's slug
    # (Ci::Pipeline#source_ref); the pipeline runs on refs/merge-requests/7/head, which the hook shows as
    # such or as the source branch (newer GitLab sends source_ref).
    j = janitor([entry(project)], registry=registry_section(registry))
    repo = project.path
    # the target project's own branch, named like the fork's
    j.hook("Pipeline Hook", pipeline(repo, 61, "feature", "running", created=j.clock()))
    j.tick()
    parent = push_image(registry, repo, ["feature", f"feature-{short(61)}"])
    j.hook("Pipeline Hook", pipeline(repo, 61, "feature", "success", created=j.clock()))
    j.tick()

    def fork_pipeline(status: str) -> dict[str, Any]:
        body = pipeline(repo, 62, "feature", status, created=j.clock(), mr_iid=7)
        body["project"]["id"] = project.id
        body["merge_request"].update(source_project_id=project.id + 1000, target_project_id=project.id)
        if hook_ref == "merge_request_ref":
            body["object_attributes"]["ref"] = "refs/merge-requests/7/head"
        return body

    j.hook("Pipeline Hook", fork_pipeline("running"))
    j.tick()
    push_image(registry, repo, ["mr-7", f"feature-{short(62)}", "cache-62"])
    j.hook("Pipeline Hook", fork_pipeline("success"))
    j.tick()
    owned = {r.tag: (r.ref, r.mr_iid, r.state) for r in j.store.records_of_pipeline(repo, 62)}
    assert owned[f"feature-{short(62)}"] == ("refs/merge-requests/7/head", 7, "confirmed")
    assert owned["mr-7"] == ("refs/merge-requests/7/head", 7, "confirmed")

    merge = merge_request(repo, 7, "feature", action="merge", state="merged", at=j.clock())
    merge["object_attributes"].update(source_project_id=project.id + 1000, target_project_id=project.id)
    j.hook("Merge Request Hook", merge)
    j.tick()
    j.tick(advance=GRACE + 1)
    (plan,) = plans_of(j, "merge_request_merged")
    assert untagged_by(j, plan) == sorted(["mr-7", f"feature-{short(62)}"])
    assert tags(registry, repo) == sorted(["feature", f"feature-{short(61)}"])
    assert digest_of(registry, repo, f"feature-{short(61)}") == parent
    assert [u for u in j.store.list_untags() if u.tag in ("feature", f"feature-{short(61)}")] == []


# -- expected tags never pushed ---------------------------------------------------------------------------

def test_expected_tags_never_pushed_leave_no_plan_and_no_audit_row(janitor, registry, project):
    j = janitor([entry(project)], registry=registry_section(registry))
    repo = project.path
    # MR !8 is merged while its pipeline runs; the pipeline then finishes having pushed mr-8 only
    j.hook("Pipeline Hook", pipeline(repo, 71, "quiet", "running", created=j.clock(), mr_iid=8))
    j.tick()
    push_image(registry, repo, ["mr-8"])
    j.hook("Merge Request Hook", merge_request(repo, 8, "quiet", action="merge", state="merged", at=j.clock()))
    j.tick(advance=5)
    j.hook("Pipeline Hook", pipeline(repo, 71, "quiet", "success", created=j.clock(), mr_iid=8))
    j.tick()
    (plan,) = plans_of(j, "merge_request_merged")
    assert planned_in(j, plan) == ["mr-8"]
    # a pipeline that pushed nothing at all
    for status in ("running", "failed"):
        j.hook("Pipeline Hook", pipeline(repo, 72, "idle", status, created=j.clock()))
        j.tick()
    j.tick(advance=GRACE + 1)

    assert audit(j) == [("mr-8", "done", None)]
    assert [p.trigger_kind for p in j.store.list_plans()] == ["merge_request_merged"]
    assert {r.state for r in j.store.records_of_pipeline(repo, 72)} == {"dropped"}
    assert tags(registry, repo) == []


def test_a_finished_pipeline_left_unresolved_is_resolved_and_planned_later(janitor, registry, project,
                                                                             monkeypatch):
    # The worker was killed right after storing the pipeline's finish, before it asked the registry.
    j = janitor([entry(project)], registry=registry_section(registry))
    repo = project.path
    j.hook("Pipeline Hook", pipeline(repo, 81, "later", "running", created=j.clock()))
    j.tick()
    push_image(registry, repo, ["cache-81", "later"])
    monkeypatch.setattr(j.worker.ingest, "resolve_pipeline", lambda project_path, pipeline_id: None)
    j.hook("Pipeline Hook", pipeline(repo, 81, "later", "success", created=j.clock()))
    j.tick()
    assert j.store.list_plans() == [], "nothing is planned on a guess of what the pipeline pushed"
    monkeypatch.undo()

    j.tick(advance=RESOLVE_RETRY + 1)
    (plan,) = plans_of(j, "pipeline_finished")
    assert planned_in(j, plan) == ["cache-81"]
    j.tick(advance=GRACE + 1)
    assert audit(j) == [("cache-81", "done", None)]
    assert tags(registry, repo) == ["later"]


def test_a_branch_answer_kept_from_before_a_deletion_never_confirms_the_branch_came_back(gitlab, project):
    """Branch answers are kept a while to spare GitLab; the check that decides whether a deletion plan
    holds asks GitLab again (``fresh``), so a "still there" given before the deletion cannot cancel it."""
    from daemon.gitlab.client import GitLab

    gitlab.add_branch(project, "gone-soon")
    client = GitLab(gitlab.url)
    assert client.branch_exists(project.path, "gone-soon", project.token) is True
    gitlab.delete_branch(project, "gone-soon")
    assert client.branch_exists(project.path, "gone-soon", project.token) is True  # the kept answer
    assert client.branch_exists(project.path, "gone-soon", project.token, fresh=True) is False
    assert client.branch_exists(project.path, "gone-soon", project.token) is False  # and it is kept
