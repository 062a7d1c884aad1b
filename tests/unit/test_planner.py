"""The pure planner: which records a trigger selects and every guard decision it makes."""

import pytest

from daemon.config import DEFAULT_PROTECTED
from daemon.domain.model import Pipeline, PlannedUntag, PushRecord, Trigger
from daemon.domain.planner import (
    DELETION_CLOCK_SLACK,
    DELETION_DELIVERY_WINDOW,
    Decision,
    ProjectPolicy,
    awaiting_resolution,
    bulk_guard,
    created_after_deletion,
    decide,
    in_scope,
    selects,
)

P = "group/app"
POLICY = ProjectPolicy(P, DEFAULT_PROTECTED, "main", None, max_tags_per_plan=3, max_repository_fraction=0.5)
_ids = iter(range(1, 10_000))


def rec(tag, *, pipeline=1, lifetime="merge_request", ref="feature", mr=7, repo=P, digest="sha256:a",
        state="confirmed", ttl=None, at=0.0, project=P):
    return PushRecord(next(_ids), project, pipeline, repo, tag, digest, lifetime, state, "pattern", ref, mr,
                      at, ttl)


MERGED = Trigger("merge_request_merged", P, "k", 100.0, ref="feature", mr_iid=7)
FORK_MERGED = Trigger("merge_request_merged", P, "k", 100.0, ref=None, mr_iid=7)
DELETED = Trigger("branch_deleted", P, "k", 100.0, ref="feature")
FINISHED = Trigger("pipeline_finished", P, "k", 100.0, pipeline_id=5)
TTL = Trigger("ttl_expired", P, "k", 100.0)


@pytest.mark.parametrize(("trigger", "record", "selected"), [
    (MERGED, rec("mr-7"), True),
    (MERGED, rec("mr-7", mr=None), True),  # a branch pipeline on the MR's source branch
    (MERGED, rec("mr-8", mr=8, ref="other"), False),
    (MERGED, rec("feature", lifetime="branch"), False),
    (MERGED, rec("c", lifetime="pipeline"), False),
    (FORK_MERGED, rec("x", mr=None), False),  # fork: the same branch name here is not the MR's
    (FORK_MERGED, rec("mr-7"), True),
    (DELETED, rec("feature", lifetime="branch"), True),
    (DELETED, rec("mr-7"), True),
    (DELETED, rec("c", lifetime="pipeline"), False),
    (DELETED, rec("other", lifetime="branch", ref="other"), False),
    (FINISHED, rec("cache-5", lifetime="pipeline", pipeline=5), True),
    (FINISHED, rec("cache-6", lifetime="pipeline", pipeline=6), False),
    (FINISHED, rec("mr-7", pipeline=5), False),
    (TTL, rec("p", lifetime="ttl", ttl=50.0, at=40.0), True),
    (TTL, rec("p", lifetime="ttl", ttl=50.0, at=60.0), False),
    (MERGED, rec("mr-7", state="dropped"), False),
    (MERGED, rec("mr-7", state="untagged"), False),
    (MERGED, rec("mr-7", project="group/other"), False),
])
def test_selects(trigger, record, selected):
    assert selects(trigger, record) is selected


def outcomes(decisions):
    return {d.untag.tag: (d.outcome, d.reason) for d in decisions}


def test_protected_and_out_of_scope_are_skipped():
    candidates = [rec("mr-7"), rec("latest"), rec("main"), rec("v1.2"), rec("x", repo="group/other"),
                  rec("y", repo="group/application")]
    got = outcomes(decide(MERGED, candidates, candidates, {}, {"feature": False}, POLICY))
    assert got == {"mr-7": ("pending", None), "latest": ("skipped", "protected"),
                   "main": ("skipped", "protected"), "v1.2": ("skipped", "protected"),
                   "x": ("skipped", "out_of_scope"), "y": ("skipped", "out_of_scope")}


def test_configured_images_limit_scope():
    policy = ProjectPolicy(P, (), None, (P, P + "/builder"))
    assert in_scope(P + "/builder", policy) and not in_scope(P + "/other", policy)


def test_live_owner_on_another_live_ref_keeps_the_tag():
    mine = rec("both-tag", pipeline=1)
    other_live = rec("both-tag", pipeline=2, ref="develop", mr=None)
    pipelines = {2: Pipeline(P, 2, "develop", "s", "success")}
    got = decide(MERGED, [mine], [mine, other_live], pipelines, {"develop": True}, POLICY)
    assert outcomes(got) == {"both-tag": ("skipped", "live_owner")}
    # the same owner on a deleted branch does not keep it
    got = decide(MERGED, [mine], [mine, other_live], pipelines, {"develop": False}, POLICY)
    assert outcomes(got) == {"both-tag": ("pending", None)}


