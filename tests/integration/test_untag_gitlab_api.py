"""The gitlab-api untag method end to end: GitLab's own tag delete (the stand-in carries it out on the real
registry), with the project's token, repository ids looked up once."""

from support.images import push_image, tags
from support.janitor import SECRET, mr_hook, pipeline_hook

DELETE = "DELETE /api/v4/projects/:id/registry/repositories/:repository_id/tags/:tag_name"
LIST = "GET /api/v4/projects/:id/registry/repositories"


def test_gitlab_api_method_untags_through_gitlab(janitor, registry, gitlab, project):
    j = janitor(
        [{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token, "dry_run": False,
          "grace_period": "1m", "tags": [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}]}],
        registry={"url": registry.url, "requests_per_second": 0, "untag_method": "gitlab-api"},
        gitlab={"url": gitlab.url})
    push_image(registry, project.path, ["mr-1", "mr-2", "keep"])
    for iid in (1, 2, 3):  # MR 3's pipeline pushed nothing: its tag is missing, not failed
        j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=iid, ref=f"b{iid}", mr_iid=iid,
                                              status="running"))
        j.hook("Merge Request Hook", mr_hook(project.path, iid=iid, source_branch=f"b{iid}", action="merge"))
        j.tick()
        j.tick(advance=61)
    assert tags(registry, project.path) == ["keep"]
    got = {u.tag: (u.outcome, u.reason, u.method) for u in j.store.list_untags()}
    assert got == {"mr-1": ("done", None, "gitlab-api"), "mr-2": ("done", None, "gitlab-api"),
                   "mr-3": ("skipped", "missing", None)}
    assert gitlab.calls[DELETE] == 2 and gitlab.calls[LIST] == 1
