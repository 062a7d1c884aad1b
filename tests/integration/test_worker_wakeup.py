"""The worker does not sit out its poll interval when work arrives (issue #15): an event the web stores and
a plan whose grace period ends are taken up within a fraction of a second, with a 30s ``poll_interval``;
ticks never overlap. The untag lanes: each manifest stored before its own write while several tags are
parked at once, an interruption finished from the audit, and the rate limit held over all lanes.
Real registry and SQLite file; the worker's scheduler runs as ``run_forever`` builds it (in the background)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from apscheduler.schedulers.background import BackgroundScheduler
from support.gitlab_json import Project
from support.gitlab_standin import GitLabStandin
from support.images import digest_of, push_image, tags
from support.janitor import SECRET, Harness, Janitors, RealClock, mr_hook, pipeline_hook, registry_section
from support.registry import Registry
from support.servers import wait_for

from daemon.domain.policy import LEASE_SECONDS
from daemon.registry.client import UNTAG_LANES, new_session
from daemon.wiring import build_registries, build_worker

POLL = "30s"
IID = 9


class WorkerKilled(BaseException):
    """Stands for SIGKILL: no ``except Exception`` in the janitor stops it."""


def live(janitor: Janitors, registry: Registry, project: Project, count: int, *, grace: str = "0s",
         poll: str = POLL, **registry_options: Any) -> Harness:
    entry = {"path": project.path, "webhook_secret": SECRET, "registry_token": project.token, "dry_run": False,
             "grace_period": grace, "max_repository_fraction": 1.0, "max_tags_per_plan": 1000,
             "tags": [{"pattern": f"mr-$CI_MERGE_REQUEST_IID-{n}", "lifetime": "merge_request"}
                      for n in range(count)]}
    return janitor([entry], registry=registry_section(registry, **registry_options),
                   worker={"poll_interval": poll}, clock=RealClock())


@contextmanager
def scheduled(j: Harness) -> Iterator[None]:
    """The worker's tick and wake jobs running as ``run_forever`` runs them: one tick first, then the
    scheduler."""
    scheduler = BackgroundScheduler(job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None})
    j.worker.tick()
    j.worker.schedule_ticks(scheduler)
    scheduler.start()
    try:
        yield
    finally:
        scheduler.shutdown(wait=True)


def pushed_tags(registry: Registry, project: Project, count: int) -> dict[str, str]:
    """``count`` tags of merge request !IID, each its own image; and a tag no plan touches."""
    push_image(registry, project.path, ["keep"])
    return {f"mr-{IID}-{n}": push_image(registry, project.path, [f"mr-{IID}-{n}"], size=64) for n in range(count)}


def tag_put(request: requests.PreparedRequest) -> str | None:
    found = re.search(r"/manifests/(mr-\d+-\d+)$", request.url or "")
    return found.group(1) if request.method == "PUT" and found else None


def test_an_event_the_web_stores_is_applied_without_waiting_for_the_poll(
    janitor: Janitors, registry: Registry, gitlab: GitLabStandin, project: Project
) -> None:
    j = live(janitor, registry, project, 1)
    with scheduled(j):
        time.sleep(0.5)  # the worker idles: its next poll is 30s away
        stored = time.monotonic()
        j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=91, ref="topic", mr_iid=IID, status="running"))
        wait_for(lambda: j.store.get_pipeline(project.path, 91), timeout=5, message="the pipeline in the ledger")
        took = time.monotonic() - stored
    assert took < 3, f"the event waited {took:.1f}s with poll_interval {POLL}"
    assert j.store.queue_depth() == 0


def test_a_plan_is_run_when_its_grace_period_ends_not_at_the_next_poll(
    janitor: Janitors, registry: Registry, gitlab: GitLabStandin, project: Project
) -> None:
    j = live(janitor, registry, project, 3, grace="2s")
    pushed = pushed_tags(registry, project, 3)
    with scheduled(j):
        j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=92, ref="topic", mr_iid=IID))
        wait_for(lambda: all(r.state == "confirmed" for r in j.store.records_of_pipeline(project.path, 92))
                 and j.store.records_of_pipeline(project.path, 92), timeout=5, message="the pipeline's records")
        merged = time.monotonic()
        j.hook("Merge Request Hook", mr_hook(project.path, iid=IID, source_branch="topic", action="merge"))
        wait_for(lambda: j.store.list_plans(), timeout=5, message="the plan")
        assert all(digest_of(registry, project.path, tag) == digest for tag, digest in pushed.items())
        wait_for(lambda: tags(registry, project.path) == ["keep"], timeout=15, interval=0.05,
                 message="the merge request's tags gone")
        took = time.monotonic() - merged
    assert 2 <= took < 8, f"the tags went {took:.1f}s after the merge (grace period 2s, poll_interval {POLL})"
    (plan,) = j.store.list_plans()
    assert plan.state == "done"


def test_ticks_never_overlap_however_often_the_worker_is_woken(
    janitor: Janitors, registry: Registry, gitlab: GitLabStandin, project: Project
) -> None:
    j = live(janitor, registry, project, 1, poll="1s")
    active: list[int] = []
    overlaps: list[int] = []
    ticks: list[float] = []
    lock = threading.Lock()
    drain = j.worker.ingest.drain

    def slow_drain(*args: Any, **kwargs: Any) -> int:
        with lock:
            active.append(1)
            overlaps.append(len(active))
            ticks.append(time.monotonic())
        try:
            time.sleep(0.3)  # long enough that wakes and polls fall due while it runs
            return drain(*args, **kwargs)
        finally:
            with lock:
                active.pop()

    j.worker.ingest.drain = slow_drain  # type: ignore[method-assign]
    with scheduled(j):
        for n in range(25):
            j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=200 + n, ref=f"b{n}", status="running"))
            time.sleep(0.1)
        wait_for(lambda: j.store.queue_depth() == 0, timeout=10, message="every event applied")
    assert len(ticks) >= 4, ticks  # woken several times within one 1s poll
    assert max(overlaps) == 1, overlaps


def test_lanes_store_each_manifest_before_its_own_write_and_an_interrupted_batch_is_finished_from_it(
    janitor: Janitors, registry: Registry, gitlab: GitLabStandin, project: Project
) -> None:
    count, kill_at = 120, 70  # three placeholder batches; cut off inside the second
    j = live(janitor, registry, project, count, grace="1m", untag_method="placeholder")
    pushed = pushed_tags(registry, project, count)
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=93, ref="topic", mr_iid=IID))
    j.tick()
    j.hook("Merge Request Hook", mr_hook(project.path, iid=IID, source_branch="topic", action="merge"))
    j.tick()
    untag_ids = {u.tag: u.id for u in j.store.list_untags(limit=1000)}
    assert set(untag_ids) == set(pushed)

    session = new_session()
    send = session.send
    in_flight: list[int] = []
    most: list[int] = [0]
    unsaved: list[str] = []
    parked: list[str] = []
    lock = threading.Lock()

    def checked_send(request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        tag = tag_put(request)
        if tag is not None:
            found = j.store.get_untag(untag_ids[tag])
            if found is None or found[1] is None or found[1].digest != pushed[tag]:
                unsaved.append(tag)
        with lock:
            in_flight.append(1)
            most[0] = max(most[0], len(in_flight))
        try:
            response = send(request, **kwargs)
        finally:
            with lock:
                in_flight.pop()
        if tag is not None and response.status_code == 201:
            with lock:
                parked.append(tag)
                if len(parked) == kill_at:
                    raise WorkerKilled(f"killed after parking {kill_at} tags")
        return response

    session.send = checked_send  # type: ignore[method-assign]
    j.worker = build_worker(j.settings, j.store, registries=build_registries(j.settings, session), clock=j.clock)
    with pytest.raises(WorkerKilled):
        j.tick(advance=61)
    assert not unsaved, f"parked before their manifests were stored: {unsaved}"
    assert most[0] > 1, "the lanes never had two requests in flight"
    assert kill_at <= len(parked) < kill_at + UNTAG_LANES
    (plan,) = j.store.list_plans()
    assert plan.state == "running"
    changed = {tag for tag, digest in pushed.items() if digest_of(registry, project.path, tag) != digest}
    assert changed and changed <= set(parked)
    for tag in changed:  # each tag gone or parked has the manifest it pointed at in the audit
        found = j.store.get_untag(untag_ids[tag])
        assert found is not None and found[1] is not None and found[1].digest == pushed[tag], tag

    j.worker = build_worker(j.settings, j.store, registries=build_registries(j.settings, new_session()),
                            clock=j.clock)
    j.tick(advance=LEASE_SECONDS + 1)
    assert j.store.get_plan(plan.id).state == "done"  # type: ignore[union-attr]
    assert tags(registry, project.path) == ["keep"]
    assert {u.tag: (u.outcome, u.method) for u in j.store.list_untags(limit=1000)} == {
        tag: ("done", "placeholder") for tag in pushed}


def test_the_lanes_together_keep_to_requests_per_second(
    janitor: Janitors, registry: Registry, gitlab: GitLabStandin, project: Project
) -> None:
    rate, burst, count = 20, 2, 30
    j = live(janitor, registry, project, count, grace="1m", untag_method="placeholder",
             requests_per_second=rate, burst=burst)
    pushed = pushed_tags(registry, project, count)
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=94, ref="topic", mr_iid=IID))
    j.tick()
    j.hook("Merge Request Hook", mr_hook(project.path, iid=IID, source_branch="topic", action="merge"))
    j.tick()

    session = new_session()
    send = session.send
    sent: list[float] = []
    lanes: set[str] = set()
    lock = threading.Lock()

    def counted_send(request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if request.url and request.url.startswith(registry.url):
            with lock:
                sent.append(time.monotonic())
                lanes.add(threading.current_thread().name)
        return send(request, **kwargs)

    session.send = counted_send  # type: ignore[method-assign]
    j.worker = build_worker(j.settings, j.store, registries=build_registries(j.settings, session), clock=j.clock)
    j.tick(advance=61)
    assert tags(registry, project.path) == ["keep"]
    assert {u.outcome for u in j.store.list_untags(limit=1000)} == {"done"}
    assert len(sent) >= 2 * len(pushed)  # a guard and a PUT for each
    assert len([name for name in lanes if name.startswith("untag-lane")]) > 1, lanes
    # a token bucket lets at most burst + rate * window requests through in any window
    for i, start in enumerate(sent):
        within = sum(1 for at in sent[i:] if at - start < 1.0)
        assert within <= burst + rate + 1, f"{within} registry requests within 1s of request {i} (limit {rate}/s)"
    assert sent[-1] - sent[0] >= (len(sent) - burst) / rate * 0.9
