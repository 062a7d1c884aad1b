"""Catching up (SPEC 11): missed merge and branch-delete webhooks found through the GitLab API (python-gitlab
against the stand-in), raised through the webhooks' own code paths, untagged on the real registry."""

import datetime as dt
import re

import requests
import yaml
from apscheduler.schedulers.background import BackgroundScheduler
from click.testing import CliRunner
from openapi_schema_validator import OAS31Validator
from support.images import push_image, tags
from support.janitor import ADMIN, SECRET, RealClock, mr_hook, pipeline_hook, push_hook, registry_section

from daemon.cli import main
from daemon.ingest.catchup import PIPELINE_WATERMARK_KEY, REF_CURSOR_KEY, WATERMARK_KEY
from daemon.ops.status import iso
from daemon.wiring import build_reconciler

GRACE = 15 * 60
PATTERNS = [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"},
            {"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"}]


def entry(project, **extra):
    return {"path": project.path, "webhook_secret": SECRET, "registry_token": project.token, "dry_run": False,
            "grace_period": "15m", "tags": PATTERNS, **extra}


def on_standin(janitor, registry, gitlab, projects, **gitlab_settings):
    """From the ``janitor`` factory: ``projects`` on the real registry, GitLab being the stand-in."""
    return janitor(projects, registry=registry_section(registry),
                   gitlab={"url": gitlab.url, "timeout": 5, **gitlab_settings})


def reconciler(j, **bounds):
    return build_reconciler(j.settings, j.store, j.worker.ingest, clock=j.clock, **bounds)


def test_a_merge_whose_webhook_never_came_is_found_and_its_tag_untagged(janitor, registry, gitlab, project):
    j = on_standin(janitor, registry, gitlab, [entry(project)])
    repo = project.path
    digest = push_image(registry, repo, ["mr-42", "release-candidate"])
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=101, ref="feature/x", mr_iid=42))
    j.tick()
    gitlab.add_branch(project, "feature/x")
    gitlab.set_mr(project, 42, source_branch="feature/x", state="merged")  # GitLab's webhook was lost

    (report,) = reconciler(j).run()

    assert report.ok and report.merged == [42] and report.deleted == []
    (plan,) = report.plans
    assert (plan.trigger_kind, plan.trigger_key) == ("merge_request_merged", f"merge_request_merged:{repo}:42")
    assert j.store.merge_request_state(repo, 42) == "merged"
    assert j.store.ref_known_live(repo, "feature/x") is True  # the branch is still there
    assert "mr-42" in tags(registry, repo)  # the plan waits its grace period like any other

    j.tick(advance=GRACE + 1)

    assert tags(registry, repo) == ["release-candidate"]
    (untag,) = j.store.list_untags()
    assert (untag.tag, untag.outcome, untag.expected_digest) == ("mr-42", "done", digest)


def test_a_deleted_branch_is_found_and_a_live_one_is_left_alone(janitor, registry, gitlab, project):
    j = on_standin(janitor, registry, gitlab, [entry(project)])
    repo = project.path
    push_image(registry, repo, ["feature-y", "feature-z"])
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=201, ref="feature-y"))
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=202, ref="feature-z"))
    j.tick()
    gitlab.add_branch(project, "feature-y")
    gitlab.add_branch(project, "feature-z")
    gitlab.delete_branch(project, "feature-y")  # a push touching many refs: GitLab sends no push hook

    (report,) = reconciler(j).run()

    assert report.ok and report.refs_checked == 2 and report.deleted == ["feature-y"]
    (plan,) = report.plans
    assert plan.trigger_key == f"branch_deleted:{repo}:feature-y"
    assert j.store.ref_known_live(repo, "feature-y") is False
    assert j.store.ref_known_live(repo, "feature-z") is True
    j.tick(advance=GRACE + 1)
    assert tags(registry, repo) == ["feature-z"]


