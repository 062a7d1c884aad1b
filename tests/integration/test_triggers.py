"""Every trigger, end to end on the real registry: which tags each one ends, and which it must leave.

Each pipeline here builds one image and tags it with every pattern of the project, so the tags that
must stay are also siblings (same digest) of the tags that go: untagging one never takes another (S5).
Time passes only on the harness clock.
"""

from __future__ import annotations

import pytest
from support.images import digest_of, push_image, tags
from support.janitor import (
    SECRET,
    gitlab_time,
    load_payload,
    mr_hook,
    pipeline_hook,
    push_hook,
    registry_section,
    sha_of,
    short,
)

from daemon.domain.events import ZERO_SHA

GRACE = 60.0
PATTERNS = [
    {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"},
    {"pattern": "sha-$CI_COMMIT_SHORT_SHA", "lifetime": "merge_request"},
    {"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"},
    {"pattern": "cache-$CI_PIPELINE_ID", "lifetime": "pipeline"},
    {"pattern": "preview-${CI_COMMIT_SHORT_SHA}", "ttl": "2h"},
]


def project_entry(project, **extra):
    return {"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
            "dry_run": False, "grace_period": "1m", "tags": PATTERNS, **extra}


def pipeline_tags(pipeline_id: int, slug: str, mr_iid: int | None = None) -> list[str]:
    """What PATTERNS name for a pipeline (spelled out, not computed by the code under test)."""
    found = [f"sha-{short(pipeline_id)}", slug, f"cache-{pipeline_id}", f"preview-{short(pipeline_id)}"]
    return ([f"mr-{mr_iid}"] if mr_iid is not None else []) + found


def run_pipeline(janitor, registry, repo, *, pipeline_id, ref, slug, mr_iid=None, status="success",
                 extra=()):
    """A pipeline as GitLab runs it: hook `running`, its job pushes one image under every tag, hook
    `status`. Returns the image's digest."""
    sha = sha_of(pipeline_id)
    janitor.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=pipeline_id, ref=ref, mr_iid=mr_iid,
                                                sha=sha, status="running"))
    janitor.tick()
    digest = push_image(registry, repo, [*pipeline_tags(pipeline_id, slug, mr_iid), *extra])
    if status != "running":
        janitor.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=pipeline_id, ref=ref, mr_iid=mr_iid,
                                                    sha=sha, status=status))
    janitor.tick()
    return digest


def plans_of(janitor, kind):
    return [p for p in janitor.store.list_plans() if p.trigger_kind == kind]


def untagged_by(janitor, plan):
    return sorted(u.tag for u in janitor.store.plan_untags(plan.id) if u.outcome == "done")


def planned_in(janitor, plan):
    return sorted(u.tag for u in janitor.store.plan_untags(plan.id))


def feature_x_and_other(janitor, registry, repo):
    """MR !42 from feature/x (an MR pipeline and a branch pipeline), MR !43 from other."""
    d101 = run_pipeline(janitor, registry, repo, pipeline_id=101, ref="feature/x", slug="feature-x", mr_iid=42)
    d102 = run_pipeline(janitor, registry, repo, pipeline_id=102, ref="feature/x", slug="feature-x")
    d103 = run_pipeline(janitor, registry, repo, pipeline_id=103, ref="other", slug="other", mr_iid=43)
    return d101, d102, d103


STAY_AFTER_MR_42 = ["feature-x", "mr-43", "other", f"preview-{short(101)}", f"preview-{short(102)}",
                    f"preview-{short(103)}", f"sha-{short(103)}"]


# -- merge_request_merged / merge_request_closed ---------------------------------------------------------

@pytest.mark.parametrize(("action", "kind"), [("merge", "merge_request_merged"),
                                              ("close", "merge_request_closed")])
