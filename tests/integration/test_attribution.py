"""How the ledger learns who pushed a tag: tag patterns resolved by HEAD, and registry notifications
(a real push, notified by the real registry, through the stand-in's relay, to the janitor served over
HTTP). CI records have their own file (test_ci_pushes.py)."""

from __future__ import annotations

import json

import pytest
from support.images import digest_of, push_image, tags
from support.janitor import SECRET, mr_hook, pipeline_hook, push_hook, registry_section
from support.servers import ServerThread, wait_for

GRACE = 60.0
SHA = "c0ffee12" + "0" * 32
PATTERNS = [
    {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"},
    {"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"},
    {"pattern": "cache-$CI_PIPELINE_ID", "lifetime": "pipeline"},
    {"pattern": "preview-$CI_COMMIT_SHORT_SHA", "ttl": "2h"},
]


def entry(project):
    return {"path": project.path, "webhook_secret": SECRET, "registry_token": project.token, "dry_run": False,
            "grace_period": "1m", "tags": PATTERNS}


@pytest.fixture
def notified(janitor, registry, gitlab, project):
    """The janitor served over HTTP, receiving this test's registry notifications."""
    harness = janitor([entry(project)], registry=registry_section(registry),
                      server={"registry_notification_token": registry.notification_token})
    server = ServerThread(harness.app, name="janitor").start()
    gitlab.set_relay(f"{server.url}/webhooks/registry")
    yield harness
    gitlab.set_relay(None)
    server.stop()


def records(janitor, repo, pipeline_id):
    return {r.tag: r for r in janitor.store.records_of_pipeline(repo, pipeline_id)}


def wait_notified(janitor, repo, tag, digest=None):
    """Wait (for I/O, not for time to pass) until the registry's notification of repo:tag (pointed at
    ``digest``, when given) is stored."""

    def arrived():
        rows = janitor.store.db.execute("SELECT body FROM inbox WHERE source = 'registry'").fetchall()
        for (body,) in rows:
            for event in json.loads(body)["events"]:
                target = event.get("target", {})
                if (target.get("repository"), target.get("tag")) == (repo, tag) and \
                        digest in (None, target.get("digest")):
                    return True
        return False

    wait_for(arrived, timeout=10, message=f"the registry's notification of {repo}:{tag}")


# -- tag patterns ---------------------------------------------------------------------------------------

def test_patterns_expect_at_the_pipeline_hook_and_head_resolves_at_the_end(janitor, registry, project):
    j = janitor([entry(project)], registry=registry_section(registry))
    repo = project.path
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=11, ref="feat", mr_iid=3, sha=SHA,
                                          status="running"))
    j.tick()
    expected = records(j, repo, 11)
    assert {t: (r.state, r.digest, r.lifetime, r.source) for t, r in expected.items()} == {
        "mr-3": ("expected", None, "merge_request", "pattern"),
        "feat": ("expected", None, "branch", "pattern"),
        "cache-11": ("expected", None, "pipeline", "pattern"),
        "preview-c0ffee12": ("expected", None, "ttl", "pattern"),
    }
    assert expected["preview-c0ffee12"].ttl_seconds == 7200

    digest = push_image(registry, repo, ["mr-3", "feat"])  # cache-11 and the preview are never pushed
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=11, ref="feat", mr_iid=3, sha=SHA))
    j.tick()
    resolved = records(j, repo, 11)
    assert {t: (r.state, r.digest) for t, r in resolved.items()} == {
        "mr-3": ("confirmed", digest), "feat": ("confirmed", digest),
        "cache-11": ("dropped", None), "preview-c0ffee12": ("dropped", None),
    }