def test_a_trigger_raised_by_webhook_and_reconcile_makes_one_plan(janitor, registry, gitlab, project):
    j = on_standin(janitor, registry, gitlab, [entry(project)])
    repo = project.path
    push_image(registry, repo, ["mr-7", "gone"])
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=301, ref="f7", mr_iid=7))
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=302, ref="gone"))
    j.tick()
    gitlab.add_branch(project, "f7")
    gitlab.set_mr(project, 7, source_branch="f7", state="merged")
    # The webhooks arrive and are stored, but reconcile runs before the worker applies them.
    j.hook("Merge Request Hook", mr_hook(repo, iid=7, source_branch="f7", action="merge"))
    j.hook("Push Hook", push_hook(repo, ref="gone", deleted=True))

    (report,) = reconciler(j).run()
    made = {p.trigger_key for p in report.plans}
    assert made == {f"merge_request_merged:{repo}:7", f"branch_deleted:{repo}:gone"}
    j.tick()  # now the webhooks are applied: the same triggers again

    plans = j.store.list_plans()
    assert sorted(p.trigger_key for p in plans) == sorted(made)  # one plan per trigger, not two
    j.tick(advance=GRACE + 1)
    assert tags(registry, repo) == []
    assert sorted(u.tag for u in j.store.list_untags() if u.outcome == "done") == ["gone", "mr-7"]


def test_what_webhooks_already_told_is_not_raised_again(janitor, registry, gitlab, project):
    j = on_standin(janitor, registry, gitlab, [entry(project)])
    repo = project.path
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=401, ref="f8", mr_iid=8, status="running"))
    j.hook("Merge Request Hook", mr_hook(repo, iid=8, source_branch="f8", action="close"))
    j.hook("Push Hook", push_hook(repo, ref="f8", deleted=True))
    j.tick()
    before = [(p.id, p.trigger_key) for p in j.store.list_plans()]
    gitlab.set_mr(project, 8, source_branch="f8", state="closed")

    (report,) = reconciler(j).run()

    assert report.ok and report.closed == [] and report.deleted == [] and report.plans == []
    assert [(p.id, p.trigger_key) for p in j.store.list_plans()] == before


def test_the_watermark_advances_and_a_second_run_makes_nothing_new(janitor, registry, gitlab, project):
    j = on_standin(janitor, registry, gitlab, [entry(project)])
    repo = project.path
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=501, ref="f1", mr_iid=1, status="running"))
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=502, ref="f2", mr_iid=2, status="running"))
    j.tick()
    for name in ("f1", "f2"):
        gitlab.add_branch(project, name)
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    gitlab.set_mr(project, 1, source_branch="f1", state="merged", updated_at=t0)
    gitlab.set_mr(project, 2, source_branch="f2", state="opened", updated_at=t0 + dt.timedelta(seconds=1))
    r = reconciler(j)

    first, = r.run()
    key = WATERMARK_KEY.format(project=repo)
    assert first.merged == [1] and len(first.plans) == 1
    assert j.store.get_value(key) == (t0 + dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert j.store.merge_request_state(repo, 2) == "opened"  # learned: f2 belongs to an open MR

    second, = r.run()
    assert second.ok and second.merged == second.closed == [] and second.plans == []
    assert len(j.store.list_plans()) == 1

    gitlab.set_mr(project, 2, source_branch="f2", state="closed", updated_at=t0 + dt.timedelta(minutes=20))
    third, = r.run()
    assert third.closed == [2] and [p.trigger_key for p in third.plans] == [f"merge_request_closed:{repo}:2"]
    assert j.store.get_value(key) == (t0 + dt.timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert third.since == (t0 + dt.timedelta(seconds=1) - dt.timedelta(minutes=5)).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z")


def test_a_missed_reopen_cancels_the_waiting_close_plan(janitor, registry, gitlab, project):
    j = on_standin(janitor, registry, gitlab, [entry(project)])
    repo = project.path
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=601, ref="f9", mr_iid=9, status="running"))
    j.hook("Merge Request Hook", mr_hook(repo, iid=9, source_branch="f9", action="close"))
    j.tick()
    (plan,) = j.store.list_plans()
    gitlab.add_branch(project, "f9")
    gitlab.set_mr(project, 9, source_branch="f9", state="opened")  # reopened; that webhook was lost

    (report,) = reconciler(j).run()

    assert report.reopened == [9]
    assert j.store.get_plan(plan.id).state == "cancelled"


