"""SPEC 14, projects: a path is a valid GitLab path, and ``group/*`` never covers a path that belongs to a
more specific configured entry. Forged hooks signed with a wildcard entry's secret, on the real registry:
they never reach an image of the exactly configured project below that group."""

from __future__ import annotations

import pytest
from support.images import push_image, tags
from support.janitor import SECRET, Harness, mr_hook, pipeline_hook, registry_section

GRACE = 60
GROUP_SECRET = "group-secret"
MR_TAG = {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}


def group_and_app(janitor, registry, gitlab, project, **app_entry) -> Harness:
    """``<group>/*`` (its own secret) and the exact ``project`` in it; both hold a token that may untag the
    project's repositories, as a group access token would, and neither is a dry run."""
    group = project.path.split("/")[0]
    common = {"registry_token": project.token, "dry_run": False, "grace_period": f"{GRACE}s", "tags": [MR_TAG]}
    return janitor([{"path": f"{group}/*", "webhook_secret": GROUP_SECRET, **common},
                    {"path": project.path, "webhook_secret": SECRET, **common, **app_entry}],
                   registry=registry_section(registry), gitlab={"url": gitlab.url})


def send(j: Harness, event: str, body: dict, secret: str):
    return j.client.post("/webhooks/gitlab", json=body, headers={"X-Gitlab-Event": event, "X-Gitlab-Token": secret})


def forged_paths(project_path: str) -> list[str]:
    group, app = project_path.split("/")
    return [
        f"{project_path}/sub",                     # below the exact project: its registry's `sub` image
        f"{group}/{app.upper()}/sub",              # the same, in another case (GitLab paths ignore case)
        f"{group}/{app.upper()}",                  # the exact project itself, in another case
        f"{group}/x/../{app}/sub",                 # no GitLab path holds `..`
        f"{project_path}/sub\n",                   # nor a newline
    ]


@pytest.mark.parametrize("which", range(5))
def test_forged_hooks_with_the_group_secret_never_untag_the_exact_projects_images(
        janitor, registry, gitlab, project, which):
    j = group_and_app(janitor, registry, gitlab, project, images=["", "sub"])
    push_image(registry, project.path, ["mr-1"])
    push_image(registry, f"{project.path}/sub", ["mr-1"])
    forged = forged_paths(project.path)[which]
    for event, body in (
        ("Pipeline Hook", pipeline_hook(forged, pipeline_id=1, ref="evil", mr_iid=1)),
        ("Merge Request Hook", mr_hook(forged, iid=1, source_branch="evil", action="merge")),
    ):
        answer = send(j, event, body, GROUP_SECRET)
        assert answer.status_code != 202 and (answer.get_json() or {}).get("status") != "stored", answer.get_json()
        j.tick()
    assert j.store.pending_events() == []
    for _ in range(3):
        j.tick(advance=GRACE + 1)
    assert j.store.list_plans() == [] and j.store.list_untags() == []
    assert tags(registry, project.path) == ["mr-1"]
    assert tags(registry, f"{project.path}/sub") == ["mr-1"]

    # The same story told by the project's own hooks, with its own secret, untags both: the forged hooks
    # above failed for their path, not for want of a token or a tag.
    for event, body in (
        ("Pipeline Hook", pipeline_hook(project.path, pipeline_id=1, ref="feature", mr_iid=1)),
        ("Merge Request Hook", mr_hook(project.path, iid=1, source_branch="feature", action="merge")),
    ):
        assert send(j, event, body, SECRET).status_code == 202
        j.tick()
    for _ in range(3):
        j.tick(advance=GRACE + 1)
    assert tags(registry, project.path) == [] and tags(registry, f"{project.path}/sub") == []


def test_the_group_secret_still_speaks_for_the_groups_other_projects(janitor, registry, gitlab, project):
    j = group_and_app(janitor, registry, gitlab, project)
    sibling = f"{project.path.split('/')[0]}/sibling"
    answer = send(j, "Pipeline Hook", pipeline_hook(sibling, pipeline_id=2, ref="feature", mr_iid=2), GROUP_SECRET)
    assert answer.status_code == 202 and answer.get_json()["status"] == "stored"
    assert send(j, "Pipeline Hook", pipeline_hook(sibling, pipeline_id=3, ref="feature"), SECRET).status_code == 401