def test_an_expected_tag_never_pushed_is_dropped_and_never_untagged(janitor, registry, project):
    j = janitor([entry(project)], registry=registry_section(registry))
    repo = project.path
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=12, ref="feat", sha=SHA, status="running"))
    j.tick()
    push_image(registry, repo, ["feat"])
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=12, ref="feat", sha=SHA))
    j.tick()
    assert records(j, repo, 12)["cache-12"].state == "dropped"

    # someone pushes that name by hand afterwards: the ledger never saw pipeline 12 push it
    stranger = push_image(registry, repo, ["cache-12"])
    j.tick(advance=GRACE + 1)
    j.tick(advance=3 * 3600)

    assert digest_of(registry, repo, "cache-12") == stranger
    assert records(j, repo, 12)["cache-12"].state == "dropped"
    assert [u for u in j.store.list_untags() if u.tag == "cache-12" and u.outcome == "done"] == []


def test_a_resolved_digest_is_what_the_plan_guards(janitor, registry, project):
    # Merged while the pipeline still runs: the plan is made before the tag's digest is known. Once
    # the pipeline's end resolves it, a different image put on the tag later is not untagged (S3).
    j = janitor([entry(project)], registry=registry_section(registry))
    repo = project.path
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=13, ref="feat", mr_iid=4, sha=SHA,
                                          status="running"))
    j.tick()
    push_image(registry, repo, ["mr-4"])
    j.hook("Merge Request Hook", mr_hook(repo, iid=4, source_branch="feat", action="merge"))
    j.tick()
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=13, ref="feat", mr_iid=4, sha=SHA))
    j.tick(advance=5)
    replaced = push_image(registry, repo, ["mr-4"])  # someone re-uses the name for another image
    j.tick(advance=GRACE)

    assert digest_of(registry, repo, "mr-4") == replaced
    (untag,) = [u for u in j.store.list_untags() if u.tag == "mr-4"]
    assert (untag.outcome, untag.reason) == ("skipped", "superseded")


# -- registry notifications ---------------------------------------------------------------------------------

def test_notification_after_the_pipeline_hook_confirms_the_expected_tag(notified, registry, project):
    repo = project.path
    notified.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=21, ref="feat", mr_iid=5, sha=SHA,
                                                 status="running"))
    notified.tick()
    digest = push_image(registry, repo, ["mr-5"])
    wait_notified(notified, repo, "mr-5")
    notified.tick()
    record = records(notified, repo, 21)["mr-5"]
    assert (record.state, record.digest, record.source) == ("confirmed", digest, "registry")
    assert records(notified, repo, 21)["feat"].state == "expected"  # not pushed (yet)

    notified.hook("Merge Request Hook", mr_hook(repo, iid=5, source_branch="feat", action="merge"))
    notified.tick()
    notified.tick(advance=GRACE + 1)
    assert "mr-5" not in tags(registry, repo)


def test_notification_before_the_pipeline_hook_joins_it_later(notified, registry, project):
    repo = project.path
    digest = push_image(registry, repo, ["mr-6", "keep"])
    wait_notified(notified, repo, "mr-6")
    notified.tick()
    assert notified.store.records_of_pipeline(repo, 22) == []

    notified.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=22, ref="feat6", mr_iid=6, sha=SHA,
                                                 status="running"))
    notified.tick()
    record = records(notified, repo, 22)["mr-6"]
    assert (record.state, record.digest, record.source) == ("confirmed", digest, "registry")

    notified.hook("Merge Request Hook", mr_hook(repo, iid=6, source_branch="feat6", action="close"))
    notified.tick()
    notified.tick(advance=GRACE + 1)
    assert tags(registry, repo) == ["keep"]


def test_a_push_no_pipeline_expects_is_an_observation_never_ownership(notified, registry, project):
    repo = project.path
    push_image(registry, repo, ["mr-7", "hand-made"])
    wait_notified(notified, repo, "hand-made")
    notified.tick()
    assert notified.store.db.execute("SELECT COUNT(*) FROM push_records").fetchone()[0] == 0

    # every trigger that could name those tags comes, and none of them takes what no pipeline pushed
    notified.hook("Merge Request Hook", mr_hook(repo, iid=7, source_branch="hand-made", action="merge"))
    notified.hook("Push Hook", push_hook(repo, ref="hand-made", deleted=True))
    notified.tick()
    notified.tick(advance=GRACE + 1)
    notified.tick(advance=3 * 3600)
    assert tags(registry, repo) == ["hand-made", "mr-7"]
    assert notified.store.list_plans() == []


