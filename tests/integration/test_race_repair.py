"""Race repair on the real registry: a tag pushed again while the janitor was untagging it (the registry's
notification says when) is put back at the pushed digest, and what came of it is recorded once, by
whichever worker finished it first."""

from __future__ import annotations

from datetime import UTC, datetime

from support.images import digest_of, push_image, tags
from support.janitor import live_entry, mr_hook, pipeline_hook, registry_section

from daemon.execute.repair import RaceRepair

GRACE = 60
NOTIFY = "notify-race"


def _live(janitor, registry, gitlab, project):
    entry = live_entry(project, grace_period=f"{GRACE}s",
                       tags=[{"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"}])
    return janitor([entry], registry=registry_section(registry), gitlab={"url": gitlab.url},
                   server={"registry_notification_token": NOTIFY})


def _notify_push(j, repository, tag, digest, at):
    """The registry's notification of a push of repository:tag -> digest at ``at`` (as distribution sends it)."""
    event = {"action": "push", "timestamp": datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
             "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                        "repository": repository, "tag": tag, "digest": digest},
             "request": {"useragent": "docker/27.0.3 go/go1.21"}}
    answer = j.client.post("/webhooks/registry", json={"events": [event]},
                           headers={"Authorization": f"Bearer {NOTIFY}"})
    assert answer.status_code == 202, answer.get_json()


def _repairs(j):
    return j.store.db.execute("SELECT id, tag, digest, state, note FROM repairs ORDER BY id").fetchall()


def _merged_and_untagged(j, registry, project):
    repo = project.path
    push_image(registry, repo, ["mr-5"])
    j.hook("Pipeline Hook", pipeline_hook(repo, pipeline_id=50, ref="topic", mr_iid=5))
    j.tick()
    j.hook("Merge Request Hook", mr_hook(repo, iid=5, source_branch="topic", action="merge"))
    j.tick()
    j.tick(advance=GRACE + 1)
    assert "mr-5" not in tags(registry, repo)
    return j.clock()  # the fake clock stood still while the untag ran: its guard-to-write window is now


def test_a_push_inside_the_untag_window_is_put_back(janitor, registry, gitlab, project):
    j = _live(janitor, registry, gitlab, project)
    repo = project.path
    untagged_at = _merged_and_untagged(j, registry, project)
    # Someone pushed mr-5 again while the janitor swapped it out: its manifest is in the registry (here
    # held by another tag), the tag itself went with the untag.
    pushed = push_image(registry, repo, ["holder"])
    _notify_push(j, repo, "mr-5", pushed, untagged_at)
    j.tick()
    j.tick()

    assert digest_of(registry, repo, "mr-5") == pushed
    [(_, tag, digest, state, _note)] = _repairs(j)
    assert (tag, digest, state) == ("mr-5", pushed, "repaired")


def test_a_push_outside_the_window_is_left_alone(janitor, registry, gitlab, project):
    j = _live(janitor, registry, gitlab, project)
    repo = project.path
    untagged_at = _merged_and_untagged(j, registry, project)
    pushed = push_image(registry, repo, ["holder"])
    _notify_push(j, repo, "mr-5", pushed, untagged_at + 3600)  # an hour after: a push of its own, no race
    j.tick()
    j.tick()

    assert "mr-5" not in tags(registry, repo)
    assert _repairs(j) == []


class _SawItPending:
    """The store as a second worker saw it: the repair still pending (it read the list before the first
    worker finished), everything else live."""

    def __init__(self, store, pending):
        self._store, self._pending = store, pending

    def pending_repairs(self, limit=50):
        return list(self._pending)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_the_first_worker_to_finish_a_repair_has_its_outcome_kept(janitor, registry, gitlab, project):
    """Two workers may both pick a pending repair (several workers on one store): what the second one finds
    (the tag already back) must not overwrite what the first one did."""
    j = _live(janitor, registry, gitlab, project)
    repo = project.path
    untagged_at = _merged_and_untagged(j, registry, project)
    pushed = push_image(registry, repo, ["holder"])
    _notify_push(j, repo, "mr-5", pushed, untagged_at)
    first = j.worker.repair
    seen: list = []
    original = first.run

    def run_and_remember_what_was_pending():
        seen.extend(j.store.pending_repairs())
        return original()

    first.run = run_and_remember_what_was_pending
    j.tick()  # the notification makes the repair, and this worker puts the tag back
    assert seen and _repairs(j)[0][3] == "repaired"

    second = RaceRepair(j.settings, _SawItPending(j.store, seen), first.registries, j.clock)
    assert second.run() == 0
    [(_, _, _, state, note)] = _repairs(j)
    assert state == "repaired" and "again" in note
    assert digest_of(registry, repo, "mr-5") == pushed