def test_merge_request_end_removes_its_merge_request_tags_only(janitor, registry, project, action, kind):
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    d101, d102, d103 = feature_x_and_other(j, registry, repo)

    j.hook("Merge Request Hook", mr_hook(repo, iid=42, source_branch="feature/x", action=action))
    j.tick()
    (plan,) = plans_of(j, kind)
    assert plan.state == "scheduled"
    # the MR pipeline's tags (by MR iid) and the branch pipeline's on the source branch (by ref)
    assert planned_in(j, plan) == sorted(["mr-42", f"sha-{short(101)}", f"sha-{short(102)}"])
    j.tick(advance=GRACE - 1)
    assert "mr-42" in tags(registry, repo), "nothing goes before the grace period is over"

    j.tick(advance=2)
    assert j.store.get_plan(plan.id).state == "done"
    assert untagged_by(j, plan) == sorted(["mr-42", f"sha-{short(101)}", f"sha-{short(102)}"])
    assert tags(registry, repo) == sorted(STAY_AFTER_MR_42)  # cache-* went with their pipelines
    assert digest_of(registry, repo, f"preview-{short(101)}") == d101  # a sibling of mr-42 stays
    assert digest_of(registry, repo, "feature-x") == d102
    assert digest_of(registry, repo, "other") == d103


# -- branch_deleted --------------------------------------------------------------------------------------

def test_branch_deleted_removes_branch_and_merge_request_tags_of_that_ref(janitor, registry, project):
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    d101, _, _ = feature_x_and_other(j, registry, repo)

    j.hook("Push Hook", push_hook(repo, ref="feature/x", deleted=True))
    j.tick()
    (plan,) = plans_of(j, "branch_deleted")
    expected = sorted(["feature-x", "mr-42", f"sha-{short(101)}", f"sha-{short(102)}"])
    assert planned_in(j, plan) == expected
    j.tick(advance=GRACE + 1)

    assert untagged_by(j, plan) == expected
    assert tags(registry, repo) == sorted(t for t in STAY_AFTER_MR_42 if t != "feature-x")
    assert digest_of(registry, repo, f"preview-{short(101)}") == d101


# -- pipeline_finished ------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", ["success", "failed", "canceled", "skipped"])
def test_a_finished_pipeline_removes_its_pipeline_tags(janitor, registry, project, status):
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    digest = run_pipeline(j, registry, repo, pipeline_id=201, ref="feature/y", slug="feature-y",
                          status=status, extra=["sibling"])
    run_pipeline(j, registry, repo, pipeline_id=202, ref="feature/y", slug="feature-y",
                 status="running")

    (plan,) = plans_of(j, "pipeline_finished")
    assert planned_in(j, plan) == ["cache-201"]
    j.tick(advance=GRACE - 1)
    assert "cache-201" in tags(registry, repo)

    j.tick(advance=2)
    assert untagged_by(j, plan) == ["cache-201"]
    remaining = tags(registry, repo)
    assert "cache-201" not in remaining
    assert {"sibling", "feature-y", f"sha-{short(201)}", f"preview-{short(201)}", "cache-202"} <= set(remaining)
    assert digest_of(registry, repo, "sibling") == digest


def test_a_running_pipeline_removes_nothing(janitor, registry, project):
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    run_pipeline(j, registry, repo, pipeline_id=211, ref="feature/y", slug="feature-y", status="running")
    before = tags(registry, repo)
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=211, ref="feature/y", sha=sha_of(211),
                                          status="running"))
    j.tick(advance=GRACE * 10)
    j.tick(advance=GRACE * 10)
    assert j.store.list_plans() == []
    assert tags(registry, repo) == before and "cache-211" in before


def test_a_late_running_hook_does_not_undo_a_finished_pipeline(janitor, registry, project):
    # GitLab does not promise order: "success" may arrive before the last "running".
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    run_pipeline(j, registry, repo, pipeline_id=221, ref="feature/y", slug="feature-y")
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=221, ref="feature/y", sha=sha_of(221),
                                          status="running"))
    j.tick(advance=GRACE + 1)
    (plan,) = plans_of(j, "pipeline_finished")
    assert untagged_by(j, plan) == ["cache-221"]
    assert "cache-221" not in tags(registry, repo)


# -- ttl_expired ------------------------------------------------------------------------------------------

