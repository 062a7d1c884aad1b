"""Untag end to end, what a user waits for: from the merge hook's delivery to the last of its tags gone.

Issue #15 (SPEC 13's untag target, measured around the executor too): the janitor runs as operators run it,
``registry-janitor web`` (gunicorn) and ``registry-janitor worker`` as two processes sharing one SQLite file,
with the default ``worker.poll_interval`` (5s), against a real distribution registry and the GitLab
stand-in (``tests/support``). One project's merge request pipeline pushed ``--tags`` tags to one repository
(one tag pattern each, learnt from its pipeline hook as the janitor learns any pattern's tags); grace period
0, no dry run, rate limit off. The clock starts as the merge hook is POSTed and stops when the registry's
tag list shows the last of those tags gone (polled). The baseline is the minimal serial hand loop over the
same number of fresh tags in the same registry: one session, one token, a HEAD of each tag (its guard), one
placeholder uploaded, a PUT of each tag onto it, one DELETE of the placeholder. Alternating rounds, medians;
prints both, the ratio, PASS or FAIL against 0.8x, and exits 1 on FAIL. Not part of pytest.

    python benchmarks/bench_untag_e2e.py [--tags 300] [--rounds 5] [--poll-interval 5s]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import REPO, free_port, verdict, wait_for_port
from support import GitLabStandin, Registry
from support.gitlab_json import Project
from support.images import push_image, tags
from support.janitor import mr_hook, pipeline_hook

from daemon.registry.placeholder import new_placeholder

TARGET = 0.8
SECRET = "bench-e2e-secret"
PROJECT = "bench/e2e"


def config(registry: Registry, gitlab: GitLabStandin, project: Project, db: Path, port: int, count: int,
           poll_interval: str) -> dict[str, Any]:
    """The janitor as configured for this run: one project whose merge request pipelines push ``count``
    tags to its root repository, untagged as soon as the merge request is merged."""
    patterns = [{"pattern": f"mr-$CI_MERGE_REQUEST_IID-{k}", "lifetime": "merge_request"} for k in range(count)]
    return {
        "gitlab": {"url": gitlab.url},
        "registry": {"url": registry.url, "requests_per_second": 0, "token_realms": [registry.realm]},
        "storage": {"url": f"sqlite:///{db}"},
        "server": {"bind": f"127.0.0.1:{port}", "admin_token": "bench-admin",
                   "registry_notification_token": "bench-notify"},
        "worker": {"poll_interval": poll_interval},
        "projects": [{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                      "dry_run": False, "grace_period": "0s", "max_tags_per_plan": 10 * count,
                      "max_repository_fraction": 1.0, "max_untags_per_hour": 100 * count, "tags": patterns}],
    }


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("ab") as sink:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=sink, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def post(url: str, event: str, body: dict[str, Any]) -> None:
    response = requests.post(f"{url}/webhooks/gitlab", data=json.dumps(body),
                             headers={"X-Gitlab-Event": event, "X-Gitlab-Token": SECRET,
                                      "Content-Type": "application/json"}, timeout=10)
    if response.status_code not in (200, 202):
        raise RuntimeError(f"{event}: HTTP {response.status_code} {response.text[:200]}")


def confirmed(db: Path, project_path: str, pipeline_id: int) -> int:
    """How many of the pipeline's push records the worker has confirmed in the registry (read-only)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        row = conn.execute("SELECT COUNT(*) FROM push_records WHERE project_path = ? AND pipeline_id = ?"
                           " AND state = 'confirmed'", [project_path, pipeline_id]).fetchone()
    return int(row[0])


