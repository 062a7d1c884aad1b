"""SPEC section 6, one test per invariant, on the real registry: each fails if its guard is removed."""

from __future__ import annotations

import re

from support.images import digest_of, get_manifest, push_image, tags
from support.images import untag as remove_tag
from support.janitor import SECRET, Harness, mr_hook, pipeline_hook, push_hook, registry_section

from daemon.domain.model import Pipeline, Trigger

GRACE = 60
MR_TAG = {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}


def live(janitor, registry, gitlab, project, *, tags_=(MR_TAG,), **policy) -> Harness:
    """From the ``janitor`` factory: ``project`` untagging for real once ``GRACE`` seconds have passed."""
    entry = {"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
             "dry_run": False, "grace_period": f"{GRACE}s", "tags": list(tags_), **policy}
    return janitor([entry], registry=registry_section(registry), gitlab={"url": gitlab.url})


def merged(j: Harness, path: str, *, iid: int, ref: str, pipeline_id: int, sha: str = "a" * 40) -> None:
    """A pipeline of MR !iid pushed its tags and finished; then the MR is merged."""
    j.hook("Pipeline Hook", pipeline_hook(path, pipeline_id=pipeline_id, ref=ref, mr_iid=iid, sha=sha))
    j.tick()
    j.hook("Merge Request Hook", mr_hook(path, iid=iid, source_branch=ref, action="merge"))
    j.tick()


def outcomes(j: Harness) -> dict[str, tuple[str, str | None]]:
    return {u.tag: (u.outcome, u.reason) for u in j.store.list_untags()}


def test_s1_ledger_only(janitor, registry, gitlab, project):
    """Tags that look like an MR's but were never attributed to a pipeline are never touched."""
    j = live(janitor, registry, gitlab, project)
    push_image(registry, project.path, ["mr-42", "mr-43", "mr-99", "feature-x"])
    merged(j, project.path, iid=42, ref="feature/x", pipeline_id=1)
    j.hook("Merge Request Hook", mr_hook(project.path, iid=99, source_branch="unknown", action="merge"))
    j.tick(advance=GRACE + 1)
    assert sorted(tags(registry, project.path)) == ["feature-x", "mr-43", "mr-99"]
    assert [p.trigger_key.rsplit(":", 1)[-1] for p in j.store.list_plans()] == ["42"]


def test_s2_protected(janitor, registry, gitlab):
    """Protected defaults and the default branch's slug survive their branch's deletion."""
    project = gitlab.add_project("grp-s2/app", default_branch="Develop")
    j = live(janitor, registry, gitlab, project, tags_=[{"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"}])
    refs = ["latest", "Develop", "stable", "v2.1", "feature-ok"]
    push_image(registry, project.path, ["latest", "develop", "stable", "v2.1", "feature-ok"])
    for n, ref in enumerate(refs, start=1):
        j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=n, ref=ref, default_branch="Develop"))
    j.tick()
    for ref in refs:
        j.hook("Push Hook", push_hook(project.path, ref=ref, deleted=True))
    j.tick()
    j.tick(advance=GRACE + 1)
    assert sorted(tags(registry, project.path)) == ["develop", "latest", "stable", "v2.1"]
    got = outcomes(j)
    assert got.pop("feature-ok") == ("done", None)
    # v2.1's slug is v2-1, which no pipeline pushed: the pattern expands per ref, so ref v2.1 expects v2-1.
    assert set(got.values()) == {("skipped", "protected")}


def test_s3_digest_guard(janitor, registry, gitlab, project):
    """A tag re-pushed after its pipeline recorded it points elsewhere now: superseded, kept."""
    j = live(janitor, registry, gitlab, project)
    push_image(registry, project.path, ["mr-5"], seed=1)
    merged(j, project.path, iid=5, ref="f", pipeline_id=1)
    newer = push_image(registry, project.path, ["mr-5"], seed=2)
    j.tick(advance=GRACE + 1)
    assert digest_of(registry, project.path, "mr-5") == newer
    assert outcomes(j) == {"mr-5": ("skipped", "superseded")}


