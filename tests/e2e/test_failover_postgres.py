"""Failover on one PostgreSQL: two ``registry-janitor web`` and two ``registry-janitor worker`` processes
share a database; GitLab's hooks are posted alternately to both webs while one web (its whole process
group) and the worker running a plan are SIGKILLed mid-stream. Every delivery answered 2xx is stored once
and applied, every plan of a merged MR completes on the surviving worker, and the registry's own access log
shows each of those tags parked once and no other tag touched.

GitLab does not resend a delivery that got no answer, and neither does this client: a delivery in flight
to the killed web may or may not be stored. What must be cleaned is therefore read from the inbox (an MR
is cleaned when its pipeline hook and its merge hook are stored), after checking that the inbox holds every
2xx-answered delivery.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import requests
import yaml
from support.images import push_image, tags
from support.janitor import SECRET, mr_hook, pipeline_hook, registry_section
from support.postgres import PostgresCluster, free_port
from support.servers import wait_for

from daemon.domain.policy import LEASE_SECONDS

MRS = range(1, 7)  # merged
OPEN_MR = 7  # its pipeline ran; never merged: its tags stay
TAGS_PER_MR = 5
NOISE = 40  # branch pipelines with nothing to clean, around the MRs' hooks
SENDERS = 4  # deliveries in flight at once
LIMIT = 60.0  # seconds from the last delivery until every plan is done


def _tag(iid: int, n: int) -> str:
    return f"mr-{iid}-{n}"


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Its own process group: a web is a gunicorn master and its workers, all killed at once.
    return subprocess.Popen([sys.executable, "-m", "daemon", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=10)


def test_two_webs_and_two_workers_on_postgresql_survive_sigkill_of_one_each(
    tmp_path: Path, postgres: PostgresCluster, registry, gitlab, project
) -> None:
    assert LEASE_SECONDS <= 20
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = postgres.create_database(name)  # empty: the four processes starting at once migrate it once
    repo = project.path
    config = {
        # A slow registry budget (shared by both workers through the database) keeps plans running long
        # enough to kill a worker in the middle of one.
        "registry": registry_section(registry, untag_method="placeholder", requests_per_second=8, burst=1),
        "storage": {"url": url},
        "server": {"admin_token": "a"},
        "worker": {"poll_interval": "1s"},
        "projects": [{"path": repo, "webhook_secret": SECRET, "registry_token": project.token,
                      "dry_run": False, "grace_period": "1s", "max_repository_fraction": 1.0,
                      "tags": [{"pattern": f"mr-$CI_MERGE_REQUEST_IID-{n}", "lifetime": "merge_request"}
                               for n in range(TAGS_PER_MR)]}],
    }
    config_path = tmp_path / "janitor.yaml"
    config_path.write_text(yaml.safe_dump(config))

    pushed = {iid: push_image(registry, repo, [_tag(iid, n) for n in range(TAGS_PER_MR)], seed=iid)
              for iid in [*MRS, OPEN_MR]}
    pushed[0] = push_image(registry, repo, ["keep"], seed=99)
    mark = registry.mark()

    base_env = {**os.environ, "JANITOR_WEB_WORKERS": "2", "JANITOR_WEB_THREADS": "4"}
    base_env.pop("GUNICORN_CMD_ARGS", None)
    ports = [free_port(), free_port()]
    webs = [_start(["web", "--config", str(config_path)], {**base_env, "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{p}"})
            for p in ports]
    workers = [_start(["worker", "--config", str(config_path)], base_env) for _ in range(2)]
    procs = [*webs, *workers]
    web_urls = [f"http://127.0.0.1:{p}" for p in ports]
    db = psycopg.connect(url, autocommit=True)
    killed: dict[str, int] = {}
    try:
        for web_url in web_urls:
            wait_for(lambda u=web_url: _healthy(u), timeout=30, interval=0.1, message=f"the web at {web_url}")

        # What GitLab sends: each MR's pipeline hook among branch pipelines, then the merges among more.
        pipelines = [("Pipeline Hook", f"p-{iid}", pipeline_hook(repo, pipeline_id=100 + iid, ref=f"topic-{iid}",
                                                                 mr_iid=iid))
                     for iid in [*MRS, OPEN_MR]]
        merges = [("Merge Request Hook", f"m-{iid}", mr_hook(repo, iid=iid, source_branch=f"topic-{iid}",
                                                             action="merge"))
                  for iid in MRS]
        noise = [("Pipeline Hook", f"n-{n}", pipeline_hook(repo, pipeline_id=1000 + n, ref=f"branch-{n}"))
                 for n in range(NOISE)]
        half = NOISE // 2
        first = noise[:3] + pipelines + noise[3:half]
        second = [d for i, m in enumerate(merges) for d in (m, *noise[half + 2 * i:half + 2 * i + 2])]
        second += noise[half + 2 * len(merges):]  # each merge 3 apart: they go to A and B in turn
        answered: set[str] = set()
        unanswered: set[str] = set()
        sent_to_b: set[str] = set()
        lock = threading.Lock()
        web_a_dead = threading.Event()

        def send(index: int, delivery: tuple[str, str, dict]) -> None:
            event, key, body = delivery
            target = web_urls[index % 2]
            if target == web_urls[0] and web_a_dead.is_set():
                target = web_urls[1]  # the load balancer no longer sends to the dead web
            try:
                r = requests.post(f"{target}/webhooks/gitlab", data=json.dumps(body), timeout=10, headers={
                    "X-Gitlab-Event": event, "X-Gitlab-Token": SECRET, "Content-Type": "application/json",
                    "Idempotency-Key": key})
                ok = 200 <= r.status_code < 300
            except requests.RequestException:
                ok = False
            with lock:
                (answered if ok else unanswered).add(key)
                if target == web_urls[1]:
                    sent_to_b.add(key)

        def kill_web_a() -> None:
            os.killpg(webs[0].pid, signal.SIGKILL)
            web_a_dead.set()
            killed["web"] = webs[0].wait(timeout=10)

        # The worker running a plan, once it kept the manifests of some of its tags (each is kept just before
        # the tag's write) and not yet stored their outcomes: SIGKILLed by its pid in `workers`.
        def kill_busy_worker() -> None:
            pids = {w.pid: w for w in workers}
            deadline = time.monotonic() + 60
            with psycopg.connect(url, autocommit=True) as own:
                while time.monotonic() < deadline:
                    row = own.execute(
                        "SELECT w.pid, w.plan_id FROM workers w WHERE w.plan_id IS NOT NULL AND (SELECT COUNT(*)"
                        " FROM untags u WHERE u.plan_id = w.plan_id AND u.outcome = 'pending'"
                        " AND u.manifest_body IS NOT NULL) BETWEEN 2 AND %s ORDER BY w.beat_at DESC LIMIT 1",
                        [TAGS_PER_MR - 1]).fetchone()
                    if row is not None and row[0] in pids:
                        os.kill(row[0], signal.SIGKILL)
                        killed["worker"] = pids[row[0]].wait(timeout=10)
                        killed["plan"] = row[1]
                        return
                    time.sleep(0.02)

        killer = threading.Thread(target=kill_busy_worker, name="kill-busy-worker")
        killer.start()
        with ThreadPoolExecutor(SENDERS) as pool:
            list(pool.map(send, range(len(first)), first))
            futures = [pool.submit(send, i, d) for i, d in enumerate(second)]
            # Mid-stream: some merges went to web A, some are in flight when it dies.
            while sum(f.done() for f in futures) < len(second) // 3:
                time.sleep(0.005)
            kill_web_a()
            for f in futures:
                f.result()
        sent_at = time.monotonic()
        killer.join(timeout=70)
        assert killed.get("web") == -signal.SIGKILL
        assert killed.get("worker") == -signal.SIGKILL, (
            "no worker was seen in the middle of a plan", db.execute("SELECT id, state FROM plans").fetchall(),
            db.execute("SELECT plan_id, tag, outcome FROM untags").fetchall(),
            db.execute("SELECT pid, plan_id FROM workers").fetchall(), [w.pid for w in workers])
        survivor = next(w for w in workers if w.poll() is None)

        # Every delivery answered 2xx is stored (once: the key is unique) and every stored one applied.
        prefix = f"gitlab:{repo}:idempotency-key:"

        def inbox() -> dict[str, tuple[float | None, str | None]]:
            rows = db.execute("SELECT delivery_key, processed_at, error FROM inbox").fetchall()
            keys = Counter(r[0] for r in rows)
            assert max(keys.values(), default=1) == 1
            return {r[0].removeprefix(prefix): (r[1], r[2]) for r in rows}

        stored = inbox()
        assert answered <= set(stored), f"answered 2xx, not stored: {sorted(answered - set(stored))}"
        assert set(stored) <= answered | unanswered
        assert len(answered) + len(unanswered) == len(first) + len(second)
        assert not unanswered & sent_to_b, "the surviving web answered every delivery sent to it"
        assert unanswered <= {k for i, (_, k, _) in enumerate(second) if i % 2 == 0}
        cleaned = {iid for iid in MRS if f"p-{iid}" in stored and f"m-{iid}" in stored}
        assert len(cleaned) >= len(MRS) - SENDERS // 2, (cleaned, unanswered)

        def all_done() -> bool:
            events = inbox()
            if any(processed is None for processed, _ in events.values()):
                return False
            states = [r[0] for r in db.execute("SELECT state FROM plans").fetchall()]
            return len(states) == len(cleaned) and all(s == "done" for s in states)

        wait_for(all_done, timeout=LIMIT - (time.monotonic() - sent_at), interval=0.2,
                 message="every event applied and every plan done")
        assert {k: e for k, (_, e) in inbox().items() if e is not None} == {}
        assert survivor.poll() is None, "the surviving worker keeps running"
        assert webs[1].poll() is None, "the surviving web keeps running"
        plan_mrs = {r[0] for r in db.execute("SELECT trigger_key FROM plans").fetchall()}
        assert len(plan_mrs) == len(cleaned)
        assert killed["plan"] in {r[0] for r in db.execute("SELECT id FROM plans").fetchall()}
        # One untag row per cleaned tag, each done once, by the placeholder.
        untags = db.execute("SELECT tag, outcome, method FROM untags").fetchall()
        assert Counter(r[0] for r in untags) == Counter({_tag(iid, n): 1 for iid in cleaned
                                                         for n in range(TAGS_PER_MR)})
        assert {(r[1], r[2]) for r in untags} == {("done", "placeholder")}
    finally:
        codes = [_stop(p) for p in procs if p.poll() is None]
        db.close()
        postgres.drop_database(name)
    assert all(code == 0 for code in codes), [p.stderr.read().decode()[-2000:] for p in procs if p.stderr]

    expected = {_tag(iid, n) for iid in cleaned for n in range(TAGS_PER_MR)}
    everything = {_tag(iid, n) for iid in [*MRS, OPEN_MR] for n in range(TAGS_PER_MR)} | {"keep"}
    assert set(tags(registry, repo)) == everything - expected
    # The registry's own log: each cleaned tag parked by exactly one PUT and no other tag written or deleted;
    # by digest, only placeholders were written and deleted, never an image that was pushed.
    writes = [(r.method, r.path.rsplit("/", 1)[1]) for r in registry.request_log(since=mark, repo=repo)
              if r.method in ("PUT", "DELETE") and "/manifests/" in r.path and r.status < 300]
    by_tag = [(method, ref) for method, ref in writes if not ref.startswith("sha256:")]
    assert Counter(by_tag) == Counter({("PUT", tag): 1 for tag in expected})
    deleted = {ref for method, ref in writes if method == "DELETE" and ref.startswith("sha256:")}
    assert deleted and not deleted & set(pushed.values())
    assert {ref for method, ref in writes if method == "PUT" and ref.startswith("sha256:")} <= deleted
