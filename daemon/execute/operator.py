"""Operator requests, carried out by the worker: restore an untagged tag, retry a failed untag.

The web process and the CLI only record these requests (the web never calls the registry); the worker
takes them each tick, before running due plans, so a retried untag runs in the same tick.

- restore: put the tag back at the manifest saved just before the untag, through the project's own
  registry credential (``ProjectRegistry.restore``). The registry refuses when the tag was pushed again
  since (nothing is overwritten) or its blobs are gone (garbage collected): the request fails with the
  registry's reason. The push record stays untagged, so the janitor never removes the restored tag again.
  A project's ``dry_run`` does not block a restore: it undoes an earlier write an operator asked to undo.
- retry: a failed untag goes back to pending and its plan is due now; the executor does the rest,
  with every guard (S2-S7) checked again.

Must not: untag anything itself, or touch an untag that is not in the state the request needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from daemon.config import Settings
from daemon.domain.model import Untag
from daemon.domain.policy import LEASE_SECONDS
from daemon.execute.executor import RegistryFactory
from daemon.registry.errors import RegistryError, TransientRegistryError
from daemon.registry.failures import failure_detail, failure_reason
from daemon.registry.types import Manifest
from daemon.store import OperatorRequest, Store

log = logging.getLogger(__name__)


def carry_out_requests(settings: Settings, store: Store, registries: RegistryFactory,
                       clock: Callable[[], float], limit: int = 20) -> int:
    """Carry out the open operator requests; returns how many finished."""
    finished = 0
    for req in store.claim_requests(clock(), LEASE_SECONDS, limit):
        if req.kind == "restore":
            state, reason = _restore(settings, store, registries, req, clock)
        elif req.kind == "retry":
            state, reason = _retry(store, req, clock)
        else:
            state, reason = "failed", f"unknown_kind: this worker does not know requests of kind {req.kind[:40]!r}"
        store.finish_request(req.id, state, reason, clock())
        found = store.get_untag(req.untag_id)
        log.info("%s of untag %s (request %s by %s): %s (%s)", req.kind, req.untag_id, req.id,
                 req.requested_by, state, reason,
                 extra={"untag": req.untag_id, "project": found[0].project_path if found else None,
                        "plan": found[0].plan_id if found else None})
        finished += 1
    return finished


def _log_failure(untag: Untag, req: OperatorRequest, exc: Exception) -> None:
    log.warning("restore of untag %s (request %s) failed: %s", untag.id, req.id, failure_detail(exc),
                extra={"untag": untag.id, "project": untag.project_path, "plan": untag.plan_id})


def _retry(store: Store, req: OperatorRequest, clock: Callable[[], float]) -> tuple[str, str]:
    plan_id = store.requeue_failed_untag(req.untag_id, clock())
    if plan_id is None:
        found = store.get_untag(req.untag_id)
        outcome = found[0].outcome if found else "gone"
        return "failed", f"not_failed: untag {req.untag_id} is no longer failed (outcome: {outcome}); nothing to retry"
    return "done", f"untag {req.untag_id} is pending again; plan {plan_id} runs now"


def _restore(settings: Settings, store: Store, registries: RegistryFactory, req: OperatorRequest,
             clock: Callable[[], float]) -> tuple[str, str]:
    found = store.get_untag(req.untag_id)
    if found is None:
        return "failed", f"not_found: untag {req.untag_id} does not exist"
    untag, saved = found
    image = f"{untag.repository}:{untag.tag}"
    view = store.untag_view(untag.id)
    if view is not None and view.restored_at is not None:
        return "done", f"{image} was already restored"
    if untag.outcome != "done" or saved is None:
        return "failed", (f"not_restorable: {image} was not untagged (outcome {untag.outcome}); there is nothing "
                          "to restore" if untag.outcome != "done" else f"no_saved_manifest: no manifest of "
                          f"{image} was saved before the untag; push the image again from its pipeline")
    project = settings.project_for(untag.project_path)
    if project is None:
        return "failed", (f"project_not_configured: project {untag.project_path} is no longer configured; add it "
                          "back to restore")
    registry = registries(untag.project_path, project)
    restore = getattr(registry, "restore", None)
    if registry is None or restore is None:
        return "failed", (f"no_registry_token: no registry_token is configured for {untag.project_path}; the tag "
                          "cannot be written")
    try:
        restore(untag.repository, untag.tag, Manifest(saved.digest, saved.media_type, saved.body))
    except TransientRegistryError as exc:
        _log_failure(untag, req, exc)
        return "failed", f"{failure_reason(exc)}; it may be back shortly: ask for the restore again"
    except RegistryError as exc:  # RestoreError among them: its message says what to do instead
        _log_failure(untag, req, exc)
        return "failed", failure_reason(exc)
    except Exception as exc:
        log.exception("restore of untag %s failed", untag.id,
                      extra={"untag": untag.id, "project": untag.project_path, "plan": untag.plan_id})
        return "failed", failure_reason(exc)
    store.mark_restored(untag.id, clock())
    return "done", f"{image} points at {saved.digest} again"