def test_s4_live_owner(janitor, registry, gitlab, project):
    """A fast-forward merge makes the MR's sha tag the default branch's too: that one stays."""
    sha = "c0ffee" + "0" * 34
    j = live(janitor, registry, gitlab, project,
             tags_=[MR_TAG, {"pattern": "sha-$CI_COMMIT_SHORT_SHA", "lifetime": "merge_request"}])
    push_image(registry, project.path, ["mr-8", f"sha-{sha[:8]}"])
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=2, ref="main", sha=sha))
    merged(j, project.path, iid=8, ref="topic", pipeline_id=1, sha=sha)
    j.tick(advance=GRACE + 1)
    assert sorted(tags(registry, project.path)) == [f"sha-{sha[:8]}"]
    assert outcomes(j) == {"mr-8": ("done", None), f"sha-{sha[:8]}": ("skipped", "live_owner")}


def test_s4_live_owner_asks_gitlab_about_refs_never_seen(janitor, registry, gitlab, project):
    """Owners known only from CI records: GitLab says whether their branch still exists."""
    j = live(janitor, registry, gitlab, project,
             tags_=[MR_TAG, {"pattern": "shared-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"},
                    {"pattern": "other-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}])
    gitlab.add_branch(project, "release")
    jobs = {ref: gitlab.add_job(project, pipeline_id=900 + len(ref), ref=ref) for ref in ("release", "gone")}
    push_image(registry, project.path, ["mr-3", "shared-3", "other-3"])  # after the jobs started
    for ref, tag in (("release", "shared-3"), ("gone", "other-3")):
        job = jobs[ref]
        r = j.client.post("/api/v1/ci/pushes", json={"image": f"{registry.host}/{project.path}:{tag}"},
                          headers={"JOB-TOKEN": job})
        assert r.status_code == 201, r.get_json()
    merged(j, project.path, iid=3, ref="topic", pipeline_id=1)
    j.tick(advance=GRACE + 1)
    assert outcomes(j) == {"mr-3": ("done", None), "shared-3": ("skipped", "live_owner"),
                           "other-3": ("done", None)}
    assert gitlab.calls["GET /api/v4/projects/:id/repository/branches/:branch"] >= 2


def test_s5_tag_only(janitor, registry, gitlab, project):
    """The sibling tag and the image stay; the only manifest deleted by digest is the placeholder."""
    j = live(janitor, registry, gitlab, project)
    image = push_image(registry, project.path, ["mr-9", "keep-me"])
    merged(j, project.path, iid=9, ref="f", pipeline_id=1)
    registry.mark()
    j.tick(advance=GRACE + 1)
    assert tags(registry, project.path) == ["keep-me"]
    assert digest_of(registry, project.path, "keep-me") == image
    assert get_manifest(registry, project.path, image) is not None
    deletes = [r for r in registry.request_log(repo=project.path) if r.method == "DELETE"]
    by_digest = {r.path.rsplit("/", 1)[-1] for r in deletes if re.search(r"/manifests/sha256:[0-9a-f]{64}$", r.path)}
    by_tag = [r for r in deletes if r.path.endswith("/manifests/mr-9")]
    assert len(by_digest) == 1 and image not in by_digest  # one placeholder, never the image
    assert get_manifest(registry, project.path, by_digest.pop()) is None
    assert all(r.status == 400 for r in by_tag)  # auto tried the tag delete distribution 2.8 refuses


def test_s6_scope(janitor, registry, gitlab, project):
    """A record naming another project's repository is refused before any request, and one project's
    secret cannot speak for another project: for a configured one it is refused (401); for one no entry
    configures the delivery is only acknowledged (200 ignored, so GitLab keeps the hook) and changes
    nothing."""
    other = gitlab.add_project(project.path + "-other")
    push_image(registry, other.path, ["mr-1"])
    j = live(janitor, registry, gitlab, project)
    pipeline = Pipeline(project.path, 1, "f", "a" * 40, "success", mr_iid=1)
    j.store.upsert_pipeline(pipeline, j.clock())
    j.store.add_record(project_path=project.path, pipeline=pipeline, repository=other.path, tag="mr-1",
                       digest=digest_of(registry, other.path, "mr-1"), lifetime="merge_request",
                       ttl_seconds=None, state="confirmed", source="ci", now=j.clock())
    j.worker.ingest.planner.raise_trigger(Trigger("merge_request_merged", project.path, "k", j.clock(), ref="f",
                                          mr_iid=1), j.clock())
    registry.mark()
    j.tick(advance=GRACE + 1)
    assert outcomes(j) == {"mr-1": ("skipped", "out_of_scope")}
    assert registry.request_log(repo=other.path) == []
    assert tags(registry, other.path) == ["mr-1"]
    body = mr_hook(other.path, iid=1, source_branch="f", action="merge")
    ignored = j.client.post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": SECRET})
    assert ignored.status_code == 200 and ignored.json["reason"] == "unconfigured_project"
    assert j.store.pending_events() == []
    j.tick(advance=GRACE + 1)
    assert tags(registry, other.path) == ["mr-1"]
    both = janitor([{"path": project.path, "webhook_secret": SECRET},
                    {"path": other.path, "webhook_secret": "other-secret"}], registry=registry_section(registry))
    assert both.client.post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": SECRET}).status_code == 401
    assert both.store.pending_events() == []


def _mr_with_tags(j, registry, project, iid, names):
    push_image(registry, project.path, names)
    merged(j, project.path, iid=iid, ref=f"topic-{iid}", pipeline_id=iid)


SUFFIXES = [{"pattern": f"mr-$CI_MERGE_REQUEST_IID-{s}", "lifetime": "merge_request"} for s in "abc"]


def test_s7_bulk_guard_holds_big_plans_until_approved(janitor, registry, gitlab, project):
    j = live(janitor, registry, gitlab, project, tags_=SUFFIXES, max_tags_per_plan=2)
    _mr_with_tags(j, registry, project, 4, ["mr-4-a", "mr-4-b", "mr-4-c"])
    j.tick(advance=GRACE + 1)
    (plan,) = j.store.list_plans()
    assert plan.state == "held" and "max_tags_per_plan" in plan.note
    j.tick(advance=3600)
    assert len(tags(registry, project.path)) == 3
    j.store.decide_plan(plan.id, True, "admin", j.clock())
    j.tick()
    assert tags(registry, project.path) == []


def test_s7_bulk_guard_judges_a_plan_taken_over_before_its_first_untag(janitor, registry, gitlab, project):
    """A worker that claimed a big plan and died before judging it leaves it ``running``; the worker that
    takes it over after the lease judges it all the same: held, nothing untagged."""
    from daemon.domain.policy import LEASE_SECONDS

    j = live(janitor, registry, gitlab, project, tags_=SUFFIXES, max_tags_per_plan=2)
    _mr_with_tags(j, registry, project, 8, ["mr-8-a", "mr-8-b", "mr-8-c"])
    j.clock.advance(GRACE + 1)
    (plan,) = j.store.list_plans()
    assert j.store.claim_plan(plan.id, j.clock(), LEASE_SECONDS, "a worker that dies now")
    j.tick(advance=LEASE_SECONDS + 1)
    (plan,) = j.store.list_plans()
    assert plan.state == "held" and "max_tags_per_plan" in plan.note
    assert len(tags(registry, project.path)) == 3


def test_s7_bulk_guard_fraction_of_repository(janitor, registry, gitlab, project):
    j = live(janitor, registry, gitlab, project, tags_=SUFFIXES)
    push_image(registry, project.path, [f"keep-{n}" for n in range(7)])
    _mr_with_tags(j, registry, project, 6, ["mr-6-a", "mr-6-b", "mr-6-c"])  # 3 of 10 tags: fine
    j.tick(advance=GRACE + 1)
    assert j.store.list_plans()[0].state == "done"
    j2 = live(janitor, registry, gitlab, project, tags_=SUFFIXES, max_repository_fraction=0.2)  # 3 of 10 > 0.2
    push_image(registry, project.path, ["mr-7-a", "mr-7-b", "mr-7-c"])
    _mr_with_tags(j2, registry, project, 7, ["mr-7-a", "mr-7-b", "mr-7-c"])
    j2.tick(advance=GRACE + 1)
    (plan,) = j2.store.list_plans()
    assert plan.state == "held" and "max_repository_fraction" in plan.note


def test_s7_hourly_budget_defers_never_drops(janitor, registry, gitlab, project):
    j = live(janitor, registry, gitlab, project, tags_=SUFFIXES, max_untags_per_hour=2)
    _mr_with_tags(j, registry, project, 5, ["mr-5-a", "mr-5-b", "mr-5-c"])
    j.tick(advance=GRACE + 1)
    assert len(tags(registry, project.path)) == 1
    (plan,) = j.store.list_plans()
    assert plan.state == "ready" and "max_untags_per_hour" in plan.note
    j.tick(advance=60)
    assert len(tags(registry, project.path)) == 1  # still inside the hour
    j.tick(advance=3600)
    assert tags(registry, project.path) == []
    assert j.store.get_plan(plan.id).state == "done"


def test_s7_dry_run_is_the_default_and_sends_no_write(janitor, registry, gitlab, project):
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                  "grace_period": "1s", "tags": [MR_TAG]}],
                registry={"url": registry.url, "token_realms": [registry.realm]})
    push_image(registry, project.path, ["mr-1"])
    merged(j, project.path, iid=1, ref="f", pipeline_id=1)
    registry.mark()
    j.tick(advance=2)
    assert [r for r in registry.request_log(repo=project.path) if r.method not in ("GET", "HEAD")] == []
    assert outcomes(j) == {"mr-1": ("dry_run", None)} and tags(registry, project.path) == ["mr-1"]


