"""Trigger -> stored plan: the step between what ended and what the executor will untag.

Owns: finding a trigger's candidates in the ledger, asking what is known of the other owners' refs
(``LiveRefs``, which may ask GitLab about refs never seen), the pure planner's decisions, and storing
them as one plan per trigger key (records that arrive later join the waiting plan or make a follow-up).
Must not: call the registry or untag (the executor does), or parse events (``daemon.ingest`` does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from daemon.config import ProjectSettings, Settings
from daemon.domain.model import PushRecord, Trigger, TriggerKind
from daemon.domain.planner import awaiting_resolution, decide, selects
from daemon.domain.policy import ProjectPolicy
from daemon.store import Store

log = logging.getLogger(__name__)

class RefLookup(Protocol):
    """Asks GitLab whether a branch exists: True/False, or None when it cannot tell. ``fresh`` asks
    GitLab now rather than trusting an answer kept from a while ago."""

    def __call__(self, project_path: str, ref: str, project: ProjectSettings, *,
                 fresh: bool = False) -> bool | None: ...


def mr_trigger(project_path: str, iid: int, state: str, source_branch: str | None, now: float) -> Trigger:
    """The trigger a merged or closed MR raises; ``source_branch`` None for a fork's MR."""
    kind: TriggerKind = "merge_request_merged" if state == "merged" else "merge_request_closed"
    return Trigger(kind, project_path, f"{kind}:{project_path}:{iid}", now, ref=source_branch, mr_iid=iid)


def branch_trigger(project_path: str, ref: str, now: float) -> Trigger:
    """The trigger a deleted branch raises (one plan per project and branch)."""
    return Trigger("branch_deleted", project_path, f"branch_deleted:{project_path}:{ref}", now, ref=ref)


def policy_for(settings: ProjectSettings, project_path: str, default_branch: str | None) -> ProjectPolicy:
    """The pure planner's view of one project's settings."""
    return ProjectPolicy(project_path=project_path, protected_tags=settings.protected_tags,
                         default_branch=default_branch, repositories=settings.repositories(project_path),
                         max_tags_per_plan=settings.max_tags_per_plan,
                         max_repository_fraction=settings.max_repository_fraction)


class LiveRefs:
    """What is known of refs' liveness (S4): from events first, then GitLab for refs never seen (its
    answer is remembered in the ledger), else unknown, which the planner treats as live."""

    def __init__(self, store: Store, lookup: RefLookup | None, clock: Callable[[], float]) -> None:
        self.store = store
        self.lookup = lookup
        self.clock = clock

    def states(self, project_path: str, refs: set[str], project: ProjectSettings) -> dict[str, bool | None]:
        states = self.store.ref_states(project_path, refs)
        if self.lookup is None:
            return states
        for ref, live in states.items():
            if live is None:
                found = self.branch_exists(project_path, ref, project)
                if found is not None:
                    self.store.set_ref(project_path, ref, found, self.clock())
                    states[ref] = found
        return states

    def branch_exists(self, project_path: str, ref: str, project: ProjectSettings, *,
                      fresh: bool = False) -> bool | None:
        """GitLab's word on whether branch ``ref`` exists now; None when it cannot be asked. A merge
        request's own ref (``refs/merge-requests/...``) is no branch: the branches API is not asked.
        ``fresh``: an answer GitLab gave before a deletion the ledger saw must not count."""
        if self.lookup is None or ref.startswith("refs/"):
            return None
        return self.lookup(project_path, ref, project, fresh=fresh)


class Planner:
    """Turns triggers into stored plans; shared by event intake, catch-up, the CI gate and TTL expiry."""

    def __init__(self, settings: Settings, store: Store, live_refs: LiveRefs) -> None:
        self.settings = settings
        self.store = store
        self.live_refs = live_refs

    def raise_trigger(self, trigger: Trigger, now: float) -> int | None:
        """Plan what ``trigger`` ends; one plan per trigger key. Returns the plan id, if any."""
        candidates = [r for r in self.store.candidates(trigger) if selects(trigger, r)]
        return self.plan(trigger, candidates, now)

    def plan(self, trigger: Trigger, candidates: Sequence[PushRecord], now: float) -> int | None:
        """Decide on ``candidates`` and store the plan. Records that arrive after the trigger's plan was
        made join it while it waits, or make a follow-up plan once it has run. A record still only
        expected of a finished pipeline waits for its resolution (which raises the pipeline's triggers
        again once its tags are known): a tag the pipeline never pushed is never planned. Only where
        the janitor may not read the registry at all (no credential, or one refused) is it planned as it
        is, resolved (or failed, saying why) when the plan runs."""
        project = self.settings.project_for(trigger.project_path)
        if project is None or not candidates:
            return None
        expected = {c.pipeline_id for c in candidates if c.state == "expected"}
        if expected:
            finished = self.store.pipelines(trigger.project_path, expected)
            unreadable = self.store.unresolvable_pipelines(trigger.project_path, expected)
            candidates = [c for c in candidates if c.pipeline_id in unreadable
                          or not awaiting_resolution(c, finished.get(c.pipeline_id))]
            if not candidates:
                return None
        others = self.store.owners_of((r.repository, r.tag) for r in candidates)
        pipelines = self.store.pipelines(trigger.project_path, {o.pipeline_id for o in others})
        candidate_ids = {c.id for c in candidates}
        refs = self.live_refs.states(trigger.project_path,
                                     {o.ref for o in others if o.id not in candidate_ids}, project)
        default_branch = next((p.default_branch for p in pipelines.values() if p.default_branch), None)
        decisions = decide(trigger, candidates, others, pipelines, refs,
                           policy_for(project, trigger.project_path, default_branch))
        wait = 0.0 if trigger.kind == "ci_request" else project.grace_period
        existing = self.store.plan_state(trigger.key)
        if existing is not None:
            plan_id, state = existing
            if self.store.join_plan(plan_id, decisions, now) or state in ("scheduled", "held"):
                return plan_id
            # Tags the earlier plan found missing may have been pushed since: only those it settled
            # otherwise stay out of the follow-up.
            covered = {(u.repository, u.tag) for u in self.store.plan_untags(plan_id)
                       if not (u.outcome == "skipped" and u.reason == "missing")}
            decisions = [d for d in decisions if (d.untag.repository, d.untag.tag) not in covered]
            if not decisions:
                return plan_id
            trigger = replace(trigger, key=f"{trigger.key}:after:{max(r.pipeline_id for r in candidates)}")
        plan_id, created = self.store.create_plan(trigger, decisions, state="scheduled",
                                                  due_at=now + wait, now=now)
        if created:
            log.info("plan %s: %s on %s, %d candidate(s), due in %ss", plan_id, trigger.kind,
                     trigger.project_path, len(decisions), int(wait))
        return plan_id
