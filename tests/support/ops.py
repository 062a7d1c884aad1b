"""Shared by the operations-surface tests (API, dashboard, metrics, admin CLI): storage seeded with a
known story, and a janitor on the real registry whose merged MR leaves a held or a finished plan."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from daemon.domain.model import Decision, Manifest, Pipeline, PlannedUntag, Trigger
from daemon.store import Store

from .gitlab_json import Project
from .janitor import ADMIN, SECRET, Harness, live_entry, mr_hook, pipeline_hook, registry_section
from .registry import Registry

BEARER = {"Authorization": f"Bearer {ADMIN}"}
APP = "grp/app"
OTHER = "grp/other"
CONFIG_BLOB, LAYER_A, LAYER_B = (f"sha256:{c * 64}" for c in "abc")


def manifest_body(layers: list[tuple[str, int]]) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": CONFIG_BLOB,
                   "size": 100},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": d, "size": s}
                   for d, s in layers]}).encode()


def ops_projects() -> list[dict[str, Any]]:
    """The projects of the seeded story: grp/app cleaned for real, grp/other a dry run."""
    return [{"path": APP, "webhook_secret": SECRET, "dry_run": False,
             "tags": [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}]},
            {"path": OTHER, "webhook_secret": SECRET}]


def seed(store: Store, now: float) -> dict[str, Any]:
    """A known story in storage: grp/app has 4 confirmed pushes, one plan done (untags: done x2 with saved
    manifests, failed x1, skipped x1) and one plan held (2 pending untags); grp/other (dry-run) has a
    dry_run plan. Returns the ids."""
    ids: dict[str, Any] = {}
    for project, pipeline_id, ref in ((APP, 1, "feature/a"), (APP, 2, "feature/b"), (OTHER, 3, "x")):
        p = Pipeline(project, pipeline_id, ref, "a" * 40, "success", iid=pipeline_id, mr_iid=pipeline_id,
                     default_branch="main", created_at=now - 7200)
        store.upsert_pipeline(p, now - 7200)
        for tag in (f"mr-{pipeline_id}", f"mr-{pipeline_id}-debug"):
            store.add_record(project_path=project, pipeline=p, repository=project, tag=tag,
                             digest=f"sha256:{pipeline_id:064d}", lifetime="merge_request", ttl_seconds=None,
                             state="confirmed", source="pattern" if pipeline_id != 2 else "ci", now=now - 7200)

    def plan(project: str, pipeline_id: int, kind: str, tags: list[str], state: str) -> tuple[int, list[int]]:
        trigger = Trigger(kind, project, f"{kind}:{project}:{pipeline_id}", now - 3600, ref="r",
                          mr_iid=pipeline_id, pipeline_id=pipeline_id)
        records = {r.tag: r for r in store.records_of_pipeline(project, pipeline_id)}
        decisions = [Decision(PlannedUntag(records[t].id, pipeline_id, project, t, records[t].digest or ""),
                              "pending") for t in tags]
        plan_id, _ = store.create_plan(trigger, decisions, state=state, due_at=now - 3000, now=now - 3600)
        return plan_id, [u.id for u in store.plan_untags(plan_id)]

    ids["done_plan"], untags = plan(APP, 1, "merge_request_merged", ["mr-1", "mr-1-debug"], "scheduled")
    store.finish_untag(untags[0], outcome="done", reason=None, method="placeholder",
                       saved=Manifest("sha256:" + "1" * 64, "application/vnd.docker.distribution.manifest"
                                           ".v2+json", manifest_body([(LAYER_A, 1000), (LAYER_B, 2000)])),
                       now=now - 2900)
    store.finish_untag(untags[1], outcome="done", reason=None, method="placeholder",
                       saved=Manifest("sha256:" + "2" * 64, "application/vnd.docker.distribution.manifest"
                                           ".v2+json", manifest_body([(LAYER_A, 1000)])), now=now - 2900)
    store.set_plan_state(ids["done_plan"], "done", now - 2900)
    ids["done"] = untags
    ids["fail_plan"], untags = plan(APP, 2, "merge_request_closed", ["mr-2", "mr-2-debug"], "scheduled")
    store.finish_untag(untags[0], outcome="failed", reason="HTTP 503 after 5 attempts", method=None, saved=None,
                       now=now - 1800)
    store.finish_untag(untags[1], outcome="skipped", reason="superseded", method=None, saved=None, now=now - 1800)
    store.set_plan_state(ids["fail_plan"], "done", now - 1800)
    ids["failed"], ids["skipped"] = untags
    ids["held_plan"], ids["held"] = plan(APP, 2, "branch_deleted", ["mr-2", "mr-2-debug"], "held")
    ids["dry_plan"], untags = plan(OTHER, 3, "merge_request_merged", ["mr-3"], "scheduled")
    store.finish_untag(untags[0], outcome="dry_run", reason=None, method=None, saved=None, now=now - 600)
    store.set_plan_state(ids["dry_plan"], "dry_run", now - 600)
    ids["dry_run"] = untags
    for i, (project, kind) in enumerate(((APP, "pipeline"), (APP, "merge_request"), (APP, "pipeline"),
                                         (OTHER, "push"))):
        store.add_event(delivery_key=f"seed:{i}", source="gitlab", kind=kind, project_path=project,
                        headers={}, body=b"{}", received_at=now - (100 if project == APP else 2 * 86400))
    store.mark_processed(1, now)
    return ids


def seeded(harness: Harness) -> Harness:
    """``harness`` with the story of ``seed`` in its storage; ``harness.ids`` names what ``seed`` made."""
    harness.ids = seed(harness.store, harness.clock())  # type: ignore[attr-defined]
    return harness


# a janitor on the real registry ------------------------------------------------------------------------
MR_TAGS = [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"},
           {"pattern": "mr-$CI_MERGE_REQUEST_IID-debug", "lifetime": "merge_request"}]


def live_janitor(janitor: Callable[..., Harness], registry: Registry, project: Project, **policy: Any) -> Harness:
    """From the ``janitor`` factory: ``project`` on the real registry, untagging for real after 15 minutes."""
    return janitor([live_entry(project, grace_period="15m", tags=MR_TAGS, **policy)],
                   registry=registry_section(registry))


def merge_mr(janitor: Harness, repo: str, *, iid: int = 42, pipeline_id: int = 101) -> int:
    """The MR's pipeline pushed its tags and finished; the MR is merged; the grace period passes and the
    worker runs the plan. Returns the plan id."""
    janitor.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=pipeline_id, ref=f"feature/{iid}", mr_iid=iid))
    janitor.tick()
    janitor.hook("Merge Request Hook", mr_hook(repo, iid=iid, source_branch=f"feature/{iid}", action="merge"))
    janitor.tick()
    janitor.tick(advance=15 * 60 + 1)
    (plan,) = [p for p in janitor.store.list_plans() if p.trigger_kind == "merge_request_merged"
               and p.project_path == repo]
    return plan.id
