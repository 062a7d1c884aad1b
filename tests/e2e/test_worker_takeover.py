"""Two worker processes on one database: the one that holds a plan is SIGKILLed in the middle of its
placeholder batch; the other, already running (so it takes nothing back at start: it waits for the lease),
finishes the plan within 30 s, and the registry saw each tag parked once: no tag untagged twice."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from support.images import tags
from support.janitor import merged_mr_on_disk

from daemon.domain.policy import LEASE_SECONDS

TAGS = 20
PARKED = 6
IID = 8
TAKEOVER_LIMIT = 30.0

# A worker as the CLI runs it (``run_forever``), whose registry session SIGKILLs its own process once the
# registry stored the placeholder for its Nth tag, unless another worker of the test was killed already.
WORKER = """
import os, re, signal, sys
from daemon.config import load_settings
from daemon.registry.client import new_session
from daemon.wiring import build_registries, build_store, build_worker

settings = load_settings(sys.argv[1])
marker, limit = sys.argv[2], int(sys.argv[3])
parked = []

def die_after_parking(response, *args, **kwargs):
    request = response.request
    if request.method == "PUT" and re.search(r"/manifests/mr-", request.url) and response.status_code == 201:
        parked.append(request.url)
        if len(parked) == limit:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)

session = new_session()
session.hooks["response"].append(die_after_parking)
store = build_store(settings)
build_worker(settings, store, registries=build_registries(settings, session, store=store)).run_forever()
"""


def test_a_killed_workers_plan_is_finished_by_the_other_worker_within_30s_each_tag_untagged_once(
    tmp_path: Path, janitor, registry, gitlab, project
) -> None:
    assert LEASE_SECONDS <= 20
    config_path, j, pushed = merged_mr_on_disk(janitor, tmp_path, registry, project, iid=IID, pipeline_id=80,
                                               count=TAGS, grace="3s", worker={"poll_interval": "1s"})
    (plan,) = j.store.list_plans()
    assert plan.state == "scheduled"  # due in the grace period: both workers are up by then
    mark = registry.mark()

    marker = tmp_path / "killed"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(config_path), str(marker), str(PARKED)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while not any(w.poll() is not None for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        killed_at = time.monotonic()
        dead = [w for w in workers if w.poll() is not None]
        assert len(dead) == 1 and dead[0].returncode == -signal.SIGKILL, [w.poll() for w in workers]
        assert marker.exists()
        survivor = next(w for w in workers if w is not dead[0])

        state = j.store.get_plan(plan.id).state
        while state != "done" and time.monotonic() - killed_at < TAKEOVER_LIMIT + 5:
            time.sleep(0.2)
            state = j.store.get_plan(plan.id).state
        took = time.monotonic() - killed_at
        assert state == "done", f"the plan is {state} {took:.1f}s after its worker was killed"
        assert took <= TAKEOVER_LIMIT
        assert survivor.poll() is None, "the other worker keeps running"
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        codes = [w.wait(timeout=20) for w in workers]
    assert sorted(codes) == [-signal.SIGKILL, 0], [w.stderr.read().decode()[-2000:] for w in workers if w.stderr]

    assert tags(registry, project.path) == ["keep"]
    untags = j.store.list_untags()
    assert sorted(u.tag for u in untags) == sorted(pushed)  # one untag row per tag
    assert {u.tag: (u.outcome, u.method) for u in untags} == {tag: ("done", "placeholder") for tag in pushed}
    # The registry's own log: each tag was parked on its placeholder by exactly one PUT that it took.
    parks = Counter(r.path.rsplit("/", 1)[1] for r in registry.request_log(since=mark, repo=project.path)
                    if r.method == "PUT" and "/manifests/mr-" in r.path and r.status == 201)
    assert parks == Counter(dict.fromkeys(pushed, 1))
