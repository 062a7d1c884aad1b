"""A placeholder batch interrupted part-way keeps its audit, and the next run finishes it (S9, S5).

The worker is stopped in the middle of a batch by a ``requests`` response hook that raises
``WorkerKilled``, a ``BaseException`` nothing in the janitor catches (as nothing catches SIGKILL): right
after the registry stored the Nth tag's placeholder, or right after it deleted the placeholder but
before any result was recorded. The audit must already hold each parked tag's saved manifest, and once
the plan is run again every untag the janitor performed is ``done`` with that manifest, and its restore
puts the tag back. ``tests/e2e/test_interrupted_worker.py`` kills a real worker process instead.

The window is short: the plan's lease is renewed while the worker works on it, and a worker restarted on
the same machine takes back at once what its dead predecessor held, but never a plan a live worker (or one
it cannot tell about) holds.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from support.gitlab_json import Project
from support.gitlab_standin import GitLabStandin
from support.images import digest_of, push_image, tags
from support.janitor import SECRET, Harness, Janitors, make_store, mr_hook, pipeline_hook, registry_section
from support.registry import Registry

from daemon.domain.model import Trigger
from daemon.domain.policy import LEASE_SECONDS
from daemon.execute.lease import Holder, LeaseKeeper, LeaseLost, this_process
from daemon.registry.client import UNTAG_LANES, new_session
from daemon.registry.names import is_digest
from daemon.wiring import build_registries, build_worker

GRACE = 60
TAGS = 20
IID = 5
PATTERNS = [{"pattern": f"mr-$CI_MERGE_REQUEST_IID-{n}", "lifetime": "merge_request"} for n in range(TAGS)]


class WorkerKilled(BaseException):
    """Stands for SIGKILL: no ``except Exception`` in the janitor stops it."""


def live(janitor: Janitors, registry: Registry, project: Project) -> Harness:
    entry = {"path": project.path, "webhook_secret": SECRET, "registry_token": project.token, "dry_run": False,
             "grace_period": f"{GRACE}s", "tags": PATTERNS, "max_repository_fraction": 1.0}
    return janitor([entry], registry=registry_section(registry, untag_method="placeholder"))


def with_session(j: Harness, session: requests.Session) -> None:
    """The worker as the CLI builds it, its registry requests going through ``session``."""
    j.worker = build_worker(j.settings, j.store, registries=build_registries(j.settings, session), clock=j.clock)


def restarted(j: Harness) -> None:
    with_session(j, new_session())


def tag_put(response: requests.Response) -> bool:
    request = response.request
    return request.method == "PUT" and re.search(r"/manifests/mr-\d+-\d+$", request.url or "") is not None


def digest_delete(response: requests.Response) -> bool:
    request = response.request
    return request.method == "DELETE" and is_digest((request.url or "").rsplit("/", 1)[1])


def killer(after: str, count: int) -> Callable[..., None]:
    """A response hook that kills the worker after the ``count``-th tag PUT (``after="put"``), or after
    the placeholder's DELETE once tags were parked (``after="delete"``)."""
    puts: list[str] = []

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if tag_put(response) and response.status_code == 201:
            puts.append(response.request.url or "")
            if after == "put" and len(puts) == count:
                raise WorkerKilled(f"killed after parking {count} tag(s)")
        if after == "delete" and puts and digest_delete(response) and response.status_code == 202:
            raise WorkerKilled("killed after deleting the placeholder")

    return hook


def merged_with_tags(j: Harness, registry: Registry, project: Project, count: int = TAGS) -> dict[str, str]:
    """``count`` tags of the MR, each its own image; then the MR is merged. Returns tag -> digest."""
    pushed = {f"mr-{IID}-{n}": push_image(registry, project.path, [f"mr-{IID}-{n}"]) for n in range(count)}
    push_image(registry, project.path, ["keep"])
    j.hook("Pipeline Hook", pipeline_hook(project.path, pipeline_id=50, ref="topic", mr_iid=IID))
    j.tick()
    j.hook("Merge Request Hook", mr_hook(project.path, iid=IID, source_branch="topic", action="merge"))
    j.tick()
    return pushed