def test_ttl_tags_live_exactly_their_ttl(janitor, registry, project):
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    run_pipeline(j, registry, repo, pipeline_id=301, ref="feature/z", slug="feature-z", extra=["sibling"])
    j.tick(advance=3600)
    run_pipeline(j, registry, repo, pipeline_id=302, ref="feature/z", slug="feature-z")

    j.tick(advance=3600 - 60)  # 2h - 1m after pipeline 301's push
    assert plans_of(j, "ttl_expired") == []
    j.tick(advance=59)
    assert plans_of(j, "ttl_expired") == []

    j.tick(advance=2)  # 2h + 1s
    (plan,) = plans_of(j, "ttl_expired")
    assert planned_in(j, plan) == [f"preview-{short(301)}"]
    assert f"preview-{short(301)}" in tags(registry, repo)
    for _ in range(3):  # the worker keeps ticking through the grace period and after
        j.tick(advance=GRACE / 2 + 1)
    assert f"preview-{short(301)}" not in tags(registry, repo)
    assert {"sibling", f"preview-{short(302)}", "feature-z", f"sha-{short(301)}"} <= set(tags(registry, repo))

    # one trigger, one plan, one untag: ticking on never plans the same expired tag again
    (plan,) = plans_of(j, "ttl_expired")
    assert [(u.tag, u.outcome) for u in j.store.plan_untags(plan.id)] == [(f"preview-{short(301)}", "done")]

    j.tick(advance=3600)  # pipeline 302's preview expires in turn
    j.tick(advance=GRACE + 1)
    assert f"preview-{short(302)}" not in tags(registry, repo)
    assert len(plans_of(j, "ttl_expired")) == 2
    assert [u.tag for u in j.store.list_untags() if u.outcome != "done"] == []


# -- out of order and repeated -----------------------------------------------------------------------------

def test_merge_before_the_pipeline_succeeds_still_removes_its_tags(janitor, registry, project):
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    sha = sha_of(401)
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=401, ref="fix", mr_iid=7, sha=sha,
                                          status="running"))
    j.tick()
    digest = push_image(registry, repo, ["mr-7", "fix"])
    j.hook("Merge Request Hook", mr_hook(repo, iid=7, source_branch="fix", action="merge"))
    j.tick(advance=10)
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=401, ref="fix", mr_iid=7, sha=sha,
                                          status="success"))
    j.tick(advance=GRACE)

    (plan,) = plans_of(j, "merge_request_merged")
    assert untagged_by(j, plan) == ["mr-7"]
    assert tags(registry, repo) == ["fix"] and digest_of(registry, repo, "fix") == digest


@pytest.mark.parametrize("headers", [
    {"Idempotency-Key": "3a427872-00df-429c-9bc9-a9475de2efe4"},
    {"X-Gitlab-Event-UUID": "9cebe914-4827-408f-b014-cfa23a47a35f"},
    {},  # no delivery header at all: the same body is the same delivery
])
def test_the_same_delivery_twice_makes_one_plan_and_one_untag(janitor, registry, project, headers):
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    run_pipeline(j, registry, repo, pipeline_id=501, ref="dup", slug="dup", mr_iid=9)
    body = mr_hook(repo, iid=9, source_branch="dup", action="merge")
    assert j.hook("Merge Request Hook", body, **headers).status_code == 202
    j.tick()
    assert j.hook("Merge Request Hook", body, **headers).status_code == 200
    j.tick(advance=GRACE + 1)
    assert j.hook("Merge Request Hook", body, **headers).status_code == 200  # a resend, later
    j.tick(advance=GRACE + 1)

    (plan,) = plans_of(j, "merge_request_merged")
    untags = [u for u in j.store.list_untags() if u.tag == "mr-9"]
    assert [(u.plan_id, u.outcome) for u in untags] == [(plan.id, "done")]