def test_unknown_ref_counts_as_live_and_default_branch_and_git_tags_are_live():
    mine = rec("both-tag")
    for other, pipeline in [
        (rec("both-tag", pipeline=3, ref="unknown", mr=None), Pipeline(P, 3, "unknown", "s", "success")),
        (rec("both-tag", pipeline=4, ref="main", mr=None), Pipeline(P, 4, "main", "s", "success")),
        (rec("both-tag", pipeline=5, ref="v1", mr=None), Pipeline(P, 5, "v1", "s", "success", is_tag=True)),
    ]:
        got = decide(MERGED, [mine], [mine, other], {pipeline.pipeline_id: pipeline}, {"v1": False}, POLICY)
        assert outcomes(got) == {"both-tag": ("skipped", "live_owner")}, other.ref


def test_pipelines_a_trigger_covers_are_not_each_others_live_owners():
    # After a merge the source branch may still exist: its own pipelines' tags still go.
    a = rec("mr-7", pipeline=1)
    b = rec("mr-7", pipeline=2, mr=None)  # branch pipeline on the source branch
    got = decide(MERGED, [a, b], [a, b], {}, {"feature": True}, POLICY)
    assert outcomes(got) == {"mr-7": ("pending", None)}


def test_newest_pipelines_digest_speaks_for_a_tag():
    old = rec("feature", pipeline=1, lifetime="branch", digest="sha256:old")
    new = rec("feature", pipeline=9, lifetime="branch", digest="sha256:new")
    (decision,) = decide(DELETED, [old, new], [old, new], {}, {}, POLICY)
    assert decision.untag.expected_digest == "sha256:new" and decision.untag.pipeline_id == 9


def _pending(n, repo=P):
    return [Decision(PlannedUntag(i, 1, repo, f"t{i}", "sha256:a"), "pending") for i in range(n)]


def test_bulk_guard_size_and_fraction():
    assert bulk_guard(_pending(3), {}, POLICY) is None
    assert "max_tags_per_plan" in bulk_guard(_pending(4), {}, POLICY)
    policy = ProjectPolicy(P, (), None, None, max_tags_per_plan=100, max_repository_fraction=0.5)
    assert bulk_guard(_pending(6), {P: 10}, policy) is not None  # 6/10 > 0.5
    assert bulk_guard(_pending(5), {P: 10}, policy) is None  # exactly half is allowed
    assert bulk_guard(_pending(6), {P: 9}, policy) is None  # under 10 tags: fraction not applied
    assert bulk_guard(_pending(6), {}, policy) is None  # unknown count: not judged by fraction


@pytest.mark.parametrize(("state", "status", "waits"), [
    ("expected", "success", True),  # HEAD first: a tag never pushed is never planned
    ("expected", "failed", True),
    ("expected", "running", False),  # it may still be pushed: planned, resolved when the plan runs
    ("confirmed", "success", False),
    ("dropped", "success", False),
])
def test_an_expected_record_of_a_finished_pipeline_waits_for_its_resolution(state, status, waits):
    pipeline = Pipeline(P, 1, "feature", "s", status)
    assert awaiting_resolution(rec("mr-7", state=state), pipeline) is waits
    assert awaiting_resolution(rec("mr-7", state=state), None) is False


DELETED_AT = 1_700_000_000.0


@pytest.mark.parametrize(("created_at", "after"), [
    (DELETED_AT + DELETION_CLOCK_SLACK + 1, True),
    (DELETED_AT + 3600, True),
    (DELETED_AT + DELETION_CLOCK_SLACK, None),  # GitLab's clock may run a little ahead
    (DELETED_AT, None),
    (DELETED_AT - 60, None),  # the deletion's hook may have waited in GitLab's queue
    (DELETED_AT - DELETION_DELIVERY_WINDOW, None),
    (DELETED_AT - DELETION_DELIVERY_WINDOW - 1, False),
    (DELETED_AT - 86400, False),
    (None, None),  # no creation time: GitLab must say whether the branch exists
])
def test_only_a_pipeline_created_after_a_deletion_shows_the_branch_came_back(created_at, after):
    assert created_after_deletion(created_at, DELETED_AT) is after