def saved_digests(j: Harness) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for untag in j.store.list_untags():
        found = j.store.get_untag(untag.id)
        assert found is not None
        out[untag.tag] = found[1].digest if found[1] is not None else None
    return out


def restore_all(j: Harness) -> None:
    ids = [u.id for u in j.store.list_untags()]
    requests_ = [j.store.add_request("restore", untag_id, "admin", j.clock())[0] for untag_id in ids]
    j.tick()
    for req in requests_:
        done = j.store.get_request(req.id)
        assert done is not None and (done.state, done.untag_id) == ("done", req.untag_id), done


@pytest.mark.parametrize(("after", "count"), [("put", 1), ("put", 6), ("put", TAGS), ("delete", 1)])
def test_an_interrupted_placeholder_batch_keeps_its_audit_and_is_finished_from_it(
    janitor: Janitors, registry: Registry, gitlab: GitLabStandin, project: Project, after: str, count: int
) -> None:
    j = live(janitor, registry, project)
    pushed = merged_with_tags(j, registry, project)
    session = new_session()
    session.hooks["response"].append(killer(after, count))
    with_session(j, session)
    registry.mark()
    with pytest.raises(WorkerKilled):
        j.tick(advance=GRACE + 1)

    (plan,) = j.store.list_plans()
    assert plan.state == "running"
    gone_or_parked = {tag for tag, digest in pushed.items() if digest_of(registry, project.path, tag) != digest}
    # the other lanes' PUTs already sent when one lane is cut off still land (as under a real SIGKILL)
    assert count <= len(gone_or_parked) < count + UNTAG_LANES if after == "put" else len(gone_or_parked) == TAGS
    saved = saved_digests(j)
    assert {tag: saved[tag] for tag in gone_or_parked} == {tag: pushed[tag] for tag in gone_or_parked}, \
        "a tag was parked on the placeholder before its manifest was saved"

    restarted(j)
    j.tick(advance=LEASE_SECONDS + 1)
    assert j.store.get_plan(plan.id).state == "done"  # type: ignore[union-attr]
    assert tags(registry, project.path) == ["keep"]
    assert {u.tag: (u.outcome, u.reason, u.method) for u in j.store.list_untags()} == {
        tag: ("done", None, "placeholder") for tag in pushed}
    assert saved_digests(j) == pushed
    deleted = {e.path.rsplit("/", 1)[1] for e in registry.request_log(repo=project.path)
               if e.method == "DELETE" and is_digest(e.path.rsplit("/", 1)[1])}
    assert deleted and not deleted & set(pushed.values())  # S5: only placeholders go by digest

    restore_all(j)
    assert {tag: digest_of(registry, project.path, tag) for tag in pushed} == pushed


