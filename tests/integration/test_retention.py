"""Retention: the worker prunes exactly what is due (applied events after ``retention.events``; finished
plans with their untags, unusable events and push records whose tag is gone after ``retention.plans``) and
keeps what a plan, an untag or a restore may still need; every total, the dashboard's chart, webhook
health and the bytes untagged images hold read the same before and after; batches stay bounded; the
worker schedules the job; a database from before keeps each kind's last event."""

from __future__ import annotations

from support.images import push_image, tags
from support.janitor import ADMIN, Clock, live_entry, mr_hook, pipeline_hook, registry_section, sha_of, short
from support.ops import APP, OTHER, seed
from test_counters import totals

from daemon.domain.model import Decision, Pipeline, PlannedUntag, Trigger
from daemon.domain.policy import LEASE_SECONDS
from daemon.execute.retention import Pruner
from daemon.store import open_store
from daemon.store.schema import MIGRATIONS
from daemon.worker import PRUNE_EVERY

BEARER = {"Authorization": f"Bearer {ADMIN}"}
DAY = 86400.0


def status(j) -> dict:
    return j.client.get("/api/v1/status", headers=BEARER).get_json()


def event(j, key: str, at: float, *, project: str | None = APP, kind: str = "pipeline", source: str = "gitlab") -> int:
    assert j.store.add_event(delivery_key=key, source=source, kind=kind, project_path=project, headers={},
                             body=b"{}", received_at=at)
    return int(j.store.db.execute("SELECT id FROM inbox WHERE delivery_key = ?", [key]).fetchone()[0])


def plan_with(j, kind: str, key: str, state: str, outcome: str, at: float) -> tuple[int, int]:
    """A plan of APP in ``state`` with one untag that reached ``outcome`` at ``at``: (plan id, untag id)."""
    p = Pipeline(APP, 900 + len(key), "feature/z", "b" * 40, "success", mr_iid=None, created_at=at)
    j.store.upsert_pipeline(p, at)
    record, _ = j.store.add_record(project_path=APP, pipeline=p, repository=APP, tag=key, digest="sha256:" + "9" * 64,
                                   lifetime="pipeline", ttl_seconds=None, state="confirmed", source="pattern", now=at)
    trigger = Trigger(kind, APP, key, at, pipeline_id=p.pipeline_id)
    untag = PlannedUntag(record, p.pipeline_id, APP, key, "sha256:" + "9" * 64)
    plan_id, _ = j.store.create_plan(trigger, [Decision(untag, "pending")], state="scheduled", due_at=at, now=at)
    (planned,) = j.store.plan_untags(plan_id)
    if outcome != "pending":
        j.store.finish_untag(planned.id, outcome=outcome, reason=None, method=None, saved=None, now=at)
    j.store.set_plan_state(plan_id, state, at)
    return plan_id, planned.id


def test_pruning_removes_exactly_what_is_due(seeded_janitor):
    j = seeded_janitor
    start = j.clock()
    j.worker.notes.run()  # the notes step has looked at the done plans of merge requests
    # an untag whose restore an operator asked for, and a record whose tag is gone that no untag names
    restoring_plan, restoring = plan_with(j, "pipeline_finished", "restoring", "done", "done", start)
    j.store.add_request("restore", restoring, "ops", start)
    gone_pipeline = Pipeline(APP, 77, "feature/gone", "c" * 40, "success", created_at=start)
    j.store.upsert_pipeline(gone_pipeline, start)
    gone, _ = j.store.add_record(project_path=APP, pipeline=gone_pipeline, repository=APP, tag="gone",
                                 digest="sha256:" + "7" * 64, lifetime="pipeline", ttl_seconds=None,
                                 state="confirmed", source="pattern", now=start)
    j.store.mark_untagged(gone, start)
    unusable_old = event(j, "unusable-old", start)
    j.store.mark_processed(unusable_old, start, error="ValueError: old")
    event(j, "registry", start, project=None, kind="registry_push", source="registry")

    j.clock.advance(200 * DAY)
    now = j.clock()
    scheduled_plan, _ = plan_with(j, "pipeline_finished", "scheduled", "scheduled", "pending", now - 190 * DAY)
    old_applied = event(j, "old-applied", now - 8 * DAY)
    j.store.mark_processed(old_applied, now - 8 * DAY)
    old_waiting = event(j, "old-waiting", now - 8 * DAY)
    unusable_recent = event(j, "unusable-recent", now - 8 * DAY)
    j.store.mark_processed(unusable_recent, now - 8 * DAY, error="ValueError: recent")
    recent = event(j, "recent-applied", now - 6 * DAY, kind="merge_request")
    j.store.mark_processed(recent, now - 6 * DAY)
    j.store.db.execute("UPDATE inbox SET processed_at = ? WHERE processed_at IS NULL AND id < ?",
                       [now, old_applied])  # the seeded events were applied long ago

    before = totals(j)
    before_status = status(j)
    pruned = j.worker.pruner.run()

    ids = j.ids
    plans = {p.id for p in j.store.list_plans(limit=100)}
    assert ids["done_plan"] not in plans and ids["dry_plan"] not in plans, "finished plans go"
    assert {ids["held_plan"], ids["fail_plan"], restoring_plan, scheduled_plan} <= plans, \
        "held, scheduled, a failed untag's, a pending restore's plans stay"
    untags = {u.id for u in j.store.list_untags(limit=100)}
    assert not untags & set(ids["done"] + ids["dry_run"]) and restoring in untags and ids["failed"] in untags
    events = {r[0] for r in j.store.db.execute("SELECT id FROM inbox")}
    assert old_applied not in events and unusable_old not in events
    assert {old_waiting, unusable_recent, recent} <= events, "waiting, recent and unusable events stay"
    assert j.store.record(gone) is None, "a record whose tag is gone, named by no untag"
    assert all(j.store.record(r.id) for r in j.store.records_of_pipeline(APP, 1)), "confirmed records stay"
    assert j.store.get_pipeline(APP, 77) is None and j.store.get_pipeline(APP, 1) is not None
    assert pruned["plans"] == 2 and pruned["untags"] == 3 and pruned["push_records"] == 1, pruned

    assert totals(j) == before
    after_status = status(j)
    for name, project in before_status["projects"].items():
        assert after_status["projects"][name]["last_events"] == project["last_events"]
        assert after_status["projects"][name]["untagged_image_bytes"] == project["untagged_image_bytes"]
    assert before_status["projects"][APP]["untagged_image_bytes"] == 3100
    assert after_status["registry_notifications"] == before_status["registry_notifications"] != {"last_event_at": None}
    assert after_status["total"] == before_status["total"]
    page = j.client.get("/dashboard", headers=BEARER)
    assert page.status_code == 200 and OTHER in page.get_data(as_text=True)

    assert j.worker.pruner.run() == {}, "a second run finds nothing more"