def test_the_same_trigger_raised_twice_makes_one_plan(janitor, registry, project):
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    run_pipeline(j, registry, repo, pipeline_id=511, ref="twice", slug="twice", mr_iid=11)
    for n in range(2):  # two deliveries of one merge (GitLab resends get new event UUIDs)
        j.hook("Merge Request Hook", mr_hook(repo, iid=11, source_branch="twice", action="merge"),
               **{"X-Gitlab-Event-UUID": f"uuid-{n}"})
        j.tick(advance=5)
    (plan,) = plans_of(j, "merge_request_merged")
    j.tick(advance=GRACE)
    j.hook("Merge Request Hook", mr_hook(repo, iid=11, source_branch="twice", action="merge"),
           **{"X-Gitlab-Event-UUID": "uuid-late"})
    j.tick(advance=GRACE + 1)

    assert plans_of(j, "merge_request_merged") == [j.store.get_plan(plan.id)]
    assert [(u.tag, u.outcome) for u in j.store.list_untags() if u.tag == "mr-11"] == [("mr-11", "done")]
    assert "mr-11" not in tags(registry, repo)


# -- reopened, recreated -------------------------------------------------------------------------------------

def test_reopen_in_the_grace_period_cancels_and_a_later_close_plans_anew(janitor, registry, project):
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    run_pipeline(j, registry, repo, pipeline_id=601, ref="again", slug="again", mr_iid=12)
    j.hook("Merge Request Hook", mr_hook(repo, iid=12, source_branch="again", action="close"))
    j.tick()
    j.hook("Merge Request Hook", mr_hook(repo, iid=12, source_branch="again", action="reopen"))
    j.tick(advance=GRACE / 2)
    (first,) = plans_of(j, "merge_request_closed")
    assert first.state == "cancelled"

    j.tick(advance=GRACE * 3)
    assert "mr-12" in tags(registry, repo), "a reopened MR keeps its tag after the grace period"

    second_close = mr_hook(repo, iid=12, source_branch="again", action="close")
    second_close["object_attributes"]["updated_at"] = gitlab_time(j.clock())  # a new event, a new body
    j.hook("Merge Request Hook", second_close, **{"X-Gitlab-Event-UUID": "second-close"})
    j.tick()
    second = next(p for p in plans_of(j, "merge_request_closed") if p.id != first.id)
    assert second.state == "scheduled"
    j.tick(advance=GRACE + 1)
    assert untagged_by(j, second) == sorted(["mr-12", f"sha-{short(601)}"])
    assert "mr-12" not in tags(registry, repo)


@pytest.mark.parametrize("recreated_by", ["pipeline", "push"])
def test_a_branch_recreated_in_the_grace_period_keeps_its_tags(janitor, registry, project, recreated_by):
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    run_pipeline(j, registry, repo, pipeline_id=701, ref="phoenix", slug="phoenix")
    j.hook("Push Hook", push_hook(repo, ref="phoenix", deleted=True))
    j.tick()
    (plan,) = plans_of(j, "branch_deleted")
    assert planned_in(j, plan) == sorted(["phoenix", f"sha-{short(701)}"])

    j.tick(advance=GRACE / 2)
    if recreated_by == "pipeline":  # a pipeline created after the deletion: the branch is back
        recreated = pipeline_hook(repo, pipeline_id=702, ref="phoenix", sha=sha_of(702), status="running")
        recreated["object_attributes"]["created_at"] = gitlab_time(j.clock())
        j.hook("Pipeline Hook", recreated)
    else:
        j.hook("Push Hook", push_hook(repo, ref="phoenix", deleted=False))
    j.tick()
    assert j.store.get_plan(plan.id).state == "cancelled"
    j.tick(advance=GRACE * 3)
    assert {"phoenix", f"sha-{short(701)}"} <= set(tags(registry, repo))
    assert [u for u in j.store.list_untags() if u.outcome == "done"
            and u.tag in ("phoenix", f"sha-{short(701)}")] == []


# -- names that need slugging ----------------------------------------------------------------------------