def test_runs_are_bounded_and_go_on_where_they_stopped(janitor, registry, gitlab, project):
    j = on_standin(janitor, registry, gitlab, [entry(project)])
    repo = project.path
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for i in range(1, 6):
        j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=700 + i, ref=f"b{i}", mr_iid=i,
                                              status="running"))
        gitlab.set_mr(project, i, source_branch=f"b{i}", state="merged", updated_at=t0 + dt.timedelta(minutes=i * 10))
    j.tick()
    r = reconciler(j, max_merge_requests=2, max_refs=2)

    runs = [r.run()[0] for _ in range(4)]

    assert [x.merged for x in runs] == [[1, 2], [3, 4], [5], []]
    assert [x.more for x in runs[:3]] == [True, True, True]  # refs: 5 open, 2 asked a run
    assert [x.refs_checked for x in runs] == [2, 2, 2, 2]
    assert len(j.store.list_plans()) == 5 + 5  # each merge, and each branch (none were created)
    assert j.store.get_value(REF_CURSOR_KEY.format(project=repo)) is not None
    assert sorted(ref for x in runs for ref in x.deleted) == ["b1", "b2", "b3", "b4", "b5"]


def test_one_failing_project_does_not_stop_the_others(janitor, registry, gitlab, project):
    other = gitlab.add_project(f"{project.path}-other")
    hidden = gitlab.add_project(f"{project.path}-hidden")
    j = on_standin(janitor, registry, gitlab, [
        entry(other, registry_token="glpat-revoked"),          # GitLab refuses the token (401)
        entry(hidden, registry_token=project.token),           # a token that cannot see the project (404)
        entry(project)])
    for p, pid in ((other, 1), (hidden, 2), (project, 3)):
        j.hook("Pipeline Hook", pipeline_hook(p.path, pipeline_id=800 + pid, ref="topic", mr_iid=pid,
                                                   status="running"))
        gitlab.set_mr(p, pid, source_branch="topic", state="merged")
    j.tick()

    reports = {r.project_path: r for r in reconciler(j).run()}

    assert "401" in reports[other.path].error and "404" in reports[hidden.path].error
    assert reports[project.path].ok and reports[project.path].merged == [3]
    # A token that cannot see a project never makes its branches look deleted.
    assert reports[hidden.path].deleted == [] and reports[hidden.path].plans == []
    assert {p.project_path for p in j.store.list_plans()} == {project.path}
    assert j.store.get_value(WATERMARK_KEY.format(project=other.path)) is None  # moves only after success


def test_a_project_the_ledger_has_no_pipeline_of_is_not_listed_from_the_beginning(janitor, registry, gitlab, project):
    j = on_standin(janitor, registry, gitlab, [entry(project)])
    gitlab.set_mr(project, 1, source_branch="old", state="merged")
    (report,) = reconciler(j).run()
    assert report.ok and report.since is None and report.merged == []
    assert "no pipeline of this project in the ledger yet" in report.summary()
    assert gitlab.calls["GET /api/v4/projects/:id/merge_requests"] == 0
    assert gitlab.calls["GET /api/v4/projects/:id/pipelines"] == 0
    assert j.store.get_value(WATERMARK_KEY.format(project=project.path)) is None


def test_gitlab_down_is_reported_per_project(janitor, registry, gitlab, project):
    j = janitor([entry(project)], registry={"url": registry.url}, gitlab={"url": "http://127.0.0.1:9", "timeout": 2})
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=900, ref="t", mr_iid=1))
    j.tick()
    (report,) = reconciler(j).run()
    assert not report.ok and "could not be reached" in report.error and report.plans == []


def test_group_entries_cover_the_ledger_projects_below_the_group(janitor, registry, gitlab, project):
    group = project.path.split("/")[0]
    known = gitlab.add_project(f"{group}/known")
    gitlab.add_project(f"{group}/never-seen")
    j = on_standin(janitor, registry, gitlab, [
        {"path": f"{group}/*", "webhook_secret": SECRET, "dry_run": False, "tags": PATTERNS}],
        api_token=gitlab.admin_token)
    j.hook("Pipeline Hook", pipeline_hook(known.path, pipeline_id=950, ref="g", mr_iid=5, status="running"))
    j.tick()
    gitlab.add_branch(known, "g")
    gitlab.set_mr(known, 5, source_branch="g", state="closed")

    reports = reconciler(j).run()

    assert [r.project_path for r in reports] == [known.path]
    assert reports[0].closed == [5] and len(reports[0].plans) == 1