def wait_until(probe: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def janitor_round(registry: Registry, url: str, db: Path, project: Project, iid: int, count: int) -> float:
    """Seconds from the merge hook's POST to the last of the MR pipeline's ``count`` tags gone."""
    ref = f"feature-{iid}"
    names = [f"mr-{iid}-{k}" for k in range(count)]
    push_image(registry, project.path, names, size=64)
    pipeline = 10_000 + iid
    post(url, "Merge Request Hook", mr_hook(project.path, iid=iid, source_branch=ref, action="open"))
    post(url, "Pipeline Hook", pipeline_hook(project.path, pipeline_id=pipeline, ref=ref, mr_iid=iid))
    wait_until(lambda: confirmed(db, project.path, pipeline) >= count, 120,
               f"the worker to confirm the {count} tags of pipeline {pipeline}")
    time.sleep(0.5)  # the worker idles between polls, as it would when the merge comes
    wanted = set(names)
    started = time.perf_counter()
    post(url, "Merge Request Hook", mr_hook(project.path, iid=iid, source_branch=ref, action="merge"))
    while wanted & set(tags(registry, project.path)):
        if time.perf_counter() - started > 600:
            raise RuntimeError(f"tags of !{iid} still there after 600s")
        time.sleep(0.02)
    return time.perf_counter() - started


def hand_round(registry: Registry, gitlab: GitLabStandin, project: Project, repo: str, count: int) -> float:
    """Seconds for the minimal serial loop over ``count`` fresh tags, checked gone afterwards."""
    names = [f"h-{k}" for k in range(count)]
    digest = push_image(registry, repo, names, size=64)
    started = time.perf_counter()
    session = requests.Session()
    token = session.get(gitlab.realm, params={"service": "container_registry",
                                              "scope": f"repository:{repo}:pull,push,delete"},
                        auth=("bench", project.token)).json()["token"]
    session.headers["Authorization"] = f"Bearer {token}"
    base = f"{registry.url}/v2/{repo}"
    placeholder = new_placeholder()
    upload = session.post(f"{base}/blobs/uploads/")
    upload.raise_for_status()
    session.put(urljoin(f"{base}/blobs/uploads/", upload.headers["Location"]),
                params={"digest": placeholder.config_digest}, data=placeholder.config,
                headers={"Content-Type": "application/octet-stream"}).raise_for_status()
    accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
    for name in names:
        current = session.head(f"{base}/manifests/{name}", headers={"Accept": accept})
        if current.headers.get("Docker-Content-Digest") != digest:
            continue
        session.put(f"{base}/manifests/{name}", data=placeholder.manifest.body,
                    headers={"Content-Type": placeholder.manifest.media_type}).raise_for_status()
    session.delete(f"{base}/manifests/{placeholder.manifest.digest}").raise_for_status()
    elapsed = time.perf_counter() - started
    left = tags(registry, repo)
    if left:
        raise RuntimeError(f"the hand loop left {len(left)} tags in {repo}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tags", type=int, default=300, help="tags the merge request's pipeline pushed")
    parser.add_argument("--rounds", type=int, default=5, help="alternating janitor / hand-loop rounds")
    parser.add_argument("--poll-interval", default="5s", help="the worker's poll_interval (default: the default)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (config, logs, database)")
    args = parser.parse_args()

    gitlab = GitLabStandin().start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-untag-e2e-"))
    (workdir / "registry").mkdir()
    registry = Registry(workdir / "registry", realm=gitlab.realm, issuer=gitlab.issuer, notification_url=None)
    procs: list[subprocess.Popen[bytes]] = []
    janitor_secs: list[float] = []
    hand_secs: list[float] = []
    try:
        registry.start()
        gitlab.attach_registry(registry.url)
        project = gitlab.add_project(PROJECT)
        db, port = workdir / "janitor.db", free_port()
        cfg = workdir / "janitor.yaml"
        cfg.write_text(json.dumps(config(registry, gitlab, project, db, port, args.tags, args.poll_interval)))
        log = workdir / "janitor.log"
        web = start([sys.executable, "-m", "daemon", "web", "--config", str(cfg)], log)
        procs.append(web)
        wait_for_port(port, web)
        procs.append(start([sys.executable, "-m", "daemon", "worker", "--config", str(cfg)], log))
        url = f"http://127.0.0.1:{port}"
        # one discarded round of each warms the registry's storage paths and both code paths
        janitor_round(registry, url, db, project, 1, 20)
        hand_round(registry, gitlab, project, f"{project.path}/warm", 20)
        for n in range(args.rounds):
            janitor_secs.append(janitor_round(registry, url, db, project, 2 + n, args.tags))
            hand_secs.append(hand_round(registry, gitlab, project, f"{project.path}/hand-{n}", args.tags))
            print(f"round {n + 1}: janitor {janitor_secs[-1]:.2f}s, hand loop {hand_secs[-1]:.2f}s", flush=True)
    finally:
        for proc in reversed(procs):
            stop(proc)
        registry.stop()
        gitlab.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    janitor, hand = statistics.median(janitor_secs), statistics.median(hand_secs)
    print(f"janitor, merge hook to last tag gone  {janitor:6.2f} s  ({args.tags / janitor:6.1f} tags/s; "
          + ", ".join(f"{s:.2f}" for s in janitor_secs) + ")")
    print(f"hand loop                             {hand:6.2f} s  ({args.tags / hand:6.1f} tags/s; "
          + ", ".join(f"{s:.2f}" for s in hand_secs) + ")")
    return 0 if verdict("janitor / hand loop (end to end)", hand / janitor, TARGET) else 1


if __name__ == "__main__":
    sys.exit(main())