def test_a_re_push_by_the_pipeline_updates_the_digest_it_owns(notified, registry, project):
    # A retried job pushes the same tag again: the image the pipeline leaves on the tag is its own.
    repo = project.path
    notified.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=23, ref="feat", mr_iid=8, sha=SHA,
                                                 status="running"))
    notified.tick()
    push_image(registry, repo, ["mr-8"])
    wait_notified(notified, repo, "mr-8")
    notified.tick()
    second = push_image(registry, repo, ["mr-8"])
    wait_notified(notified, repo, "mr-8", second)
    notified.tick()
    assert records(notified, repo, 23)["mr-8"].digest == second

    notified.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=23, ref="feat", mr_iid=8, sha=SHA))
    notified.hook("Merge Request Hook", mr_hook(repo, iid=8, source_branch="feat", action="merge"))
    notified.tick()
    notified.tick(advance=GRACE + 1)
    assert "mr-8" not in tags(registry, repo)


def test_an_older_observation_is_not_a_new_pipelines_push(notified, registry, project):
    # mr-9 was pushed by pipeline 24; pipeline 25 of the same MR starts and pushes its own image.
    # Pipeline 25 owns the image it pushed, not the one it found on the tag when it started.
    repo = project.path
    notified.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=24, ref="feat9", mr_iid=9, sha=SHA))
    notified.tick()
    first = push_image(registry, repo, ["mr-9"])
    wait_notified(notified, repo, "mr-9")
    notified.tick()
    notified.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=25, ref="feat9", mr_iid=9, sha=SHA,
                                                 status="running"))
    notified.tick()
    second = push_image(registry, repo, ["mr-9"])
    wait_notified(notified, repo, "mr-9", second)
    notified.tick()
    assert first != second
    assert records(notified, repo, 25)["mr-9"].digest == second

    notified.hook("Merge Request Hook", mr_hook(repo, iid=9, source_branch="feat9", action="merge"))
    notified.tick()
    notified.tick(advance=GRACE + 1)
    assert "mr-9" not in tags(registry, repo)


def test_registry_notifications_need_the_token(notified, registry, project):
    client = notified.client
    envelope = {"events": [{"action": "push", "target": {
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "repository": project.path,
        "tag": "x", "digest": "sha256:" + "a" * 64}}]}
    assert client.post("/webhooks/registry", json=envelope).status_code == 401
    assert client.post("/webhooks/registry", json=envelope,
                       headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.post("/webhooks/registry", json=envelope,
                     headers={"Authorization": f"Bearer {registry.notification_token}"})
    assert ok.status_code == 202


# -- ttl on patterns ------------------------------------------------------------------------------------------

def test_ttl_pattern_records_its_ttl_and_nothing_else_ends_it(janitor, registry, project):
    j = janitor([entry(project)], registry=registry_section(registry))
    repo = project.path
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=31, ref="ttl", mr_iid=10, sha=SHA,
                                          status="running"))
    j.tick()
    push_image(registry, repo, ["preview-c0ffee12", "mr-10"])
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=31, ref="ttl", mr_iid=10, sha=SHA))
    j.hook("Merge Request Hook", mr_hook(repo, iid=10, source_branch="ttl", action="merge"))
    j.hook("Push Hook", push_hook(repo, ref="ttl", deleted=True))
    j.tick()
    j.tick(advance=GRACE + 1)
    assert tags(registry, repo) == ["preview-c0ffee12"]  # merge, delete, finish: none is its end

    j.tick(advance=2 * 3600 - GRACE)
    j.tick(advance=GRACE + 1)
    assert tags(registry, repo) == []
