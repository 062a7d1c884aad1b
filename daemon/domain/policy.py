"""The rules the janitor holds itself to, as values and pure functions: which repositories a project may
touch (S6), the sizes past which a plan waits for an admin (S7, in ``planner.bulk_guard``), how long a
claim on work lasts, and when the worker counts as alive.

Each fact is defined here once; the planner, the executor, the CI gate, the probes and the status page
all read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.domain.names import in_project_path

#: How long a worker's claim (on a plan, an operator request or a reconcile request) lasts before another
#: worker may take it over. The holder renews it while it works, so this bounds how long the work of a worker
#: that died waits: with several workers, a SIGKILLed worker's plan is taken over within this and a tick.
LEASE_SECONDS = 20.0
#: How often the holder of a claim renews its lease while it works on it.
LEASE_RENEW_SECONDS = LEASE_SECONDS / 4
#: The storage key of the newest heartbeat of any worker (the time of its last sign of life).
HEARTBEAT_KEY = "worker_heartbeat"
#: A worker whose heartbeat is older than this is no longer listed (``/readyz``, status, the dashboard),
#: and its row is pruned: each start of a worker process is a new worker.
WORKER_FORGET_SECONDS = 600.0
#: How often a working worker writes its heartbeat at most. The work itself beats (the start and end of a
#: tick, each untag, each registry request and each slice of a wait for the rate limit): a worker that stops
#: making progress stops beating, and nothing beats for it.
HEARTBEAT_BEAT_SECONDS = 2.0
#: The least time a heartbeat stays fresh: one registry or GitLab request may wait out its timeout (30 s at
#: most) with no progress to show, and a liveness probe must not restart a worker for that.
HEARTBEAT_LIMIT_FLOOR = 60.0
#: How long a GitLab delivery's body identifies it: before GitLab 17.4 a manual resend carries no
#: ``Idempotency-Key`` and a new ``X-Gitlab-Event-UUID``, and only its body shows it is the same delivery.
SAME_BODY_WINDOW = 24 * 3600.0
#: The shortest ``storage.retention.events``: a stored delivery is what finds a resend of it (by its delivery
#: key, or by its body within ``SAME_BODY_WINDOW``), so events are kept at least that long (and an hour).
MIN_EVENT_RETENTION = max(3600.0, SAME_BODY_WINDOW)
#: The shortest ``storage.retention.plans``: finished plans, their audit rows and saved manifests (what a
#: restore puts back) are kept at least a day.
MIN_PLAN_RETENTION = 86400.0


@dataclass(frozen=True)
class ProjectPolicy:
    project_path: str
    protected_tags: tuple[str, ...]
    default_branch: str | None
    repositories: tuple[str, ...] | None  # None: any repository below the project path
    max_tags_per_plan: int = 25
    max_repository_fraction: float = 0.5


def in_scope(repository: str, policy: ProjectPolicy) -> bool:
    """S6: only the project's own repositories (``path`` or ``path/...``), and only configured images."""
    if not in_project_path(policy.project_path, repository):
        return False
    return policy.repositories is None or repository in policy.repositories


def heartbeat_limit(poll_interval: float) -> float:
    """How old the worker's heartbeat may be before the worker counts as stale. A tick beats every
    ``HEARTBEAT_BEAT_SECONDS`` while it makes progress, however long it runs; between ticks the worker is idle
    for a poll interval. So the limit is three poll intervals, and never under ``HEARTBEAT_LIMIT_FLOOR``."""
    return max(HEARTBEAT_LIMIT_FLOOR, 3 * poll_interval)


def heartbeat_fresh(age: float | None, poll_interval: float) -> bool:
    return age is not None and age <= heartbeat_limit(poll_interval)


#: ``max_untags_per_hour`` counts the untags of a project done in the last this many seconds.
BUDGET_WINDOW = 3600.0


def budget_spent(max_untags_per_hour: int, done_in_window: int) -> bool:
    """S7: whether a project's hourly budget leaves no untag to run now."""
    return max_untags_per_hour - done_in_window <= 0


def next_hour(now: float) -> float:
    """When a plan deferred by ``max_untags_per_hour`` is due again: the next full hour (UTC)."""
    return (now // 3600 + 1) * 3600
