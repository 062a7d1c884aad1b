"""A worker process SIGKILLed in the middle of a placeholder batch (S9): the audit it left is whole, and the
worker started after it takes the plan back at once and finishes it, every untag ``done`` and restorable."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from support.images import digest_of, tags
from support.janitor import merged_mr_on_disk

from daemon.registry.client import UNTAG_LANES
from daemon.wiring import build_worker

TAGS = 20
PARKED = 6
IID = 7

# A worker as the CLI builds it, whose registry session SIGKILLs its own process once the registry stored
# the placeholder for the Nth tag: nothing in the process gets to run after that.
WORKER = """
import os, re, signal, sys
from daemon.config import load_settings
from daemon.registry.client import new_session
from daemon.wiring import build_registries, build_store, build_worker

settings = load_settings(sys.argv[1])
parked = []

def die_after_parking(response, *args, **kwargs):
    request = response.request
    if request.method == "PUT" and re.search(r"/manifests/mr-", request.url) and response.status_code == 201:
        parked.append(request.url)
        if len(parked) == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

session = new_session()
session.hooks["response"].append(die_after_parking)
build_worker(settings, build_store(settings), registries=build_registries(settings, session)).tick()
"""


def test_a_worker_killed_mid_batch_leaves_its_audit_and_the_next_worker_finishes_at_once(
    tmp_path: Path, janitor, registry, gitlab, project
) -> None:
    config_path, j, pushed = merged_mr_on_disk(janitor, tmp_path, registry, project, iid=IID, pipeline_id=70,
                                               count=TAGS, grace="1s")
    time.sleep(1.2)  # the grace period, in the time the worker process reads too

    killed = subprocess.run([sys.executable, "-c", WORKER, str(config_path), str(PARKED)], timeout=120,
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    (plan,) = j.store.list_plans()
    assert plan.state == "running"
    parked = {tag for tag, digest in pushed.items() if digest_of(registry, project.path, tag) != digest}
    assert PARKED <= len(parked) < PARKED + UNTAG_LANES  # the other lanes' PUTs in flight at the kill land too
    audit = {u.tag: j.store.get_untag(u.id) for u in j.store.list_untags()}
    assert {tag: audit[tag][1].digest for tag in parked} == {tag: pushed[tag] for tag in parked}  # type: ignore[index,union-attr]

    j.worker = build_worker(j.settings, j.store, clock=j.clock)  # the worker started after it
    j.tick()  # at once: the dead worker's lease has not run out
    assert j.store.get_plan(plan.id).state == "done"
    assert tags(registry, project.path) == ["keep"]
    untags = j.store.list_untags()
    assert {u.tag: (u.outcome, u.reason, u.method) for u in untags} == {
        tag: ("done", None, "placeholder") for tag in pushed}
    assert {u.tag: j.store.get_untag(u.id)[1].digest for u in untags} == pushed  # type: ignore[index,union-attr]

    requests_ = [j.store.add_request("restore", u.id, "admin", j.clock())[0] for u in untags]
    j.tick()
    assert [j.store.get_request(r.id).state for r in requests_] == ["done"] * TAGS  # type: ignore[union-attr]
    assert {tag: digest_of(registry, project.path, tag) for tag in pushed} == pushed