def test_each_batch_is_bounded_and_a_run_stops_when_its_time_is_up(janitor):
    j = janitor([])
    for i in range(25):
        event(j, f"e{i}", j.clock() - 30 * DAY)
    j.store.db.execute("UPDATE inbox SET processed_at = 1")
    deleted, after = j.store.prune_events(0, j.clock() - 7 * DAY, 10)
    assert deleted == {"events": 10} and after is not None
    ticks = iter(range(100))
    pruner = Pruner(j.settings, j.store, j.clock, batch=4, budget=0.5, timer=lambda: float(next(ticks)))
    assert pruner.run() == {"events": 4}, "one batch, then the time is up"
    assert pruner.run() == {"events": 4}, "the next run goes on where it stopped"
    pruner = Pruner(j.settings, j.store, j.clock, batch=4)
    assert pruner.run() == {"events": 7}
    assert j.store.db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0] == 0


def test_the_worker_schedules_pruning_under_its_lock(janitor):
    j = janitor([])

    class Scheduler:
        jobs: list[tuple[object, dict]] = []

        def add_job(self, fn, trigger, **options):
            self.jobs.append((fn, {"trigger": trigger, **options}))

    scheduler = Scheduler()
    j.worker.schedule_prune(scheduler)
    ((fn, options),) = scheduler.jobs
    assert fn == j.worker.pruner.run_logged
    assert options == {"trigger": "interval", "seconds": PRUNE_EVERY, "id": "prune", "max_instances": 1,
                       "coalesce": True}
    assert j.worker.pruner._lock is j.worker._lock


def test_a_database_from_before_keeps_each_kinds_last_event(tmp_path, monkeypatch):
    path = str(tmp_path / "old.db")
    (version,) = [i for i, step in enumerate(MIGRATIONS) if step.__name__ == "_v17_last_events"]
    monkeypatch.setattr("daemon.store.schema.MIGRATIONS", MIGRATIONS[:version])
    old = open_store(path)
    seed(old, 1_000_000.0)
    old.add_event(delivery_key="r", source="registry", kind="registry_push", project_path=None, headers={},
                  body=b"{}", received_at=999_000.0)
    old.close()
    monkeypatch.undo()

    store = open_store(path)
    assert store.last_events() == [(APP, "merge_request", 999_900.0), (APP, "pipeline", 999_900.0),
                                   (OTHER, "push", 1_000_000.0 - 2 * DAY)]
    assert store.last_registry_event() == 999_000.0
    store.db.execute("DELETE FROM inbox")
    store.add_event(delivery_key="later", source="gitlab", kind="push", project_path=OTHER, headers={},
                    body=b"{}", received_at=1_000_500.0)
    store.add_event(delivery_key="late", source="gitlab", kind="push", project_path=OTHER, headers={},
                    body=b"{}", received_at=1_000_400.0)
    assert store.last_events()[-1] == (OTHER, "push", 1_000_500.0), "the newest, whatever order they came in"
    store.close()


def test_the_clock_of_a_pruner_is_the_workers(janitor):
    clock = Clock(5_000_000.0)
    j = janitor([], clock=clock)
    assert j.worker.pruner.clock is clock