def test_ref_slug_of_capitals_slashes_and_underscores(janitor, registry, project):
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    run_pipeline(j, registry, repo, pipeline_id=801, ref="Feature/My_Branch", slug="feature-my-branch")
    run_pipeline(j, registry, repo, pipeline_id=802, ref="feature/Other_Branch", slug="feature-other-branch",
                 status="running")  # another ref whose tags must not go
    records = j.store.records_of_pipeline(repo, 801)
    assert {(r.tag, r.state) for r in records if r.lifetime == "branch"} == {("feature-my-branch", "confirmed")}

    j.hook("Push Hook", push_hook(repo, ref="Feature/My_Branch", deleted=True))
    j.tick()
    j.tick(advance=GRACE + 1)
    remaining = tags(registry, repo)
    assert "feature-my-branch" not in remaining
    assert "feature-other-branch" in remaining


# -- system hooks, group hooks, forks ----------------------------------------------------------------------

def test_system_hooks_end_lifetimes_like_project_hooks(janitor, registry, project):
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    run_pipeline(j, registry, repo, pipeline_id=901, ref="sys-mr", slug="sys-mr", mr_iid=21)
    run_pipeline(j, registry, repo, pipeline_id=902, ref="sys-branch", slug="sys-branch")

    mr = load_payload("system_hook_merge_request")  # fewer fields than a project hook's
    mr["project"]["path_with_namespace"] = repo
    mr["object_attributes"].update(iid=21, source_branch="sys-mr", action="merge", state="merged")
    assert j.hook("System Hook", mr).status_code == 202

    push = load_payload("system_hook_push")  # no object_kind, no project id
    push["project"]["path_with_namespace"] = repo
    push.update(ref="refs/heads/sys-branch", after=ZERO_SHA, checkout_sha=None, commits=[],
                total_commits_count=0)
    assert j.hook("System Hook", push).status_code == 202

    j.tick()
    assert [e for e in j.store.pending_events()] == []
    j.tick(advance=GRACE + 1)
    remaining = set(tags(registry, repo))
    assert not {"mr-21", f"sha-{short(901)}", "sys-branch", f"sha-{short(902)}"} & remaining
    assert {"sys-mr", f"preview-{short(901)}", f"preview-{short(902)}"} <= remaining


def test_group_hook_is_matched_by_path_and_needs_that_projects_secret(janitor, registry, gitlab, project):
    other = gitlab.add_project(f"{project.path.split('/')[0]}/neighbour")
    j = janitor([project_entry(project), {**project_entry(other), "webhook_secret": "neighbour-secret"}],
                registry=registry_section(registry))
    run_pipeline(j, registry, project.path, pipeline_id=1001, ref="grp", slug="grp", mr_iid=31)
    body = mr_hook(project.path, iid=31, source_branch="grp", action="merge")
    # the group's hook was set up with the neighbour's secret: not this project's
    refused = j.client.post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": "neighbour-secret"})
    assert refused.status_code == 401
    j.tick(advance=GRACE + 1)
    assert plans_of(j, "merge_request_merged") == []

    assert j.hook("Merge Request Hook", body).status_code == 202
    j.tick()
    j.tick(advance=GRACE + 1)
    assert "mr-31" not in tags(registry, project.path)


def fork_mr_hook(repo, *, iid, source_branch, action, fork_id=99, target_id=14):
    body = mr_hook(repo, iid=iid, source_branch=source_branch, action=action)
    body["object_attributes"].update(source_project_id=fork_id, target_project_id=target_id)
    return body


