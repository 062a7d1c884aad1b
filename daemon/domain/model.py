"""The product's nouns as frozen values: pipelines, push records, triggers, plans and untags.

No behaviour beyond trivial derived properties, no I/O. Everything crossing a module boundary inside the
janitor is one of these (or a plain str/int), never a database row or an HTTP payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

#: A configured tag pattern lives until its pipeline, merge request or branch ends ...
PatternLifetime = Literal["pipeline", "merge_request", "branch"]
#: ... or for a ``ttl`` duration.
Lifetime = Literal[PatternLifetime, "ttl"]
TriggerKind = Literal[
    "pipeline_finished",
    "merge_request_merged",
    "merge_request_closed",
    "branch_deleted",
    "ttl_expired",
    "ci_request",
]
PlanState = Literal["scheduled", "ready", "running", "done", "held", "cancelled", "dry_run"]
#: What became of an untag the registry client was asked for ...
UntagOutcome = Literal["done", "skipped", "failed", "dry_run"]
#: ... and of an untag in a plan, which waits as ``pending`` until then.
Outcome = Literal["pending", UntagOutcome]
SkipReason = Literal["protected", "superseded", "live_owner", "missing", "out_of_scope"]
UntagMethod = Literal["auto", "oci", "placeholder", "gitlab-api"]
#: A failed untag's reason when the project's token may not untag (no registry ``delete``, or GitLab's API
#: forbade the tag delete): nothing was written, and it is also what the project is flagged with.
NO_DELETE_PERMISSION = "no_delete_permission"
#: What can be wrong with a project's setup, found while running and shown until it is fixed.
ProjectProblemKind = Literal["no_delete_permission"]
#: Why an authentic GitLab delivery was answered ``200 ignored`` (GitLab disables a hook that answers 4xx):
#: it names a project no entry configures, or it is of a kind the janitor has no use for.
IgnoredReason = Literal["unconfigured_project", "unused_kind"]

PATTERN_LIFETIMES: tuple[PatternLifetime, ...] = get_args(PatternLifetime)
LIFETIMES: tuple[Lifetime, ...] = get_args(Lifetime)
TRIGGER_KINDS: tuple[TriggerKind, ...] = get_args(TriggerKind)
PLAN_STATES: tuple[PlanState, ...] = get_args(PlanState)
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
UNTAG_METHODS: tuple[UntagMethod, ...] = get_args(UntagMethod)
PROJECT_PROBLEM_KINDS: tuple[ProjectProblemKind, ...] = get_args(ProjectProblemKind)
IGNORED_REASONS: tuple[IgnoredReason, ...] = get_args(IgnoredReason)

FINISHED_STATUSES = frozenset({"success", "failed", "canceled", "skipped"})


@dataclass(frozen=True)
class Manifest:
    """A manifest exactly as the registry stored it: the bytes are what its digest is computed over.
    Saved before every untag, so that a restore can put the tag back."""

    digest: str
    media_type: str
    body: bytes


@dataclass(frozen=True)
class Pipeline:
    project_path: str
    pipeline_id: int
    ref: str
    sha: str
    status: str
    iid: int | None = None
    is_tag: bool = False
    mr_iid: int | None = None
    default_branch: str | None = None
    created_at: float = 0.0

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


@dataclass(frozen=True)
class PushRecord:
    """Repository R, tag T (digest D) was pushed, or is expected to be pushed, by pipeline P."""

    id: int
    project_path: str
    pipeline_id: int
    repository: str
    tag: str
    digest: str | None
    lifetime: Lifetime
    state: Literal["expected", "confirmed", "dropped", "untagged"]
    source: Literal["pattern", "ci", "registry"]
    ref: str
    mr_iid: int | None
    recorded_at: float
    ttl_seconds: float | None = None


@dataclass(frozen=True)
class Trigger:
    """An event that ends lifetimes. ``key`` makes the same trigger raised twice one plan."""

    kind: TriggerKind
    project_path: str
    key: str
    raised_at: float
    ref: str | None = None
    mr_iid: int | None = None
    pipeline_id: int | None = None


@dataclass(frozen=True)
class RefState:
    """What the janitor knows of a ref's liveness: ``live`` True/False, or None when unknown."""

    ref: str
    live: bool | None
    is_tag: bool = False


@dataclass(frozen=True)
class PlannedUntag:
    push_record_id: int
    pipeline_id: int
    repository: str
    tag: str
    expected_digest: str


@dataclass(frozen=True)
class Decision:
    """The planner's verdict on one candidate: untag it (``outcome='pending'``) or skip with a reason."""

    untag: PlannedUntag
    outcome: Literal["pending", "skipped"]
    reason: SkipReason | None = None


@dataclass(frozen=True)
class Plan:
    id: int
    project_path: str
    trigger_kind: str
    trigger_key: str
    state: PlanState
    created_at: float
    due_at: float
    untag_count: int = 0
    note: str = ""


@dataclass(frozen=True)
class Untag:
    id: int
    plan_id: int
    project_path: str
    repository: str
    tag: str
    expected_digest: str
    outcome: Outcome
    reason: str | None
    created_at: float
    finished_at: float | None = None
    method: str | None = None
    trigger_kind: str | None = None
    push_record_id: int = 0
    pipeline_id: int = 0


@dataclass(frozen=True)
class Job:
    """A running CI job as GitLab vouches for it: project, pipeline and ref come from GitLab only."""

    id: int
    project_id: int
    project_path: str
    pipeline_id: int
    ref: str
    sha: str
    is_tag: bool
    status: str
    #: When the job started, as GitLab says (epoch seconds; None when GitLab does not say): a CI record
    #: needs evidence of a push after it (SPEC 14).
    started_at: float | None = None


@dataclass(frozen=True)
class TagDetails:
    """A registry tag as GitLab's container registry API details it: the manifest ``digest`` and
    ``created_at`` (epoch seconds): the image's creation time as its config says (GitLab's docs: "the time
    of the manifest creation, not the time of tag push"), or as GitLab's own registry database keeps it.
    Either is None when GitLab does not say."""

    digest: str | None
    created_at: float | None