def test_a_confirmed_record_another_push_of_its_ref_overwrote_leaves_and_the_newest_stays(janitor):
    j = janitor([])
    at = j.clock()

    def record(pipeline_id: int, ref: str, tag: str, lifetime: str, mr_iid: int | None = None) -> int:
        p = Pipeline(APP, pipeline_id, ref, "d" * 40, "success", mr_iid=mr_iid, created_at=at)
        j.store.upsert_pipeline(p, at)
        record_id, _ = j.store.add_record(project_path=APP, pipeline=p, repository=APP, tag=tag,
                                          digest=f"sha256:{pipeline_id:064d}", lifetime=lifetime, ttl_seconds=None,
                                          state="confirmed", source="pattern", now=at)
        return record_id

    overwritten = [record(1, "main", "main", "branch"), record(2, "main", "main", "branch")]
    newest = record(3, "main", "main", "branch")
    other_ref = record(0, "release", "main", "branch")  # the same tag from another ref: another owner
    other_mr = record(4, "feature/m", "mr-tag", "merge_request", mr_iid=8)
    newest_mr = record(5, "feature/m", "mr-tag", "merge_request", mr_iid=9)  # another MR's push of it
    per_pipeline = record(6, "main", "cache", "pipeline")
    record(7, "main", "cache", "pipeline")  # a pipeline lifetime names its own pipeline: both stay

    j.clock.advance(181 * DAY)
    recent = record(8, "main", "main", "branch")  # overwrites the newest; itself too new to go
    pruned = j.worker.pruner.run()

    assert pruned.get("push_records") == 3, pruned
    assert all(j.store.record(r) is None for r in [*overwritten, newest])
    assert all(j.store.record(r) is not None for r in (other_ref, other_mr, newest_mr, per_pipeline, recent))
    assert j.store.get_pipeline(APP, 1) is None and j.store.get_pipeline(APP, 0) is not None
    assert j.worker.pruner.run() == {}


MR_PATTERNS = [{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"},
               {"pattern": "sha-$CI_COMMIT_SHORT_SHA", "lifetime": "merge_request"}]


def test_a_merge_request_done_with_leaves_and_a_late_hook_of_it_posts_no_second_note(janitor, registry, gitlab,
                                                                                   project):
    j = janitor([live_entry(project, grace_period="60s", tags=MR_PATTERNS, mr_note=True)],
                registry=registry_section(registry), gitlab={"url": gitlab.url})
    path = project.path

    def mr_pipeline(pipeline_id: int, iid: int) -> None:
        hook = pipeline_hook(path, pipeline_id=pipeline_id, ref=f"feature/{iid}", mr_iid=iid,
                             sha=sha_of(pipeline_id), status="running")
        j.hook("Pipeline Hook", hook)
        j.tick()
        push_image(registry, path, [f"mr-{iid}", f"sha-{short(pipeline_id)}"])
        j.hook("Pipeline Hook", {**hook, "object_attributes": {**hook["object_attributes"], "status": "success"}})
        j.tick()

    def merge(iid: int) -> None:
        j.hook("Merge Request Hook", mr_hook(path, iid=iid, source_branch=f"feature/{iid}", action="merge"))
        j.tick()
        j.tick(advance=61)

    for iid in (7, 8):
        gitlab.set_mr(project, iid, source_branch=f"feature/{iid}", state="opened")
        j.hook("Merge Request Hook", mr_hook(path, iid=iid, source_branch=f"feature/{iid}", action="open"))
        mr_pipeline(700 + iid, iid)
    gitlab.set_mr(project, 7, source_branch="feature/7", state="merged")
    merge(7)
    assert tags(registry, path) == sorted(["mr-8", f"sha-{short(708)}"])
    assert len(gitlab.mr_notes(project, 7)) == 1

    j.tick(advance=181 * DAY)
    pruned = j.worker.pruner.run()
    assert pruned.get("merge_requests") == 1 and pruned.get("plans") == 1, pruned
    assert j.store.merge_request_state(path, 7) is None, "merged, its plan pruned, nothing of it left"
    assert j.store.merge_request_state(path, 8) == "opened", "an open MR stays"
    assert j.store.mr_note(path, 7) is not None, "the note's row stays: it refuses a second note"

    # GitLab sends the merge again (a redelivery, an edit of the merged MR): nothing of it is left to plan
    merge(7)
    assert not [p for p in j.store.list_plans() if p.mr_iid == 7]
    # a job of the merged MR pushes its tag once more, and the merge is said again: cleaned, no second note
    mr_pipeline(709, 7)
    merge(7)
    (plan,) = [p for p in j.store.list_plans() if p.trigger_kind == "merge_request_merged"]
    assert j.store.get_plan(plan.id).state == "done"
    assert tags(registry, path) == sorted(["mr-8", f"sha-{short(708)}"])
    for _ in range(3):
        j.tick(advance=LEASE_SECONDS + 1)
    assert len(gitlab.mr_notes(project, 7)) == 1
    assert j.store.merge_request_state(path, 7) == "merged"