def test_fork_merge_request_ends_only_its_own_pipelines(janitor, registry, project):
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    # the target project has its own branch named like the fork's source branch
    run_pipeline(j, registry, repo, pipeline_id=1101, ref="feature", slug="feature")
    # the fork MR's pipeline, run in the target project (GitLab names the fork's branch as its ref)
    fork_pipeline = pipeline_hook(repo, pipeline_id=1102, ref="feature", mr_iid=5, sha=sha_of(1102),
                                  status="running")
    fork_pipeline["project"]["id"] = 14
    fork_pipeline["merge_request"].update(source_project_id=99, target_project_id=14)
    j.hook("Pipeline Hook", fork_pipeline)
    j.tick()
    push_image(registry, repo, ["mr-5", f"sha-{short(1102)}"])
    fork_pipeline["object_attributes"]["status"] = "success"
    j.hook("Pipeline Hook", fork_pipeline)
    j.tick()

    j.hook("Merge Request Hook", fork_mr_hook(repo, iid=5, source_branch="feature", action="merge"))
    j.tick()
    j.tick(advance=GRACE + 1)
    (plan,) = plans_of(j, "merge_request_merged")
    assert untagged_by(j, plan) == sorted(["mr-5", f"sha-{short(1102)}"])
    remaining = set(tags(registry, repo))
    assert {"feature", f"sha-{short(1101)}"} <= remaining, "the target's same-named branch is not the MR's"


def test_deleting_a_same_named_branch_in_the_target_leaves_an_open_fork_mr_alone(janitor, registry, project):
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    j.hook("Merge Request Hook", fork_mr_hook(repo, iid=6, source_branch="feature", action="open"))
    fork_pipeline = pipeline_hook(repo, pipeline_id=1202, ref="feature", mr_iid=6, sha=sha_of(1202),
                                  status="running")
    fork_pipeline["project"]["id"] = 14
    fork_pipeline["merge_request"].update(source_project_id=99, target_project_id=14)
    j.hook("Pipeline Hook", fork_pipeline)
    j.tick()
    push_image(registry, repo, ["mr-6"])
    fork_pipeline["object_attributes"]["status"] = "success"
    j.hook("Pipeline Hook", fork_pipeline)
    run_pipeline(j, registry, repo, pipeline_id=1201, ref="feature", slug="feature")

    j.hook("Push Hook", push_hook(repo, ref="feature", deleted=True))  # the target's own branch
    j.tick()
    j.tick(advance=GRACE + 1)
    remaining = set(tags(registry, repo))
    assert "feature" not in remaining
    assert "mr-6" in remaining, "the fork MR is still open: its tag is not the target branch's"


def test_fork_project_tags_are_not_the_target_projects(janitor, registry, gitlab, project):
    fork = gitlab.add_project(f"fork-{project.path.replace('/', '-')}/app")
    j = janitor([project_entry(project), {**project_entry(fork), "webhook_secret": "fork-secret"}],
                registry=registry_section(registry))
    # the fork MR's pipeline ran in the fork and pushed to the fork's own repository
    body = pipeline_hook(fork.path, pipeline_id=1301, ref="feature", mr_iid=8, sha=sha_of(1301),
                         status="running")
    body["project"]["id"] = fork.id
    body["merge_request"].update(source_project_id=fork.id, target_project_id=project.id)
    j.hook("Pipeline Hook", body, secret="fork-secret")
    j.tick()
    push_image(registry, fork.path, ["mr-8"])
    j.tick()
    j.hook("Merge Request Hook", fork_mr_hook(project.path, iid=8, source_branch="feature",
                                              action="merge", fork_id=fork.id, target_id=project.id))
    j.tick()
    j.tick(advance=GRACE + 1)
    assert tags(registry, fork.path) == ["mr-8"]
    assert [u for u in j.store.list_untags() if u.repository == fork.path] == []



def test_merged_long_before_the_pipeline_pushes_still_removes_its_tag(janitor, registry, project):
    j = janitor([project_entry(project)], registry=registry_section(registry))
    repo = project.path
    sha = sha_of(402)
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=402, ref="slow", mr_iid=8, sha=sha,
                                          status="running"))
    j.hook("Merge Request Hook", mr_hook(repo, iid=8, source_branch="slow", action="merge"))
    j.tick()
    j.tick(advance=GRACE + 1)  # the merge plan runs while the pipeline has pushed nothing yet
    push_image(registry, repo, ["mr-8"])
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=402, ref="slow", mr_iid=8, sha=sha,
                                          status="success"))
    j.tick()
    j.tick(advance=GRACE + 1)
    j.tick(advance=GRACE + 1)
    assert "mr-8" not in tags(registry, repo)
