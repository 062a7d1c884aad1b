"""Which tags a trigger removes, and every guard decision that can be made without the registry.

Pure: takes the trigger, the ledger's candidate records, the other owners of the same tags, what is
known of their refs, and the project's policy; returns decisions. ``now`` is always passed in. The
registry-side guard (S3 digest re-check) and the write live in ``daemon.registry``; the worker glues.

Where the rules live: S1 (ledger only) is structural, only push records are ever candidates;
S2 ``protected`` and S6 ``out_of_scope`` in :func:`decide`; S4 ``live_owner`` in :func:`live_owner`;
S7's size rules in :func:`bulk_guard`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from daemon.domain.model import Decision, Pipeline, PlannedUntag, PushRecord, Trigger
from daemon.domain.patterns import is_protected
from daemon.domain.policy import ProjectPolicy, in_scope


def covers(trigger: Trigger, pipeline_id: int, ref: str, mr_iid: int | None) -> bool:
    """Whether a pipeline is one the trigger ends (whatever its tags' lifetimes)."""
    kind = trigger.kind
    if kind in ("merge_request_merged", "merge_request_closed"):
        return (mr_iid is not None and mr_iid == trigger.mr_iid) or (
            trigger.ref is not None and ref == trigger.ref
        )
    if kind in ("branch_deleted", "ci_request"):  # a CI job speaks for every pipeline of its ref
        return ref == trigger.ref
    return pipeline_id == trigger.pipeline_id


def selects(trigger: Trigger, record: PushRecord) -> bool:
    """Whether ``record``'s lifetime ends with ``trigger`` (SPEC section 5's table)."""
    if record.project_path != trigger.project_path or record.state not in ("expected", "confirmed"):
        return False
    kind = trigger.kind
    if kind in ("merge_request_merged", "merge_request_closed"):
        return record.lifetime == "merge_request" and covers(
            trigger, record.pipeline_id, record.ref, record.mr_iid
        )
    if kind == "branch_deleted":
        return record.lifetime in ("branch", "merge_request") and record.ref == trigger.ref
    if kind == "pipeline_finished":
        return record.lifetime == "pipeline" and record.pipeline_id == trigger.pipeline_id
    if kind == "ttl_expired":
        return (
            record.ttl_seconds is not None
            and record.recorded_at + record.ttl_seconds <= trigger.raised_at
        )
    return False  # ci_request plans are built from one named record, not selected


def awaiting_resolution(record: PushRecord, pipeline: Pipeline | None) -> bool:
    """A record still only expected of a pipeline that finished: the tag is resolved (HEAD) and the record
    confirmed or dropped before any plan takes it, so a tag the pipeline never pushed is never planned."""
    return record.state == "expected" and pipeline is not None and pipeline.finished


#: How far GitLab's clock (a pipeline's ``created_at``) may run ahead of the janitor's (when a branch
#: deletion was received) without a pipeline created before the deletion passing for one created after.
DELETION_CLOCK_SLACK = 10.0
#: How long before a deletion was received the branch may have been deleted (a hook waits in GitLab's
#: queue): a pipeline created within this window may be either side of the deletion.
DELETION_DELIVERY_WINDOW = 3600.0


def created_after_deletion(created_at: float | None, deleted_at: float) -> bool | None:
    """Whether a pipeline was created after its branch's deletion (received at ``deleted_at``): True, False,
    or None when its creation time is unknown or too close to tell (GitLab must say whether the branch
    exists). Only a pipeline created after the deletion shows the branch came back."""
    if created_at is None:
        return None
    if created_at > deleted_at + DELETION_CLOCK_SLACK:
        return True
    if created_at < deleted_at - DELETION_DELIVERY_WINDOW:
        return False
    return None


def ref_is_live(pipeline: Pipeline | None, ref: str, refs: Mapping[str, bool | None],
                default_branch: str | None) -> bool:
    """Open MR source branch, existing branch, default branch or git tag. Unknown counts as live."""
    if pipeline is not None and pipeline.is_tag:
        return True
    if default_branch and ref == default_branch:
        return True
    live = refs.get(ref)
    return True if live is None else live


def live_owner(trigger: Trigger, record: PushRecord, others: Iterable[PushRecord],
               pipelines: Mapping[int, Pipeline], refs: Mapping[str, bool | None],
               default_branch: str | None) -> PushRecord | None:
    """S4: another owner of the same repository:tag that the trigger does not cover, on a live ref."""
    for other in others:
        if other.id == record.id or other.state not in ("expected", "confirmed"):
            continue
        if (other.repository, other.tag) != (record.repository, record.tag):
            continue
        if trigger.kind == "ttl_expired":
            if other.pipeline_id == record.pipeline_id:
                continue
        elif covers(trigger, other.pipeline_id, other.ref, other.mr_iid):
            continue
        if ref_is_live(pipelines.get(other.pipeline_id), other.ref, refs, default_branch):
            return other
    return None


def decide(trigger: Trigger, candidates: Sequence[PushRecord], others: Sequence[PushRecord],
           pipelines: Mapping[int, Pipeline], refs: Mapping[str, bool | None],
           policy: ProjectPolicy) -> list[Decision]:
    """One decision per distinct repository:tag the trigger ends, in a stable order."""
    decisions: dict[tuple[str, str], Decision] = {}
    owners: dict[tuple[str, str], list[PushRecord]] = {}
    for other in others:  # each candidate is checked against its own tag's owners only
        owners.setdefault((other.repository, other.tag), []).append(other)
    for record in sorted(candidates, key=lambda r: (r.repository, r.tag, -r.pipeline_id)):
        key = (record.repository, record.tag)
        if key in decisions:
            continue  # the newest pipeline's record of a tag speaks for it
        untag = PlannedUntag(record.id, record.pipeline_id, record.repository, record.tag,
                             record.digest or "")
        if not in_scope(record.repository, policy):
            decisions[key] = Decision(untag, "skipped", "out_of_scope")
        elif is_protected(record.tag, policy.protected_tags, policy.default_branch):
            decisions[key] = Decision(untag, "skipped", "protected")
        elif live_owner(trigger, record, owners.get(key, ()), pipelines, refs, policy.default_branch):
            decisions[key] = Decision(untag, "skipped", "live_owner")
        else:
            decisions[key] = Decision(untag, "pending")
    return list(decisions.values())


def bulk_guard(decisions: Sequence[Decision], repository_tag_counts: Mapping[str, int],
               policy: ProjectPolicy) -> str | None:
    """S7's size rules: why the plan must wait for an admin, or None. Fractions apply to repositories
    holding at least 10 tags; a repository whose count is unknown is not judged by fraction."""
    pending = [d for d in decisions if d.outcome == "pending"]
    if len(pending) > policy.max_tags_per_plan:
        return f"{len(pending)} untags exceed max_tags_per_plan ({policy.max_tags_per_plan})"
    per_repo: dict[str, int] = {}
    for d in pending:
        per_repo[d.untag.repository] = per_repo.get(d.untag.repository, 0) + 1
    for repo, count in sorted(per_repo.items()):
        total = repository_tag_counts.get(repo)
        if total is not None and total >= 10 and count / total > policy.max_repository_fraction:
            return (f"{count} of {total} tags of {repo} exceed max_repository_fraction "
                    f"({policy.max_repository_fraction})")
    return None
