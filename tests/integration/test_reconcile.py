"""Catching up (SPEC 11): missed merge and branch-delete webhooks found through the GitLab API (python-gitlab
against the stand-in), raised through the webhooks' own code paths, untagged on the real registry."""

import datetime as dt

import yaml
from apscheduler.schedulers.background import BackgroundScheduler
from click.testing import CliRunner
from support.images import push_image, tags
from support.janitor import SECRET, mr_hook, pipeline_hook, push_hook, registry_section

from daemon.cli import main
from daemon.ingest.catchup import REF_CURSOR_KEY, WATERMARK_KEY
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
    j = on_standin(janitor, registry, gitlab, [entry(project)])
    repo = project.path
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=1001, ref="cli", mr_iid=11, status="running"))
    j.tick()
    gitlab.set_mr(project, 11, source_branch="cli", state="merged")
    config = tmp_path / "janitor.yaml"
    config.write_text(yaml.safe_dump({
        "gitlab": {"url": gitlab.url}, "registry": {"url": registry.url},
        "storage": {"url": j.settings.storage.url},
        "projects": [entry(project), {"path": "absent/thing", "webhook_secret": "s"}]}))

    result = CliRunner().invoke(main, ["reconcile", "--config", str(config), "--project", repo])
    assert result.exit_code == 0, result.output
    assert f"{repo}: " in result.output and "merged not yet seen: !11" in result.output
    assert f"merge_request_merged (merge_request_merged:{repo}:11)" in result.output
    assert "branch(es) checked; deleted: cli" in result.output

    again = CliRunner().invoke(main, ["reconcile", "--config", str(config)])
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
