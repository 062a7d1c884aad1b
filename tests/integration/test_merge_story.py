"""End to end on the real registry: a pipeline pushes mr-N, the MR is merged, and after the grace
period exactly that tag is gone while a sibling tag on the same digest and the image survive."""

import pytest
from janitor_env import SECRET, Harness, make_settings, mr_hook, pipeline_hook
from support.images import digest_of, push_image, tags


@pytest.fixture
def janitor(tmp_path, registry, project):
    settings = make_settings(
        [{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
          "dry_run": False, "grace_period": "15m",
          "tags": [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}]}],
        registry={"url": registry.url, "requests_per_second": 0},
    )
    harness = Harness(tmp_path, settings)
    yield harness
    harness.close()


def test_merged_mr_tag_is_untagged_and_sibling_survives(janitor, registry, project):
    repo = project.path
    digest = push_image(registry, repo, ["mr-42", "release-candidate"])

    janitor.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=101, ref="feature/x", mr_iid=42))
    janitor.tick()
    janitor.hook("Merge Request Hook", mr_hook(repo, iid=42, source_branch="feature/x", action="merge"))
    janitor.tick()

    (plan,) = janitor.store.list_plans()
    assert plan.state == "scheduled" and plan.trigger_kind == "merge_request_merged"
    assert "mr-42" in tags(registry, repo)  # the grace period has not passed

    janitor.tick(advance=15 * 60 + 1)

    assert sorted(tags(registry, repo)) == ["release-candidate"]
    assert digest_of(registry, repo, "release-candidate") == digest
    (untag,) = janitor.store.list_untags()
    assert (untag.tag, untag.outcome, untag.method) == ("mr-42", "done", "placeholder")
    assert janitor.store.get_plan(plan.id).state == "done"


def test_dry_run_records_what_would_happen_and_writes_nothing(tmp_path, registry, project):
    settings = make_settings(
        [{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
          "grace_period": "1m", "tags": [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}]}],
        registry={"url": registry.url, "requests_per_second": 0},
    )
    janitor = Harness(tmp_path, settings)
    push_image(registry, project.path, ["mr-7"])
    janitor.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=5, ref="f", mr_iid=7))
    janitor.hook("Merge Request Hook", mr_hook(project.path, iid=7, source_branch="f", action="close"))
    janitor.tick()
    registry.mark()
    janitor.tick(advance=61)
    served = registry.request_log(repo=project.path)
    assert served, "the dry run still reads the tag (HEAD) before deciding"
    assert [r for r in served if r.method in ("PUT", "POST", "PATCH", "DELETE")] == []
    assert tags(registry, project.path) == ["mr-7"]
    (untag,) = janitor.store.list_untags()
    assert untag.outcome == "dry_run"
    janitor.close()