def test_the_reconcile_command_prints_what_it_found_and_the_plans_it_made(tmp_path, registry, gitlab, project, janitor):
    j = janitor([entry(project), {"path": "absent/thing", "webhook_secret": "s"}], registry=registry_section(registry),
                gitlab={"url": gitlab.url, "timeout": 5}, clock=RealClock())
    repo = project.path
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=1001, ref="cli", mr_iid=11, status="running"))
    j.tick()
    gitlab.set_mr(project, 11, source_branch="cli", state="merged")
    config = tmp_path / "janitor.yaml"
    config.write_text(yaml.safe_dump({
        "gitlab": {"url": gitlab.url}, "registry": {"url": registry.url},
        "storage": {"url": j.settings.storage.url},
        "projects": [entry(project), {"path": "absent/thing", "webhook_secret": "s"}]}))

    with j.working():  # the worker runs what the command asks for
        result = CliRunner().invoke(main, ["reconcile", "--config", str(config), "--project", repo])
        again = CliRunner().invoke(main, ["reconcile", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"{repo}: " in result.output and "merged not yet seen: !11" in result.output
    assert f"merge_request_merged (merge_request_merged:{repo}:11)" in result.output
    assert "branch(es) checked; deleted: cli" in result.output

    assert again.exit_code == 0, again.output
    assert "absent/thing: skipped: no gitlab.api_token" in again.output
    assert f"{repo}: " in again.output and "0 plan(s) made" in again.output

    unknown = CliRunner().invoke(main, ["reconcile", "--config", str(config), "--project", "nope/x"])
    assert unknown.exit_code == 2 and "not configured" in unknown.output


def test_the_worker_schedules_reconcile_every_interval(janitor, registry, gitlab, project):
    j = janitor([entry(project)], gitlab={"url": gitlab.url}, registry={"url": registry.url},
                worker={"reconcile_interval": "7m"})
    scheduler = BackgroundScheduler()
    job = j.worker.schedule_reconcile(scheduler)
    scheduler.start(paused=True)
    try:
        assert job.id == "reconcile" and job.trigger.interval == dt.timedelta(minutes=7)
        assert job.next_run_time is not None and job.max_instances == 1 and job.coalesce
    finally:
        scheduler.shutdown(wait=False)


# pipelines ---------------------------------------------------------------------------------------------
PIPELINE_PATTERNS = [*PATTERNS, {"pattern": "p-$CI_PIPELINE_ID", "lifetime": "pipeline"}]


def records(j, repo, pipeline_id):
    return {r.tag: r.state for r in j.store.records_of_pipeline(repo, pipeline_id)}


def stuck(j):
    response = j.client.get("/api/v1/status", headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200
    body = response.get_json()
    doc = j.client.get("/api/v1/openapi.json").get_json()
    OAS31Validator({"$ref": "#/components/schemas/Status", "components": doc["components"]}).validate(body)
    return body["stuck_pipelines"]


def test_a_janitor_down_for_an_hour_records_the_pipelines_it_never_heard_of_and_plans_what_ended(
        janitor, registry, gitlab, project):
    j = on_standin(janitor, registry, gitlab, [entry(project, tags=PIPELINE_PATTERNS)])
    repo = project.path
    for branch in ("feature-a", "feature-b", "feature-c"):
        gitlab.add_branch(project, branch)
    # Before the janitor went down it heard pipeline 1001 start.
    gitlab.add_pipeline(project, id=1001, ref="feature-a", status="running")
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=1001, ref="feature-a", status="running"))
    j.tick()
    # The hour it was down: 1001 finished, MR !5's pipeline ran and the MR was merged, a tag was built,
    # and a pipeline on feature-c is still running. Their jobs pushed.
    gitlab.set_pipeline_status(project, 1001, "success")
    gitlab.set_mr(project, 5, source_branch="feature-b", state="opened")
    gitlab.add_pipeline(project, id=1002, ref="refs/merge-requests/5/head", source="merge_request_event",
                        status="success")
    gitlab.set_mr(project, 5, source_branch="feature-b", state="merged")
    gitlab.add_pipeline(project, id=1003, ref="feature-c", status="running")
    gitlab.add_pipeline(project, id=1004, ref="v1.2", tag=True, status="success")
    digest = push_image(registry, repo, ["feature-a", "p-1001", "feature-b", "mr-5", "p-1002", "v1-2", "p-1004"])

    (report,) = reconciler(j).run()

    assert report.ok, report.error
    assert report.merged == [5]
    assert sorted(report.recorded) == [1002, 1003, 1004]
    assert sorted(report.finished) == [1001, 1002, 1004]
    mr_pipeline = j.store.get_pipeline(repo, 1002)
    assert (mr_pipeline.ref, mr_pipeline.mr_iid, mr_pipeline.status) == ("feature-b", 5, "success")
    tag_pipeline = j.store.get_pipeline(repo, 1004)
    assert tag_pipeline.is_tag and tag_pipeline.ref == "v1.2"
    # Their patterns were expanded: the finished ones' tags resolved in the registry, the running one's wait.
    assert records(j, repo, 1002) == {"mr-5": "confirmed", "feature-b": "confirmed", "p-1002": "confirmed"}
    assert records(j, repo, 1003) == {"feature-c": "expected", "p-1003": "expected"}
    assert records(j, repo, 1004) == {"v1-2": "confirmed", "p-1004": "confirmed"}
    assert report.deleted == []  # a tag is never asked about as a branch; the branches are all there
    keys = {p.trigger_key for p in j.store.list_plans()}
    assert keys == {f"pipeline_finished:{repo}:1001", f"pipeline_finished:{repo}:1002",
                    f"pipeline_finished:{repo}:1004", f"merge_request_merged:{repo}:5"}
    assert "pipelines never heard of: #1002, #1003, #1004" in report.summary()

    j.tick(advance=GRACE + 1)

    assert tags(registry, repo) == ["feature-a", "feature-b", "v1-2"]
    done = {u.tag: u.expected_digest for u in j.store.list_untags() if u.outcome == "done"}
    assert done == {"p-1001": digest, "p-1002": digest, "mr-5": digest, "p-1004": digest}


def test_a_lost_final_pipeline_hook_is_caught_up_once(janitor, registry, gitlab, project):
    j = on_standin(janitor, registry, gitlab, [entry(project, tags=PIPELINE_PATTERNS)])
    repo = project.path
    gitlab.add_branch(project, "topic")
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    gitlab.add_pipeline(project, id=2001, ref="topic", status="running", created_at=t0)
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=2001, ref="topic", status="running"))
    j.tick()
    push_image(registry, repo, ["topic", "p-2001"])
    gitlab.set_pipeline_status(project, 2001, "success", updated_at=t0 + dt.timedelta(minutes=3))  # hook lost
    r = reconciler(j)

    first, = r.run()

    assert first.ok and first.recorded == [] and first.finished == [2001]
    assert j.store.get_pipeline(repo, 2001).status == "success"
    (plan,) = first.plans
    assert plan.trigger_key == f"pipeline_finished:{repo}:2001"
    assert j.store.get_value(PIPELINE_WATERMARK_KEY.format(project=repo)) == (
        t0 + dt.timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    second, = r.run()
    assert second.ok and second.finished == second.recorded == [] and second.plans == []
    assert second.pipelines_since == (t0 - dt.timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    j.tick(advance=GRACE + 1)
    assert tags(registry, repo) == ["topic"]


def test_pipelines_are_listed_a_bounded_number_a_run(janitor, registry, gitlab, project):
    j = on_standin(janitor, registry, gitlab, [entry(project, tags=PIPELINE_PATTERNS)])
    repo = project.path
    gitlab.add_branch(project, "bounded")
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=2100, ref="bounded", status="running"))
    j.tick()
    for i in range(1, 6):
        gitlab.add_pipeline(project, id=2100 + i, ref="bounded", status="success",
                            created_at=t0 + dt.timedelta(minutes=10 * i))
    r = reconciler(j, max_pipelines=2)

    runs = [r.run()[0] for _ in range(4)]

    assert [sorted(x.recorded) for x in runs] == [[2101, 2102], [2103, 2104], [2105], []]
    assert [x.more for x in runs] == [True, True, False, False]
    assert gitlab.calls["GET /api/v4/projects/:id/pipelines/:pipeline_id"] == 5  # each new one asked once