def test_s8_exactly_once_effect(janitor, registry, gitlab, project):
    j = live(janitor, registry, gitlab, project, tags_=SUFFIXES)
    push_image(registry, project.path, ["mr-2-a", "mr-2-b"])
    body = mr_hook(project.path, iid=2, source_branch="f", action="merge")
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=1, ref="f", mr_iid=2))
    for uuid in ("u1", "u1", "u2"):  # a redelivery, then the same trigger under a new delivery id
        j.hook("Merge Request Hook", body, **{"X-Gitlab-Event-UUID": uuid})
    j.tick()
    remove_tag(registry, project.path, "mr-2-b")  # gone before the janitor gets to it
    j.tick(advance=GRACE + 1)
    assert len(j.store.list_plans()) == 1
    assert outcomes(j) == {"mr-2-a": ("done", None), "mr-2-b": ("skipped", "missing")}


def test_s9_interrupted_plan_resumes(janitor, registry, gitlab, project):
    """A worker that died holding a plan (state running) leaves it to the next one once its lease ends."""
    j = live(janitor, registry, gitlab, project)
    push_image(registry, project.path, ["mr-3"])
    merged(j, project.path, iid=3, ref="f", pipeline_id=1)
    j.clock.advance(GRACE + 1)
    (plan,) = j.store.list_plans()
    assert j.store.claim_plan(plan.id, j.clock(), lease_seconds=300)  # ...and then the worker is killed
    j.tick()
    assert tags(registry, project.path) == ["mr-3"]  # another worker respects the lease
    j.tick(advance=301)
    assert tags(registry, project.path) == []
    assert j.store.get_plan(plan.id).state == "done"
