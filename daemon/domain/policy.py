"""The rules the janitor holds itself to, as values and pure functions: which repositories a project may
touch (S6), the sizes past which a plan waits for an admin (S7, in ``planner.bulk_guard``), how long a
claim on work lasts, and when the worker counts as alive.

Each fact is defined here once; the planner, the executor, the CI gate, the probes and the status page
all read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.domain.names import in_project_path

#: How long a worker's claim on a plan or an operator request lasts before another tick may take it over.
#: A plan's holder renews it while it works, so this bounds how long the work of a worker that died waits.
LEASE_SECONDS = 60.0
#: How often the holder of a plan renews its lease while it works on it.
LEASE_RENEW_SECONDS = LEASE_SECONDS / 4
#: The storage key of the worker's heartbeat (the time of its last sign of life).
HEARTBEAT_KEY = "worker_heartbeat"
#: How often a working worker writes its heartbeat at most. The work itself beats (the start and end of a
#: tick, each untag, each registry request and each slice of a wait for the rate limit): a worker that stops
#: making progress stops beating, and nothing beats for it.
HEARTBEAT_BEAT_SECONDS = 2.0
#: The least time a heartbeat stays fresh: one registry or GitLab request may wait out its timeout (30 s at
#: most) with no progress to show, and a liveness probe must not restart a worker for that.
HEARTBEAT_LIMIT_FLOOR = 60.0


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
