"""TTL expiry: the one trigger the janitor raises on its own clock (``ttl_expired``).

Owns: which projects hold expired TTL tags, and the trigger key that makes one plan per project per
minute. Must not: untag (the plan waits its grace period and runs in the executor like any other).
"""

from __future__ import annotations

from daemon.domain.model import Trigger
from daemon.plan.planning import Planner


def raise_ttl_triggers(planner: Planner, now: float) -> int:
    """Raise ``ttl_expired`` for every project holding a TTL tag whose time has passed; returns how many
    plans were made."""
    raised = 0
    for project_path in planner.store.ttl_projects(now):
        key = f"ttl_expired:{project_path}:{int(now // 60)}"
        if planner.raise_trigger(Trigger("ttl_expired", project_path, key, now), now) is not None:
            raised += 1
    return raised
