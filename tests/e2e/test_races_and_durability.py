"""Races against CI pushes, and durability across SIGKILL (S9), with real processes and registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import requests
import yaml
from support.images import digest_of, push_image, tags
from support.janitor import SECRET, RealClock, mr_hook, pipeline_hook, push_hook, registry_section
from support.servers import ServerThread

from daemon.demo.env import free_port
from daemon.registry.client import new_session
from daemon.wiring import build_registries, build_worker

MR_TAG = {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}


def _wait(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_push_between_guard_and_write_is_put_back(janitor, registry, gitlab, project):
    """CI re-pushes mr-1 right after the janitor's guard read; the untag then removes the new image's
    tag, the registry notifies the push, and the worker points the tag back at the new image."""
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token, "dry_run": False,
                  "grace_period": "1s", "tags": [MR_TAG]}],
                registry=registry_section(registry, untag_method="placeholder"),
                server={"registry_notification_token": registry.notification_token}, clock=RealClock())
    repo = project.path
    push_image(registry, repo, ["mr-1"], seed=1)
    newer: list[str] = []

    def repush_after_guard(response, *args, **kwargs):
        if response.request.method == "GET" and response.url.endswith(f"/{repo}/manifests/mr-1") and not newer:
            newer.append(push_image(registry, repo, ["mr-1"], seed=2))

    session = new_session()
    session.hooks["response"].append(repush_after_guard)
    j.worker = build_worker(j.settings, j.store, registries=build_registries(j.settings, session), clock=j.clock)
    with ServerThread(j.app) as server:
        gitlab.set_relay(f"{server.url}/webhooks/registry")
        j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=1, ref="f", mr_iid=1))
        j.hook("Merge Request Hook", mr_hook(repo, iid=1, source_branch="f", action="merge"))
        j.tick()
        j.tick(advance=2)
        assert newer, "the guard read was not seen"
        (untag,) = j.store.list_untags()
        assert (untag.outcome, untag.reason) == ("done", None)
        _wait(lambda: any(e.source == "registry" for e in j.store.pending_events()), what="the notification")
        j.tick()
    assert digest_of(registry, repo, "mr-1") == newer[0]


def test_s9_nothing_lost_after_sigkill(tmp_path, janitor, registry, gitlab, project):
    """Events answered 202 by a real gunicorn are all there after SIGKILL, and their work happens."""
    port = free_port()
    db = tmp_path / "janitor.db"
    config = {
        "registry": registry_section(registry),
        "storage": {"url": f"sqlite:///{db}"},
        "server": {"bind": f"127.0.0.1:{port}", "admin_token": "a"},
        "projects": [{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token,
                      "dry_run": False, "grace_period": "1m", "tags": [MR_TAG]}],
    }
    (tmp_path / "janitor.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "JANITOR_WEB_WORKERS": "2"}
    web = subprocess.Popen([sys.executable, "-m", "daemon", "web", "--config", str(tmp_path / "janitor.yaml")],
                           env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: _up(url), timeout=20, what="the web process")
        push_image(registry, project.path, ["mr-6", "other"])
        sent = [("Pipeline Hook", pipeline_hook(project.path, pipeline_id=60, ref="f", mr_iid=6))]
        sent += [("Merge Request Hook", mr_hook(project.path, iid=6, source_branch="f", action="merge"))]
        sent += [("Pipeline Hook", pipeline_hook(project.path, pipeline_id=n, ref=f"b{n}")) for n in range(100, 140)]
        for event, body in sent:
            r = requests.post(f"{url}/webhooks/gitlab", data=json.dumps(body), timeout=5, headers={
                "X-Gitlab-Event": event, "X-Gitlab-Token": SECRET, "Content-Type": "application/json"})
            assert r.status_code == 202
    finally:
        os.killpg(web.pid, signal.SIGKILL)
        web.wait(timeout=10)
    j = janitor(config["projects"], registry=config["registry"], storage=config["storage"])  # the same database
    assert len(j.store.pending_events()) == len(sent)
    j.tick()
    j.tick(advance=61)
    assert tags(registry, project.path) == ["other"]


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_two_pipelines_pushing_the_same_tag(janitor, registry, gitlab, project):
    """Two pipelines of one branch push its slug tag in turn: the newest push is what the janitor expects,
    and a pipeline-lifetime cleanup of the older one leaves the newer image alone."""
    j = janitor([{"path": project.path, "webhook_secret": SECRET, "registry_token": project.token, "dry_run": False,
                  "grace_period": "1m", "tags": [{"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"},
                                                 {"pattern": "build-$CI_COMMIT_REF_SLUG", "lifetime": "pipeline"}]}],
                registry=registry_section(registry))
    repo = project.path
    push_image(registry, repo, ["topic", "build-topic"], seed=1)
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=1, ref="topic", status="running"))
    j.tick()
    second = push_image(registry, repo, ["topic", "build-topic"], seed=2)
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=2, ref="topic", status="running"))
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=1, ref="topic"))  # the older one finishes last
    j.tick()
    j.tick(advance=61)
    # pipeline 1's build tag was resolved to the image pipeline 2 pushed; pipeline 2 still runs on a
    # live ref and owns it, so it stays
    assert digest_of(registry, repo, "build-topic") == second
    j.hook("Push Hook", push_hook(repo, ref="topic", deleted=True))
    j.tick()
    j.tick(advance=61)
    assert tags(registry, repo) == ["build-topic"]
    untags = {(u.pipeline_id, u.tag): (u.outcome, u.reason) for u in j.store.list_untags()}
    assert untags[(1, "build-topic")] == ("skipped", "live_owner")
    assert untags[(2, "topic")] == ("done", None)
    # pipeline 1's older push of 'topic' is done with too: the tag it was overwritten on is gone
    states = {(r.pipeline_id, r.tag): r.state for n in (1, 2) for r in j.store.records_of_pipeline(repo, n)}
    assert states[(1, "topic")] == states[(2, "topic")] == "untagged"
