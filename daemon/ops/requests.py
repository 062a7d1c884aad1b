"""Whether an operator may ask for a restore or a retry of an untag, and why not: the same answer for
the admin API, the dashboard and the CLI. The worker carries requests out (``daemon.execute.operator``)."""

from __future__ import annotations

from daemon.store.admin import UntagView


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