def test_merge_request_pipelines_take_their_branch_and_a_fork_keeps_the_mr_ref(janitor, registry, gitlab, project):
    j = on_standin(janitor, registry, gitlab, [entry(project, tags=PIPELINE_PATTERNS)])
    repo = project.path
    gitlab.add_branch(project, "seen")
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=2200, ref="seen", status="running"))
    j.tick()
    long_ago = dt.datetime(2015, 1, 1, tzinfo=dt.UTC)  # before the first run's merge request listing
    gitlab.add_branch(project, "own-branch")
    gitlab.set_mr(project, 21, source_branch="own-branch", state="opened", updated_at=long_ago)
    gitlab.set_mr(project, 22, source_branch="fork-branch", source_project_id=project.id + 10_000,
                  state="opened", updated_at=long_ago)
    gitlab.add_pipeline(project, id=2201, ref="refs/merge-requests/21/head", source="merge_request_event",
                        status="running")
    gitlab.add_pipeline(project, id=2202, ref="refs/merge-requests/22/head", source="merge_request_event",
                        status="running")

    (report,) = reconciler(j).run()

    assert report.ok and sorted(report.recorded) == [2201, 2202]
    own, fork = j.store.get_pipeline(repo, 2201), j.store.get_pipeline(repo, 2202)
    assert (own.ref, own.mr_iid) == ("own-branch", 21)
    assert (fork.ref, fork.mr_iid) == ("refs/merge-requests/22/head", 22)
    assert j.store.merge_request_state(repo, 21) == j.store.merge_request_state(repo, 22) == "opened"
    assert gitlab.calls["GET /api/v4/projects/:id/merge_requests/:iid"] == 2
    assert records(j, repo, 2201) == {"mr-21": "expected", "own-branch": "expected", "p-2201": "expected"}
    # $CI_COMMIT_REF_SLUG of a fork's MR pipeline is its source branch's, as GitLab sets it.
    assert records(j, repo, 2202) == {"mr-22": "expected", "fork-branch": "expected", "p-2202": "expected"}


