"""Due plans to registry writes: the only code that untags.

For each due plan: the bulk guard on first run (S7, unless an admin approved it), the hourly budget
(S7, deferred to the next hour, never dropped; held in storage while the batch runs, so the untags other
workers' running plans of the project are about to send count against it too), the guards re-checked at
run time (S2, S4, S6), then the registry client, which re-checks the digest immediately before each write
(S3) and writes tag-only (S5).
Dry-run is decided at the single point of write: the client is told, and sends no write at all.

Before any registry request for a plan, the project's token is asked what it was granted (read from the
token itself, free while it is cached): a token that may not untag there (GitLab leaves ``delete`` out
of tokens without the api scope and the Maintainer role) fails every untag of the plan as
``no_delete_permission`` with nothing sent; so does a 403 from GitLab's API (``gitlab-api`` method) in
the client's results. The project is then flagged in storage with the fix, and for the rest of the tick
its other due plans fail the same way without a request: each untag is retryable once the token is
fixed, and the next tick asks the token again. A dry run reports the finding on its ``dry_run`` untags
instead of failing them. The flag is cleared when an untag of the project is done (or a dry run finds
the token good).

A plan is claimed by this worker process (``lease.Holder``) for ``LEASE_SECONDS`` and its lease is renewed
while the plan runs (``lease.LeaseKeeper``); a plan found taken over meanwhile is left to its new holder
with nothing more written. Each manifest is stored with its untag before the registry write that
removes the tag (the client's ``on_saved``, called from the client's untag lanes as each tag is guarded),
so the audit survives an interruption at any point; the outcomes of a repository's batch are stored
together, in one transaction, once the client returns (an interruption before that leaves them pending,
with their manifests, and the next run finishes them). A
plan run again after an interruption hands each pending untag's stored manifest back to the client
(``UntagRequest.saved``), which finishes what the interrupted run started: a tag left parked on a
placeholder, or already gone, is ``done`` with that manifest. When the guards now keep a tag whose
untag was cut short, the tag is put back. On its first tick a worker takes back at once the plans a dead
worker process of this machine left running (``Holder.outlived``); any other holder's plan waits for
its lease.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol

from daemon.config import ProjectSettings, Settings
from daemon.domain.model import NO_DELETE_PERMISSION, Plan, Trigger, Untag
from daemon.domain.patterns import is_protected
from daemon.domain.planner import Decision, PlannedUntag, bulk_guard, live_owner
from daemon.domain.policy import BUDGET_WINDOW, LEASE_SECONDS, in_scope, next_hour
from daemon.execute.lease import Holder, LeaseKeeper, LeaseLost, this_process
from daemon.plan.planning import LiveRefs, policy_for
from daemon.registry.errors import NoDeletePermissionError, RestoreConflictError
from daemon.registry.failures import failure_detail, failure_parts, failure_reason
from daemon.registry.types import Manifest, OnSaved, UntagRequest, UntagResult
from daemon.store import Store

log = logging.getLogger(__name__)


class ProjectRegistryLike(Protocol):
    def head(self, repository: str, ref: str) -> str | None: ...

    def untag(self, requests_: Sequence[UntagRequest], *, method: str = "auto", dry_run: bool = False,
              on_saved: OnSaved | None = None) -> list[UntagResult]: ...

    def get_manifest(self, repository: str, ref: str) -> Manifest | None: ...

    def restore(self, repository: str, tag: str, manifest: Manifest) -> None: ...

    def tag_count(self, repository: str) -> int | None: ...

    def untag_refusal(self, repository: str, method: str = "auto") -> NoDeletePermissionError | None: ...


RegistryFactory = Callable[[str, ProjectSettings], ProjectRegistryLike | None]


#: A failed untag's reason when the project has no ``registry_token`` to untag with.
NO_REGISTRY_TOKEN = ("no_registry_token: this project has no registry_token configured; add one to its entry, "
                     "then retry the untag")


class ManifestNotKept(Exception):
    """A manifest could not be stored before its write: the plan stops there, as if interrupted."""


def plan_fields(plan: Plan) -> dict[str, object]:
    """The log fields of a line about ``plan``."""
    return {"project": plan.project_path, "plan": plan.id}


class Executor:
    def __init__(self, settings: Settings, store: Store, registries: RegistryFactory,
                 clock: Callable[[], float], live_refs: LiveRefs | None = None,
                 holder: Holder | None = None, beat: Callable[[], None] | None = None,
                 working_on: Callable[[int | None], None] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.registries = registries
        self.clock = clock
        self.live_refs = live_refs or LiveRefs(store, None, clock)
        self.holder = holder or this_process()
        #: Shows the worker's progress (its heartbeat): called on each plan, untag and stored manifest.
        self._beat = beat
        #: Told the plan this worker runs (and None when it is over), for the list of workers.
        self._working_on = working_on
        #: Projects found this tick to hold a token that may not untag, with what was found.
        self._refused: dict[str, NoDeletePermissionError] = {}
        self._lease: LeaseKeeper | None = None
        self._started = False

    def run_due(self, limit: int = 50) -> int:
        ran = 0
        self._refused = {}
        if not self._started:
            self._started = True
            ran += self._take_back()
        for plan in self.store.due_plans(self.clock(), limit):
            claim = self.holder.new_claim()
            if self.store.claim_plan(plan.id, self.clock(), LEASE_SECONDS, claim):
                self._run_held(plan, claim)
                ran += 1
        return ran

    def _take_back(self) -> int:
        """Run at once the plans a worker process of this machine that is gone left running."""
        taken = 0
        for plan_id, held_by in self.store.running_plan_holders():
            earlier = Holder.parse(held_by)
            if earlier is None or not self.holder.outlived(earlier):
                continue
            claim = self.holder.new_claim()
            plan = self.store.get_plan(plan_id)
            if plan is None or not self.store.take_back_plan(plan_id, held_by, claim, self.clock(), LEASE_SECONDS):
                continue
            log.warning("plan %s was left running by worker process %s on %s, which is gone; resuming it now",
                        plan_id, earlier.pid, earlier.host, extra=plan_fields(plan))
            self._run_held(plan, claim)
            taken += 1
        return taken

    def _run_held(self, plan: Plan, claim: str) -> None:
        with LeaseKeeper(self.store, plan.id, claim, self.clock) as lease:
            self._lease = lease
            if self._working_on is not None:
                self._working_on(plan.id)
            try:
                self.run_plan(plan)
            except LeaseLost as exc:
                log.warning("%s; leaving it to that worker", exc, extra=plan_fields(plan))
            except ManifestNotKept:
                log.exception("plan %s stopped before a write; it resumes when its lease runs out", plan.id,
                              extra=plan_fields(plan))
            finally:
                self._lease = None
                if self._working_on is not None:
                    self._working_on(None)

    def _keep_lease(self) -> None:
        """Renew the running plan's lease when due; ``LeaseLost`` when another worker holds it now. Each
        call is progress, shown by a beat of the worker's heartbeat."""
        if self._beat is not None:
            self._beat()
        if self._lease is not None:
            self._lease.keep()

    def run_plan(self, plan: Plan) -> None:
        now = self.clock()
        project = self.settings.project_for(plan.project_path)
        if project is None:
            for untag in self.store.pending_untags(plan.id):
                self._finish(untag, "skipped", "cancelled", None, None)
            self.store.set_plan_state(plan.id, "cancelled", now, note="project no longer configured")
            log.info("plan %s cancelled: project no longer configured", plan.id, extra=plan_fields(plan))
            return
        registry = self.registries(plan.project_path, project)
        pending = self.store.pending_untags(plan.id)
        log.info("plan %s (%s) started: %d untag(s) pending%s", plan.id, plan.trigger_kind, len(pending),
                 " (dry run)" if project.dry_run else "", extra=plan_fields(plan))
        refused = self._token_refusal(plan.project_path, project, registry, pending)
        if refused is not None and (not project.dry_run or "pull" not in refused.granted):
            self._not_attempted(plan, project, pending)
            return
        # The bulk guard judges a plan before its first untag; a plan taken over from a worker that died
        # before getting that far (state ``running``, nothing started) is judged too.
        if not self.store.is_approved(plan.id) and (plan.state == "scheduled"
                                                    or not self.store.plan_progressed(plan.id)):
            reason = self._bulk_reason(plan, project, pending, registry)
            if reason:
                log.warning("plan %s held: %s", plan.id, reason, extra=plan_fields(plan))
                self.store.set_plan_state(plan.id, "held", now, note=reason)
                return
        # The budget is held in storage: the untags of the project's other running plans, on any worker,
        # count against it until they are done, so all workers together stay within it.
        holder = self._lease.holder if self._lease is not None else ""
        budget = self.store.hold_budget(plan.id, plan.project_path, holder, len(pending),
                                        project.max_untags_per_hour, now - BUDGET_WINDOW, now)
        if budget <= 0 and pending:
            self.store.set_plan_state(plan.id, "ready", now, due_at=next_hour(now),
                                      note="max_untags_per_hour reached; resumes next hour")
            log.info("plan %s: max_untags_per_hour reached; resumes next hour", plan.id, extra=plan_fields(plan))
            return
        batch, rest = pending[:budget], pending[budget:]
        try:
            self._run_untags(plan, project, registry, batch)
        finally:
            self.store.release_budget(plan.id, holder)
        self._keep_lease()
        if rest:
            self.store.set_plan_state(plan.id, "ready", self.clock(), due_at=next_hour(self.clock()),
                                      note=f"{len(rest)} untag(s) deferred by max_untags_per_hour")
            log.info("plan %s: %d untag(s) deferred to the next hour by max_untags_per_hour", plan.id, len(rest),
                     extra=plan_fields(plan))
        else:
            final = "dry_run" if project.dry_run else "done"
            self.store.set_plan_state(plan.id, final, self.clock())
            log.info("plan %s finished: %s", plan.id, final, extra=plan_fields(plan))

    def _token_refusal(self, project_path: str, project: ProjectSettings, registry: ProjectRegistryLike | None,
                       pending: Sequence[Untag]) -> NoDeletePermissionError | None:
        """Why the project's token may not untag: found earlier this tick, or read from the token now,
        one repository after another until one says so (GitLab grants per project)."""
        known = self._refused.get(project_path)
        if known is not None or registry is None:
            return known
        method = self.settings.registry.untag_method
        for repo in sorted({u.repository for u in pending}):
            try:
                refused = registry.untag_refusal(repo, method)
            except Exception as exc:  # the untags meet and report the same failure
                log.warning("the grants of %s's token on %s are unknown: %s", project_path, repo, exc)
                return None
            if refused is not None:
                self._flag(project_path, project, str(refused), refused)
                return refused
        return None

    def _not_attempted(self, plan: Plan, project: ProjectSettings, pending: Sequence[Untag]) -> None:
        """Every pending untag ends ``no_delete_permission`` (``dry_run`` in a dry run), nothing sent."""
        outcome = "dry_run" if project.dry_run else "failed"
        for untag in pending:
            self._finish(untag, outcome, NO_DELETE_PERMISSION, None, None)
        note = ("not attempted: the project's token may not untag (see the project's status); retry its "
                "untags once the token is fixed")
        self.store.set_plan_state(plan.id, "dry_run" if project.dry_run else "done", self.clock(), note=note)
        log.warning("plan %s finished, %s", plan.id, note, extra=plan_fields(plan))

    def _flag(self, project_path: str, project: ProjectSettings, detail: str,
              refused: NoDeletePermissionError | None) -> None:
        log.warning("project %s: %s", project_path, detail)
        self.store.set_project_problem(project_path, NO_DELETE_PERMISSION, detail, self.clock())
        if not project.dry_run:
            self._refused[project_path] = refused or NoDeletePermissionError(detail)

    def _bulk_reason(self, plan: Plan, project: ProjectSettings, pending: Sequence[Untag],
                     registry: ProjectRegistryLike | None) -> str | None:
        policy = policy_for(project, plan.project_path, None)
        decisions = [Decision(PlannedUntag(0, 0, u.repository, u.tag, u.expected_digest), "pending")
                     for u in pending]
        counts: dict[str, int] = {}
        if registry is not None:
            for repo in sorted({u.repository for u in pending}):
                try:
                    count = registry.tag_count(repo)
                except Exception as exc:  # unknown counts are not judged by fraction
                    log.warning("tag count of %s unavailable: %s", repo, exc)
                    count = None
                if count is not None:
                    counts[repo] = count
        return bulk_guard(decisions, counts, policy)

    def _recheck(self, plan: Plan, project: ProjectSettings, untag: Untag) -> str | None:
        """S2, S6 and S4 again at run time: config, refs and owners may have changed since planning."""
        pipeline = self.store.get_pipeline(plan.project_path, untag.pipeline_id)
        default_branch = pipeline.default_branch if pipeline else None
        policy = policy_for(project, plan.project_path, default_branch)
        if not in_scope(untag.repository, policy):
            return "out_of_scope"
        if is_protected(untag.tag, policy.protected_tags, default_branch):
            return "protected"
        record = self.store.record(untag.push_record_id)
        if record is None:
            return None
        others = self.store.owners_of([(untag.repository, untag.tag)])
        pipelines = self.store.pipelines(plan.project_path, {o.pipeline_id for o in others})
        refs = self.live_refs.states(plan.project_path, {o.ref for o in others if o.id != record.id}, project)
        trigger = self._trigger_of(plan)
        if live_owner(trigger, record, others, pipelines, refs, default_branch):
            return "live_owner"
        return None

    def _run_untags(self, plan: Plan, project: ProjectSettings, registry: ProjectRegistryLike | None,
                    untags: Sequence[Untag]) -> None:
        kept = self.store.saved_before_write(plan.id) if untags else {}
        methods = {untag_id: method for untag_id, (_, method) in kept.items() if method}
        by_repo: dict[str, list[tuple[Untag, UntagRequest]]] = defaultdict(list)
        for untag in untags:
            self._keep_lease()
            saved = kept[untag.id][0] if untag.id in kept else None
            reason = self._recheck(plan, project, untag)
            if reason:
                if saved is not None and registry is not None and not project.dry_run:
                    self._put_back(untag, reason, registry, saved)
                else:
                    self._finish(untag, "skipped", reason, None, None)
                continue
            if registry is None:
                self._finish(untag, "failed", NO_REGISTRY_TOKEN, None, None)
                continue
            # resumed: the tag was guarded at the digest of the manifest the interrupted run kept
            digest = untag.expected_digest or (saved.digest if saved is not None else "")
            if not digest:  # expected but never confirmed: resolve now
                try:
                    digest = registry.head(untag.repository, untag.tag) or ""
                except Exception as exc:
                    self._finish(untag, "failed", failure_reason(exc), None, None, failure_detail(exc))
                    continue
                if not digest:
                    self._finish(untag, "skipped", "missing", None, None)
                    continue
            by_repo[untag.repository].append((untag, UntagRequest(untag.repository, untag.tag, digest, saved)))
        method = self.settings.registry.untag_method
        for repo, items in sorted(by_repo.items()):
            if plan.project_path in self._refused:  # GitLab's API refused the delete in an earlier repository
                for untag, _ in items:
                    self._finish(untag, "failed", NO_DELETE_PERMISSION, None, None)
                continue
            self._keep_lease()
            self.store.mark_started([untag.id for untag, _ in items], self.clock())
            try:
                results = registry.untag([req for _, req in items], method=method,  # type: ignore[union-attr]
                                         dry_run=project.dry_run, on_saved=self._saver(items, methods))
            except (LeaseLost, ManifestNotKept):
                raise
            except Exception as exc:
                log.exception("untag batch in %s failed", repo, extra=plan_fields(plan))
                self._keep_lease()
                for untag, _ in items:
                    self._finish(untag, "failed", failure_reason(exc), None, None, failure_detail(exc))
                continue
            self._keep_lease()
            with self.store.transaction():  # the batch's outcomes in one write: all of them, or none
                for (untag, _), result in zip(items, results, strict=True):
                    # a resumed untag finished without a write of its own was done by the method that wrote
                    written_by = result.method or (methods.get(untag.id) if result.outcome == "done" else None)
                    self._finish(untag, result.outcome, result.reason, written_by, result.saved, result.detail)
            self._judge_token(plan.project_path, project, results)

    def _saver(self, items: Sequence[tuple[Untag, UntagRequest]], methods: dict[int, str]) -> OnSaved:
        """The client's ``on_saved``: each manifest is stored with its untag before the write is sent."""
        untags = {(untag.repository, untag.tag): untag for untag, _ in items}

        def on_saved(request: UntagRequest, manifest: Manifest, method: str) -> None:
            self._keep_lease()
            untag = untags[(request.repository, request.tag)]
            try:
                stored = self.store.save_untag_manifest(untag.id, manifest, method)
            except Exception as exc:
                raise ManifestNotKept(f"could not store the manifest of {untag.repository}:{untag.tag} before "
                                      f"untagging it: {exc}") from exc
            if not stored:
                raise ManifestNotKept(f"untag {untag.id} of plan {untag.plan_id} is not pending any more")
            methods[untag.id] = method

        return on_saved

    def _put_back(self, untag: Untag, reason: str, registry: ProjectRegistryLike, saved: Manifest) -> None:
        """An interrupted untag whose tag the guards keep now: the tag goes back to the kept manifest
        (unless it was pushed again since), and the untag is skipped for ``reason``."""
        try:
            registry.restore(untag.repository, untag.tag, saved)
        except RestoreConflictError:
            pass  # pushed again since: that image holds the tag
        except Exception as exc:
            self._finish(untag, "failed", f"put_back_failed: the guards keep the tag now ({reason}), but putting "
                                          "back the tag an interrupted untag had removed failed "
                                          f"({failure_parts(exc)[1]}); retry the untag", None, None,
                         failure_detail(exc))
            return
        self._finish(untag, "skipped", reason, None, None)

    def _judge_token(self, project_path: str, project: ProjectSettings, results: Sequence[UntagResult]) -> None:
        """Flag the project when its token may not untag; clear the flag once an untag proves it can."""
        refused = next((r for r in results if r.reason == NO_DELETE_PERMISSION), None)
        if refused is not None:
            self._flag(project_path, project, refused.detail or "the project's token may not untag", None)
        elif (any(r.outcome == "done" or (r.outcome == "dry_run" and r.reason is None) for r in results)
              and self.store.clear_project_problem(project_path, NO_DELETE_PERMISSION)):
            log.info("project %s: its token untags again", project_path)

    def _finish(self, untag: Untag, outcome: str, reason: str | None, method: str | None,
                saved: Manifest | None, detail: str | None = None) -> None:
        """Store how ``untag`` ended. A failure is logged at WARNING with ``detail`` (the whole exception
        behind the stored one-sentence ``reason``)."""
        now = self.clock()
        self.store.finish_untag(untag.id, outcome=outcome, reason=reason, method=method, saved=saved,
                                now=now)
        if outcome == "done":
            self.store.mark_tag_gone(untag.push_record_id, now)
        elif outcome == "skipped" and reason == "missing" and self._settled(untag):
            self.store.mark_untagged(untag.push_record_id, now)
        fields = {"project": untag.project_path, "plan": untag.plan_id, "untag": untag.id}
        if outcome == "failed":
            log.warning("untag %s of plan %s (%s:%s) failed: %s%s", untag.id, untag.plan_id, untag.repository,
                        untag.tag, reason, f" [{detail}]" if detail else "", extra=fields)
            return
        log.info("untag %s %s:%s -> %s%s", untag.id, untag.repository, untag.tag, outcome,
                 f" ({reason})" if reason else "", extra=fields)

    def _settled(self, untag: Untag) -> bool:
        """A missing tag ends its record, unless the record is only expected and its pipeline still
        runs: that tag may yet be pushed, and the trigger is raised again when the pipeline finishes."""
        record = self.store.record(untag.push_record_id)
        if record is None or record.state != "expected":
            return True
        pipeline = self.store.get_pipeline(record.project_path, record.pipeline_id)
        return pipeline is None or pipeline.finished

    def _trigger_of(self, plan: Plan) -> Trigger:
        return self.store.plan_trigger(plan.id)
