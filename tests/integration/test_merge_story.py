"""The merge story on the real registry, with the janitor in process: a pipeline pushes mr-N, the MR is
merged, and after the grace period exactly that tag is gone while a sibling tag on the same digest and the
image survive; in a dry run, nothing is written."""

from support.images import digest_of, push_image, tags
from support.janitor import SECRET, mr_hook, pipeline_hook, registry_section

MR_TAG = {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}


def test_merged_mr_tag_is_untagged_and_sibling_survives(janitor, registry, project):
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                  "dry_run": False, "grace_period": "15m", "tags": [MR_TAG]}],
                registry=registry_section(registry))
    repo = project.path
    digest = push_image(registry, repo, ["mr-42", "release-candidate"])

    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=101, ref="feature/x", mr_iid=42))
    j.tick()
    j.hook("Merge Request Hook", mr_hook(repo, iid=42, source_branch="feature/x", action="merge"))
    j.tick()

    (plan,) = j.store.list_plans()
    assert plan.state == "scheduled" and plan.trigger_kind == "merge_request_merged"
    assert "mr-42" in tags(registry, repo)  # the grace period has not passed

    j.tick(advance=15 * 60 + 1)

    assert sorted(tags(registry, repo)) == ["release-candidate"]
    assert digest_of(registry, repo, "release-candidate") == digest
    (untag,) = j.store.list_untags()
    assert (untag.tag, untag.outcome, untag.method) == ("mr-42", "done", "placeholder")
    assert j.store.get_plan(plan.id).state == "done"


def test_dry_run_records_what_would_happen_and_writes_nothing(janitor, registry, project):
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                  "grace_period": "1m", "tags": [MR_TAG]}],
                registry=registry_section(registry))
    push_image(registry, project.path, ["mr-7"])
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=5, ref="f", mr_iid=7))
    j.hook("Merge Request Hook", mr_hook(project.path, iid=7, source_branch="f", action="close"))
    j.tick()
    registry.mark()
    j.tick(advance=61)
    served = registry.request_log(repo=project.path)
    assert served, "the dry run still reads the tag (HEAD) before deciding"
    assert [r for r in served if r.method in ("PUT", "POST", "PATCH", "DELETE")] == []
    assert tags(registry, project.path) == ["mr-7"]
    (untag,) = j.store.list_untags()
    assert untag.outcome == "dry_run"