def test_a_pipeline_left_at_manual_shows_as_stuck_until_gitlab_says_it_finished(janitor, registry, gitlab, project):
    j = janitor([entry(project, tags=PIPELINE_PATTERNS)], registry=registry_section(registry),
                gitlab={"url": gitlab.url, "timeout": 5}, worker={"stuck_pipeline_after": "2h"})
    repo = project.path
    gitlab.add_branch(project, "deploy")
    gitlab.add_pipeline(project, id=3001, ref="deploy", status="manual")
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=3001, ref="deploy", status="manual"))
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=3002, ref="deploy", status="success"))
    j.tick()
    heard = j.clock()
    assert stuck(j) == {"after_seconds": 7200.0, "after": "2h", "count": 0, "pipelines": []}

    j.tick(advance=3600)
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=3003, ref="deploy", status="running"))
    j.tick(advance=3601)

    found = stuck(j)
    assert found["count"] == 1
    assert found["pipelines"] == [{"project": repo, "pipeline_id": 3001, "ref": "deploy", "status": "manual",
                                   "since": iso(heard), "age_seconds": 7201.0}]
    html = j.client.get("/dashboard", auth=("ops", ADMIN)).get_data(as_text=True)
    row = re.search(r'<tr data-stuck-pipeline="3001">(.*?)</tr>', html, re.S)
    assert row is not None and repo in row.group(1) and "manual" in row.group(1) and "2h ago" in row.group(1)
    assert 'data-stuck-pipeline="3003"' not in html and 'data-stuck-pipeline="3002"' not in html

    gitlab.set_pipeline_status(project, 3001, "success")
    (report,) = reconciler(j).run()
    assert report.finished == [3001]
    assert stuck(j)["count"] == 0


