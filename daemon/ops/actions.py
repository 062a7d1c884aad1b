"""What operators do, the same for the admin API, the dashboard and the CLI: approve a held plan, reject a
held or scheduled one (not once a worker has started it), ask for a restore or a retry of an untag (the
worker carries requests out, ``daemon.execute.operator``), and ask for a catch-up from the GitLab API (a
worker runs it, ``daemon.ingest.catchup``).

Each action checks that it may be done and raises ``ActionRefused`` (HTTP status, error code, what to
do instead) when not. Must not: call the registry or GitLab.
"""

from __future__ import annotations

from daemon.config import Settings
from daemon.domain.model import Plan
from daemon.store import OperatorRequest, ReconcileRequest, Store, UntagView


class ActionRefused(Exception):
    """An operator action that cannot be done: HTTP status, error code and what to do instead."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def decide_plan(store: Store, plan_id: int, approve: bool, who: str, now: float) -> Plan:
    """Approve a held plan (held -> ready, due now), or reject a held or scheduled plan (-> cancelled:
    none of its tags is untagged). A plan the worker has started cannot be rejected any more."""
    decided = store.decide_plan(plan_id, approve, who, now)
    if decided is not None:
        return decided
    plan = store.get_plan(plan_id)
    if plan is None:
        raise ActionRefused(404, "not_found", f"there is no plan {plan_id}")
    if approve:
        raise ActionRefused(409, "not_held", f"plan {plan_id} is {plan.state}, not held; only held plans "
                            "can be approved")
    if plan.state in ("running", "scheduled"):  # scheduled yet not cancelled: a worker holds its lease
        raise ActionRefused(409, "not_cancellable", f"plan {plan_id} is {plan.state} and a worker has started "
                            "it: its untags cannot be stopped now; once it is done, restore any tag you need "
                            f"back (GET /api/v1/plans/{plan_id} lists its untags)")
    raise ActionRefused(409, "not_cancellable", f"plan {plan_id} is {plan.state}; only held or scheduled "
                        "plans can be rejected")


def ask_restore(store: Store, untag_id: int, who: str, now: float) -> tuple[OperatorRequest, bool]:
    """Record a restore request for an untag that was carried out and whose manifest was saved."""
    return _ask(store, "restore", untag_id, who, now)


def ask_retry(store: Store, untag_id: int, who: str, now: float) -> tuple[OperatorRequest, bool]:
    """Record a retry request for a failed untag."""
    return _ask(store, "retry", untag_id, who, now)


def _ask(store: Store, kind: str, untag_id: int, who: str, now: float) -> tuple[OperatorRequest, bool]:
    view = store.untag_view(untag_id)
    if view is None:
        raise ActionRefused(404, "not_found", f"there is no untag {untag_id}")
    refused = why_not_restorable(view) if kind == "restore" else why_not_retryable(view)
    if refused is not None:
        raise ActionRefused(409, *refused)
    return store.add_request(kind, untag_id, who, now)


def ask_reconcile(settings: Settings, store: Store, project: str | None, who: str,
                  now: float) -> tuple[ReconcileRequest, bool]:
    """Record a catch-up from the GitLab API for one project (or every one) that a worker runs with the
    daemon's settings. The project must be one reconcile covers: an exact entry, or a project the ledger
    holds below a ``group/*`` entry."""
    if project is not None and not reconcilable(settings, store, project):
        raise ActionRefused(404, "unknown_project",
                            f"{project[:200]} is not configured (or, under a group/* entry, not in the ledger); "
                            "name a project of the config's projects, or none for all")
    return store.add_reconcile_request(project, who, now)


def reconcilable(settings: Settings, store: Store, project: str) -> bool:
    """Whether a catch-up covers ``project`` (as ``daemon.ingest.catchup.Reconciler.projects`` lists them)."""
    entry = settings.project_for(project)
    if entry is None:
        return False
    if "*" not in entry.path:
        return entry.path == project
    return project in store.ledger_projects()


def why_not_restorable(view: UntagView) -> tuple[str, str] | None:
    """(error code, message) when this untag cannot be restored; None when a restore may be asked."""
    u = view.untag
    if u.outcome != "done":
        return "not_restorable", (f"untag {u.id} ({u.repository}:{u.tag}) was not carried out (outcome "
                                  f"{u.outcome}); the tag was never removed")
    if view.restored_at is not None:
        return "already_restored", f"{u.repository}:{u.tag} was already restored"
    if view.manifest_size is None:
        return "no_saved_manifest", (f"no manifest of {u.repository}:{u.tag} was saved before the untag; push "
                                     "the image again from its pipeline")
    return None


def why_not_retryable(view: UntagView) -> tuple[str, str] | None:
    if view.untag.outcome != "failed":
        return "not_failed", (f"untag {view.untag.id} is {view.untag.outcome}, not failed; only failed untags "
                              "can be retried")
    return None