def test_the_lease_is_renewed_while_the_worker_works_so_no_other_worker_takes_the_plan(
    janitor: Janitors, registry: Registry, gitlab: GitLabStandin, project: Project
) -> None:
    j = live(janitor, registry, project)
    pushed = merged_with_tags(j, registry, project, count=8)
    (plan,) = j.store.list_plans()
    taken: list[bool] = []

    def slow_registry(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if tag_put(response):  # the batch takes the janitor's clock far past one lease (its lanes side by side)
            j.clock.advance(LEASE_SECONDS / 3 / UNTAG_LANES)
            taken.append(j.store.claim_plan(plan.id, j.clock(), LEASE_SECONDS, "another worker"))

    session = new_session()
    session.hooks["response"].append(slow_registry)
    with_session(j, session)
    j.tick(advance=GRACE + 1)
    assert taken == [False] * len(pushed)
    assert j.store.get_plan(plan.id).state == "done"  # type: ignore[union-attr]
    assert {u.tag: u.outcome for u in j.store.list_untags()} == dict.fromkeys(pushed, "done")


@pytest.fixture
def gone_pid() -> int:
    """The pid of a process of this machine that ran and is gone (reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          check=True, text=True)
    return int(done.stdout)


@pytest.fixture
def running_pid() -> Iterator[int]:
    """The pid of a process of this machine that still runs (another worker, alive)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield sleeper.pid
    sleeper.kill()
    sleeper.wait()


def test_a_restarted_worker_takes_back_at_once_what_its_dead_predecessor_held(
    janitor: Janitors, registry: Registry, gitlab: GitLabStandin, project: Project, gone_pid: int
) -> None:
    j = live(janitor, registry, project)
    pushed = merged_with_tags(j, registry, project, count=3)
    j.clock.advance(GRACE + 1)
    (plan,) = j.store.list_plans()
    earlier = replace(this_process(), pid=gone_pid, run="the run before the restart")
    assert j.store.claim_plan(plan.id, j.clock(), LEASE_SECONDS, earlier.new_claim())  # ...and it died
    restarted(j)
    j.tick()  # no time passes: the lease still runs
    assert j.store.get_plan(plan.id).state == "done"  # type: ignore[union-attr]
    assert tags(registry, project.path) == ["keep"]
    assert saved_digests(j) == pushed


@pytest.mark.parametrize("held_by", ["a live worker of this machine", "a worker of another machine",
                                     "a worker in another pid namespace", "an older release"])
def test_a_plan_another_worker_may_still_be_running_waits_for_its_lease(
    janitor: Janitors, registry: Registry, gitlab: GitLabStandin, project: Project, gone_pid: int,
    running_pid: int, held_by: str
) -> None:
    j = live(janitor, registry, project)
    pushed = merged_with_tags(j, registry, project, count=3)
    j.clock.advance(GRACE + 1)
    (plan,) = j.store.list_plans()
    me = this_process()
    holder = {
        "a live worker of this machine": replace(me, pid=running_pid, run="another worker").new_claim(),
        "a worker of another machine": replace(me, boot="another boot", pid=gone_pid, run="r").new_claim(),
        "a worker in another pid namespace": replace(me, pidns="pid:[1]", pid=gone_pid, run="r").new_claim(),
        "an older release": "worker-1",
    }[held_by]
    assert j.store.claim_plan(plan.id, j.clock(), LEASE_SECONDS, holder)
    restarted(j)
    j.tick()
    assert j.store.get_plan(plan.id).state == "running"  # type: ignore[union-attr]
    assert {tag: digest_of(registry, project.path, tag) for tag in pushed} == pushed
    j.tick(advance=LEASE_SECONDS + 1)
    assert j.store.get_plan(plan.id).state == "done"  # type: ignore[union-attr]
    assert tags(registry, project.path) == ["keep"]


def test_a_holder_is_read_back_as_written_and_anything_else_is_no_holder() -> None:
    claim = this_process().new_claim()
    assert replace(Holder.parse(claim), claim="") == this_process()  # type: ignore[arg-type]
    for text in ("worker-1", "{}", "[]", '{"pid": 0}', claim.replace('"pid": ', '"pid": -')):
        assert Holder.parse(text) is None, text


def test_the_keeper_renews_from_its_own_thread_while_the_work_blocks_and_stops_the_work_once_taken_over(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path)
    plan_id, _ = store.create_plan(Trigger("merge_request_merged", "group/app", "k", 0.0), [], state="scheduled",
                                   due_at=0.0, now=0.0)
    mine = this_process().new_claim()
    assert store.claim_plan(plan_id, time.time(), 1.0, mine)
    with LeaseKeeper(store, plan_id, mine, time.time, lease_seconds=1.0, every=0.1) as lease:
        time.sleep(2.5)  # a registry call blocked in its retries, longer than two leases
        assert not store.claim_plan(plan_id, time.time(), LEASE_SECONDS, "another worker")
        lease.keep()
        assert store.take_back_plan(plan_id, mine, "another worker", time.time(), LEASE_SECONDS)
        time.sleep(0.3)
        with pytest.raises(LeaseLost):
            lease.keep()
    assert not store.renew_plan_lease(plan_id, mine, time.time(), LEASE_SECONDS)
    store.close()
