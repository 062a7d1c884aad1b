"""Several workers on one database: each is listed with its last beat (``/readyz``, the status API, the
dashboard, ``registry-janitor status``) and long silent ones are pruned; each worker's probe judges its own
row; the registry's rate limit and each project's hourly budget hold across all workers together (two
workers here are two threads, each with its own ``Store`` on the same SQLite file)."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from pathlib import Path

import yaml
from click.testing import CliRunner
from support.images import push_image, tags
from support.janitor import ADMIN, SECRET, Harness, RealClock, mr_hook, pipeline_hook, registry_section

from daemon.cli import main
from daemon.domain.policy import LEASE_SECONDS, WORKER_FORGET_SECONDS, heartbeat_limit
from daemon.execute.lease import this_process
from daemon.registry.client import new_session
from daemon.registry.ratelimit import SharedRateLimiter
from daemon.store import Store, open_store
from daemon.wiring import build_registries, build_worker
from daemon.worker import Heartbeat

AUTH = ("ops", ADMIN)


def db_path(j: Harness) -> str:
    return j.settings.storage.url.removeprefix("sqlite:///")


def another_process_heartbeat(store: Store, clock, *, host: str | None = None, pid: int | None = None) -> Heartbeat:
    """The heartbeat of a worker in another process (another run, and as given another host or pid)."""
    me = this_process()
    holder = dataclasses.replace(me, run=uuid.uuid4().hex, host=host or me.host, pid=pid or me.pid)
    return Heartbeat(store, clock, holder=holder)


# the list of workers ----------------------------------------------------------------------------------------


def test_every_live_worker_is_listed_with_its_last_beat_and_its_plan_and_long_silent_ones_are_pruned(janitor):
    j = janitor()
    j.tick()
    other = another_process_heartbeat(j.store, j.clock, host="worker-b")
    other.working_on(42)
    j.clock.advance(5)
    j.tick()

    ready = j.client.get("/readyz")
    assert ready.status_code == 200
    listed = {w["id"]: w for w in ready.json["workers"]}
    mine = j.worker._heartbeat.worker_id
    assert set(listed) == {mine, other.worker_id}
    assert (listed[mine]["heartbeat_age_seconds"], listed[mine]["fresh"], listed[mine]["plan"]) == (0.0, True, None)
    assert (listed[other.worker_id]["heartbeat_age_seconds"], listed[other.worker_id]["plan"]) == (5.0, 42)
    assert listed[other.worker_id]["host"] == "worker-b"

    status = j.client.get("/api/v1/status", auth=AUTH).json
    assert [w["id"] for w in status["workers"]] == [w["id"] for w in ready.json["workers"]]
    page = j.client.get("/dashboard", auth=AUTH).get_data(as_text=True)
    assert f'data-worker="{mine}"' in page and f'data-worker="{other.worker_id}"' in page

    # the other worker is silent; this one keeps ticking: past the limit it is stale, later gone (row and all)
    j.clock.advance(heartbeat_limit(j.settings.worker.poll_interval))
    j.tick()
    stale = {w["id"]: w["fresh"] for w in j.client.get("/readyz").json["workers"]}
    assert stale == {mine: True, other.worker_id: False}
    j.clock.advance(WORKER_FORGET_SECONDS)
    j.tick()
    assert [w["id"] for w in j.client.get("/readyz").json["workers"]] == [mine]
    assert j.store.get_worker(other.worker_id) is None


def test_the_admin_cli_status_lists_the_workers(janitor, tmp_path):
    j = janitor(clock=RealClock())  # the command reads the wall clock
    j.tick()
    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump({"storage": {"url": j.settings.storage.url}}))
    result = CliRunner().invoke(main, ["status", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"worker {j.worker._heartbeat.worker_id}: last heartbeat" in result.output


def test_a_worker_that_stops_is_no_longer_listed_and_a_restart_with_the_same_pid_replaces_the_stale_row(janitor):
    j = janitor()
    gone = another_process_heartbeat(j.store, j.clock)  # the same host and pid: an earlier run of a container
    gone.now()
    j.clock.advance(heartbeat_limit(j.settings.worker.poll_interval) + 1)
    j.worker._heartbeat.started(j.settings.worker.poll_interval)
    assert j.store.get_worker(gone.worker_id) is None
    j.tick()
    j.worker._heartbeat.stopped()
    assert j.store.live_workers(0.0) == []


# the worker's probe -----------------------------------------------------------------------------------------


def probe(tmp_path: Path, j: Harness, *args: str) -> tuple[int, str]:
    config = tmp_path / "health.yaml"
    config.write_text(yaml.safe_dump({"storage": {"url": j.settings.storage.url}}))
    result = CliRunner().invoke(main, ["worker-health", "--config", str(config), *args])
    return result.exit_code, result.output


def test_the_probe_judges_the_worker_of_its_own_host_or_the_one_named(janitor, tmp_path):
    j = janitor(clock=RealClock())  # the probe reads the wall clock
    limit = heartbeat_limit(j.settings.worker.poll_interval)
    elsewhere = another_process_heartbeat(j.store, lambda: time.time(), host="another-pod")
    elsewhere.now()  # a fresh worker in another pod says nothing about this one
    code, out = probe(tmp_path, j)
    assert code == 1 and f"STALE: last heartbeat of any worker on host {this_process().host} never" in out

    stuck = another_process_heartbeat(j.store, lambda: time.time() - limit - 30)
    stuck.now()  # this host's worker, silent past the limit
    code, out = probe(tmp_path, j)
    assert code == 1 and f"of worker {stuck.worker_id}" in out and "STALE" in out
    code, out = probe(tmp_path, j, "--worker-id", elsewhere.worker_id)
    assert code == 0 and f"ok: last heartbeat of worker {elsewhere.worker_id}" in out

    fresh = another_process_heartbeat(j.store, lambda: time.time() + 1)  # started after it: this host's now
    fresh.now()
    code, out = probe(tmp_path, j)
    assert code == 0 and f"of worker {fresh.worker_id}" in out
    code, out = probe(tmp_path, j, "--worker-id", "no-such:1:worker")
    assert code == 1 and "STALE: last heartbeat of worker no-such:1:worker never" in out


# leases ------------------------------------------------------------------------------------------------------


def test_a_claim_lasts_at_most_20s_and_is_renewed_every_5s():
    from daemon.domain.policy import LEASE_RENEW_SECONDS

    assert LEASE_SECONDS <= 20 and LEASE_RENEW_SECONDS <= 5


# the shared rate limit --------------------------------------------------------------------------------------


def test_two_workers_together_take_no_more_than_the_rate_and_the_burst(tmp_path):
    path = str(tmp_path / "janitor.db")
    stores = [open_store(path), open_store(path)]
    rate, burst, seconds = 5.0, 2, 3.0
    taken: list[list[float]] = [[], []]
    start = time.time()

    def work(k: int) -> None:
        limiter = SharedRateLimiter("registry.example", rate, burst, stores[k].take_rate_token)
        while True:
            limiter.acquire()
            at = time.time()
            if at - start > seconds:
                return
            taken[k].append(at)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for store in stores:
        store.close()
    total = len(taken[0]) + len(taken[1])
    assert total <= rate * seconds + burst + 1, taken
    assert total >= rate * seconds - 2 and taken[0] and taken[1], taken  # both worked, at the whole rate


def test_two_workers_registry_requests_hold_the_rate_together(janitor, registry, gitlab, project):
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                  "tags": [{"pattern": "x-*", "lifetime": "merge_request"}]}],
                registry=registry_section(registry, requests_per_second=5, burst=2))
    push_image(registry, project.path, ["x-1"])
    entry = j.settings.project_for(project.path)
    assert entry is not None
    stores = [open_store(db_path(j)), open_store(db_path(j))]
    mark = registry.mark()
    seconds = 3.0
    sent = [0, 0]
    start = time.monotonic()

    def work(k: int) -> None:
        view = build_registries(j.settings, new_session(), store=stores[k])(project.path, entry)
        assert view is not None
        while time.monotonic() - start < seconds:
            view.head(project.path, "x-1")
            sent[k] += 1

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    for store in stores:
        store.close()
    served = len(registry.request_log(since=mark, repo=project.path))
    assert sent[0] and sent[1]
    assert served <= 5 * took + 2 + 1, (served, took)


# the hourly budget ------------------------------------------------------------------------------------------


def test_two_workers_running_plans_of_one_project_at_once_stay_within_its_hourly_budget(janitor, registry, gitlab,
                                                                                         project):
    budget, per_plan = 5, 4
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                  "dry_run": False, "grace_period": "1m", "max_repository_fraction": 1.0,
                  "max_untags_per_hour": budget,
                  "tags": [{"pattern": f"mr-$CI_MERGE_REQUEST_IID-{n}", "lifetime": "merge_request"}
                           for n in range(per_plan)]}],
                registry=registry_section(registry))
    pushed = [f"mr-{iid}-{n}" for iid in (1, 2) for n in range(per_plan)]
    for tag in pushed:
        push_image(registry, project.path, [tag])
    for iid in (1, 2):
        j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=100 + iid, ref=f"topic-{iid}", mr_iid=iid))
        j.tick()
        j.hook("Merge Request Hook", mr_hook(project.path, iid=iid, source_branch=f"topic-{iid}", action="merge"))
        j.tick()
    assert len(j.store.list_plans(state="scheduled")) == 2
    j.clock.advance(61)

    def slow(response, *args, **kwargs):  # each registry answer takes a while: the two plans run side by side
        time.sleep(0.05)

    stores = [open_store(db_path(j)), open_store(db_path(j))]
    executors = []
    for store in stores:
        session = new_session()
        session.hooks["response"].append(slow)
        worker = build_worker(j.settings, store, clock=j.clock, registries=build_registries(j.settings, session))
        executors.append(worker.executor)
    ready = threading.Barrier(2)

    def run(k: int) -> None:
        ready.wait()
        executors[k].run_due()
        stores[k].release_connection()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for store in stores:
        store.close()

    done = [u.tag for u in j.store.list_untags(outcome="done")]
    assert len(done) == budget, done
    assert len(tags(registry, project.path)) == len(pushed) - budget
    assert {p.state for p in j.store.list_plans()} == {"done", "ready"}  # the rest waits for the next hour


def test_a_hold_counts_only_while_its_plan_runs_under_its_lease(janitor):
    j = janitor()
    store, now = j.store, j.clock()
    plan_id = store.db.execute("INSERT INTO plans (project_path, trigger_kind, trigger_key, state, due_at,"
                               " created_at, updated_at) VALUES ('g/p', 'merge', 'k1', 'scheduled', 0, 0, 0)").lastrowid
    assert store.claim_plan(plan_id, now, LEASE_SECONDS, "holder-a")
    assert store.hold_budget(plan_id, "g/p", "holder-a", 4, 5, now - 3600, now) == 4
    assert store.hold_budget(999, "g/p", "holder-b", 4, 5, now - 3600, now) == 1  # 4 of 5 held by the other
    later = now + LEASE_SECONDS + 1  # the holder died: its lease ran out, and its hold with it
    assert store.hold_budget(999, "g/p", "holder-b", 4, 5, later - 3600, later) == 4
    store.release_budget(999, "holder-b")
    store.release_budget(plan_id, "someone else")  # only the holder's own hold ends
    assert store.hold_budget(998, "g/p", "holder-c", 4, 5, now - 3600, now) == 1


# inbox events -----------------------------------------------------------------------------------------------


def test_an_inbox_event_two_workers_both_found_pending_is_applied_by_one(janitor, caplog):
    j = janitor()
    j.hook("Pipeline Hook", pipeline_hook("gitlab-org/gitlab-test", pipeline_id=7, ref="topic"))
    stores = [open_store(db_path(j)), open_store(db_path(j))]
    workers = [build_worker(j.settings, store, clock=j.clock) for store in stores]
    (event,) = stores[0].pending_events()
    assert [e.id for e in stores[1].pending_events()] == [event.id]  # both found it
    caplog.set_level("INFO", logger="daemon.ingest.inbox")
    workers[0].ingest.apply(event)
    applied_at = j.clock()
    j.clock.advance(10)
    workers[1].ingest.apply(event)
    for store in stores:
        store.close()
    assert [r.getMessage() for r in caplog.records].count(f"inbox event {event.id} (pipeline) applied") == 1
    row = j.store.db.execute("SELECT processed_at, error FROM inbox WHERE id = ?", [event.id]).fetchone()
    assert tuple(row) == (applied_at, None)


# the same statements on PostgreSQL --------------------------------------------------------------------------


def test_the_shared_bucket_the_budget_and_the_workers_list_on_postgresql(pg_url):
    stores = [open_store(pg_url), open_store(pg_url)]
    try:
        a, b = stores
        assert [a.take_rate_token("r", 5.0, 2, 100.0), b.take_rate_token("r", 5.0, 2, 100.0)] == [0.0, 0.0]
        assert abs(a.take_rate_token("r", 5.0, 2, 100.0) - 0.2) < 1e-6  # empty: one token in 0.2 s
        assert b.take_rate_token("r", 5.0, 2, 100.2) == 0.0

        a.worker_beat("h:1:a", "h", 1, 10.0, 11.0, None)
        b.worker_beat("h:2:b", "h", 2, 12.0, 13.0, 7)
        assert [(w.id, w.plan_id) for w in a.live_workers(0.0)] == [("h:2:b", 7), ("h:1:a", None)]
        assert a.prune_workers(12.0) == 1 and [w.id for w in b.workers_of_host("h")] == ["h:2:b"]

        now = 1_000.0
        assert a.hold_budget(1, "g/p", "x", 4, 5, now - 3600, now) == 4  # plan 1 is not running: not counted
        assert b.hold_budget(2, "g/p", "y", 4, 5, now - 3600, now) == 4
    finally:
        for store in stores:
            store.close()