# merge requests: "trigger raised", not the stored state ------------------------------------------------
def test_a_lost_merge_hook_followed_by_an_update_hook_is_planned(janitor, registry, gitlab, project):
    j = on_standin(janitor, registry, gitlab, [entry(project)])
    repo = project.path
    gitlab.add_branch(project, "f9")
    push_image(registry, repo, ["mr-9", "f9"])
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=4001, ref="f9", mr_iid=9))
    j.tick()
    gitlab.set_mr(project, 9, source_branch="f9", state="merged")  # GitLab's merge hook was lost
    update = mr_hook(repo, iid=9, source_branch="f9", action="update")
    update["object_attributes"]["state"] = "merged"  # a later hook (a label, an approval) says merged
    j.hook("Merge Request Hook", update)
    j.tick()

    (report,) = reconciler(j).run()

    assert report.ok
    assert [p.trigger_key for p in j.store.list_plans()] == [f"merge_request_merged:{repo}:9"]
    j.tick(advance=GRACE + 1)
    assert tags(registry, repo) == ["f9"]


def test_a_merged_merge_request_stored_without_its_trigger_is_planned_once(janitor, registry, gitlab, project):
    """A ledger that holds `merged` for an MR whose trigger was never raised (as janitors wrote it when a
    lost merge hook was followed by an update) is caught up: reconcile compares with the trigger raised."""
    j = on_standin(janitor, registry, gitlab, [entry(project)])
    repo = project.path
    gitlab.add_branch(project, "f10")
    push_image(registry, repo, ["mr-10"])
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=4101, ref="f10", mr_iid=10))
    j.tick()
    with j.store.transaction():
        j.store.set_merge_request(repo, 10, "f10", "merged", project.id, project.id, j.clock())
    assert j.store.merge_request_trigger_raised(repo, 10) is None
    gitlab.set_mr(project, 10, source_branch="f10", state="merged")
    r = reconciler(j)

    first, = r.run()

    assert first.ok and first.merged == [10]
    assert [p.trigger_key for p in first.plans] == [f"merge_request_merged:{repo}:10"]
    assert j.store.merge_request_trigger_raised(repo, 10) == "merged"
    second, = r.run()
    assert second.ok and second.merged == [] and second.plans == []
    j.tick(advance=GRACE + 1)
    assert tags(registry, repo) == []


def test_the_standin_lists_pipelines_as_gitlab_does(gitlab, project):
    """doc/api/pipelines.md, lib/api/ci/pipelines.rb and app/finders/ci/pipelines_finder.rb: what reconcile
    relies on (inclusive updated_after, ascending updated_at, pages) and what GitLab refuses."""
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for i, (ref, source) in enumerate([("main", "push"), ("refs/merge-requests/3/head", "merge_request_event"),
                                       ("main", "parent_pipeline"), ("main", "schedule")]):
        gitlab.add_pipeline(project, id=5001 + i, ref=ref, source=source, status="running",
                            created_at=t0, updated_at=t0 + dt.timedelta(minutes=10 - i))
    url = f"{gitlab.api_url}/projects/{project.id}/pipelines"
    headers = {"PRIVATE-TOKEN": project.token}

    def ids(**params):
        response = requests.get(url, params=params, headers=headers, timeout=5)
        assert response.status_code == 200, response.text
        return [p["id"] for p in response.json()], response

    assert ids()[0] == [5004, 5002, 5001]  # newest id first; child pipelines only when asked for
    assert ids(source="parent_pipeline")[0] == [5003]
    after = (t0 + dt.timedelta(minutes=8)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ids(updated_after=after, order_by="updated_at", sort="asc")[0] == [5002, 5001]
    page, response = ids(order_by="updated_at", sort="asc", per_page=2)
    assert page == [5004, 5002] and response.headers["X-Total"] == "3" and 'rel="next"' in response.headers["Link"]
    (listed,) = [p for p in response.json() if p["id"] == 5002]
    assert set(listed) == {"id", "iid", "project_id", "status", "source", "ref", "sha", "name", "web_url",
                           "created_at", "updated_at"}
    bad = requests.get(url, params={"order_by": "created_at"}, headers=headers, timeout=5)
    assert (bad.status_code, bad.json()) == (400, {"error": "order_by does not have a valid value"})
    single = requests.get(f"{url}/5001", headers=headers, timeout=5).json()
    assert single["tag"] is False and single["detailed_status"]["group"] == "running"
    missing = requests.get(f"{url}/999999", headers=headers, timeout=5)
    assert (missing.status_code, missing.json()) == (404, {"message": "404 Not found"})
