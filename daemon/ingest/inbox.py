"""Inbox to ledger to triggers: the worker's first half, all storage, no registry writes.

Each inbox event is applied inside one transaction together with marking it processed, and every step
is idempotent (upserts, unique keys), so a crash at any point re-applies cleanly (S8, S9). The only
registry call here is the read-only manifest HEAD that resolves a finished pipeline's expected tags,
done after the transaction; a failure there leaves the records expected, resolved again at run time.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from daemon.config import ProjectSettings, Settings
from daemon.domain.events import (
    IgnoredEvent,
    MalformedEvent,
    MergeRequestEvent,
    PipelineEvent,
    PushEvent,
    RegistryPush,
    delivery_id,
    parse_gitlab,
    parse_registry,
)
from daemon.domain.model import Pipeline, PushRecord, Trigger
from daemon.domain.patterns import PipelineVars, expand
from daemon.domain.planner import created_after_deletion
from daemon.errors import RegistryRefused
from daemon.plan.planning import Planner, branch_trigger, mr_trigger
from daemon.store import InboxEvent, Store

log = logging.getLogger(__name__)
# A registry notification may precede the pipeline hook's creation time by this much (clock skew
# between GitLab and the registry) and still count as that pipeline's push.
OBSERVATION_SLACK = 120.0
# How far around an untag's guard-to-write window a notified push still counts as inside it: the
# registry's clock and the janitor's may differ a little.
RACE_SLACK = 5.0
#: Merge request states that raise a trigger (``merge_request_merged``, ``merge_request_closed``) ...
ENDED_STATES = ("merged", "closed")
#: ... and the states of an open MR, whose next merge or close raises it anew.
OPEN_STATES = ("opened", "reopened")
#: How often (seconds) the expected records of finished pipelines left unresolved are looked for again.
RESOLVE_RETRY = 60.0
#: How much of the error an unusable event is set aside with is kept.
UNUSABLE_REASON_CHARS = 500
#: Records whose failed resolution was logged at WARNING, remembered per process (then DEBUG): the oldest
#: are forgotten first beyond this many.
REPORTED_UNRESOLVED = 10_000


class ManifestReader(Protocol):
    def head(self, repository: str, ref: str) -> str | None:
        """The digest ``ref`` points at in ``repository``, or None when the registry holds no such tag.

        A reader that cannot ask raises: ``daemon.errors.RegistryUnavailable`` when asking again later may
        work (unreachable, 5xx, 429), ``daemon.errors.RegistryRefused`` when it will not (credential
        refused). The registry client's own errors are both (its permanent errors are refusals); the
        worker asks again later after any other failure."""
        ...


#: A project's reader, from its path and settings; None when the janitor holds no credential for it.
ReaderFactory = Callable[[str, ProjectSettings], ManifestReader | None]


def pipeline_variables(store: Store, p: Pipeline) -> PipelineVars:
    """What GitLab's ``$CI_*`` variables are in pipeline ``p``: a merge-request pipeline's ref name and
    slug are its source branch's, as its hook named it, else as its MR's hooks did."""
    source_branch = None
    if p.mr_iid is not None:
        source_branch = (store.pipeline_source_branch(p.project_path, p.pipeline_id)
                         or store.merge_request_branch(p.project_path, p.mr_iid))
    return PipelineVars(ref=p.ref, sha=p.sha, pipeline_id=p.pipeline_id, pipeline_iid=p.iid, is_tag=p.is_tag,
                        mr_iid=p.mr_iid, source_branch=source_branch)


class Ingest:
    def __init__(self, settings: Settings, store: Store, planner: Planner, readers: ReaderFactory,
                 clock: Callable[[], float]) -> None:
        self.settings = settings
        self.store = store
        self.planner = planner
        self.readers = readers
        self.clock = clock
        self._resolve_after_id = 0
        self._next_resolve_sweep = 0.0
        self._reported: OrderedDict[int, None] = OrderedDict()

    # inbox ------------------------------------------------------------------------------------------
    def drain(self, limit: int = 500) -> int:
        """Apply pending inbox events in arrival order; returns how many were taken (applied, or set aside
        as unusable). A failure of storage itself stops the drain with the event still pending."""
        done = 0
        while done < limit:
            batch = self.store.pending_events(min(200, limit - done))
            if not batch:
                break
            for event in batch:
                self.apply(event)
                done += 1
        return done

    def apply(self, event: InboxEvent) -> None:
        """Apply one event in one transaction with marking it processed. Whatever applying it raises is the
        event's (a payload the ledger cannot use, a value storage cannot hold, a bug its shape reaches): its
        writes are undone, it is set aside as unusable with the error, and the events after it go on (SPEC
        14). A failure of storage itself (locked, I/O, the transaction gone) is no event's: it is raised,
        and the event stays pending for the next tick."""
        now = self.clock()
        to_resolve: list[tuple[str, int]] = []
        error: str | None = None
        with self.store.transaction():
            if not self.store.claim_event(event.id, now):  # another worker applied it meanwhile
                return
            try:
                # A savepoint of its own: an event that fails half-way leaves none of its writes behind.
                with self.store.transaction():
                    payload = json.loads(event.body)
                    if event.source == "registry":
                        for push in parse_registry(payload, event.received_at):
                            self.on_registry_push(push, now)
                    else:
                        parsed = parse_gitlab(event.headers.get("X-Gitlab-Event"), payload, event.received_at)
                        to_resolve = self.on_gitlab(parsed, now, event.received_at)
            except Exception as exc:
                if self.store.is_storage_failure(exc):
                    raise
                to_resolve = []
                error = unusable_reason(exc)
                log.error("inbox event %s (%s of %r) is unusable and set aside: %s", event.id, event.kind,
                          event.project_path, error, extra=_event_fields(event))
            self.store.mark_processed(event.id, now, error)
        if error is None:
            log.info("inbox event %s (%s) applied", event.id, event.kind, extra=_event_fields(event))
        for project_path, pipeline_id in to_resolve:
            self.resolve_pipeline(project_path, pipeline_id)

    def on_gitlab(self, event: object, now: float, received_at: float | None = None) -> list[tuple[str, int]]:
        if isinstance(event, PipelineEvent):
            return self.on_pipeline(event.pipeline, now, source_branch=event.source_branch,
                                    created_known=event.created_known)
        if isinstance(event, MergeRequestEvent):
            self.on_merge_request(event, now)
        elif isinstance(event, PushEvent):
            self.on_push(event, now, at=received_at)
        elif isinstance(event, IgnoredEvent):
            log.debug("ignored %s event", event.kind)
        return []

    # events -----------------------------------------------------------------------------------------
    def on_pipeline(self, p: Pipeline, now: float, *, source_branch: str | None = None,
                    created_known: bool = True) -> list[tuple[str, int]]:
        """A pipeline as a hook (or the API) describes it. ``source_branch``: a merge-request pipeline's
        source branch, which GitLab's ``$CI_COMMIT_REF_*`` name (a fork's MR pipeline runs here on
        ``refs/merge-requests/<iid>/head``); ``created_known``: whether ``p.created_at`` is GitLab's
        creation time rather than the arrival time. Returns the finished pipelines to resolve."""
        project = self.settings.project_for(p.project_path)
        if project is None:
            return []
        self.store.upsert_pipeline(p, now, source_branch=source_branch)
        stored = self.store.get_pipeline(p.project_path, p.pipeline_id) or p
        if not p.is_tag and not p.ref.startswith("refs/"):
            self.branch_has_pipeline(project, p, p.created_at if created_known else None, now)
        self.expect_tags(project, stored, now)
        if not stored.finished:
            return []
        self.raise_ended(stored, now)
        return [(p.project_path, p.pipeline_id)]

    def branch_has_pipeline(self, project: ProjectSettings, p: Pipeline, created_at: float | None,
                            now: float) -> None:
        """A pipeline on a branch shows the branch exists, unless the ledger saw the branch deleted: then
        only a pipeline created after the deletion (GitLab keeps running, and sending hooks of, the
        pipelines of a deleted branch), or GitLab's own word when the creation time cannot tell, shows
        it came back and cancels its pending deletion plan."""
        deleted_at = self.store.ref_deletion(p.project_path, p.ref)
        if deleted_at is not None:
            recreated = created_after_deletion(created_at, deleted_at)
            if recreated is None:
                recreated = self.planner.live_refs.branch_exists(p.project_path, p.ref, project, fresh=True) is True
            if not recreated:
                log.info("pipeline %s of %s was created before branch %s was deleted: the deletion holds",
                         p.pipeline_id, p.project_path, p.ref)
                return
        self.store.set_ref(p.project_path, p.ref, True, now)
        self.store.cancel_scheduled(p.project_path, kinds=["branch_deleted"], ref=p.ref, now=now,
                                    note=f"branch {p.ref} has a new pipeline ({p.pipeline_id})")

    def raise_ended(self, p: Pipeline, now: float) -> None:
        """Every trigger that ends lifetimes of this finished pipeline's tags: its own, and those raised
        before it finished (its MR merged or closed, its branch deleted), raised again so that what it
        pushed joins their plans or follows them (one plan per trigger key)."""
        self.planner.raise_trigger(Trigger("pipeline_finished", p.project_path,
                                   f"pipeline_finished:{p.project_path}:{p.pipeline_id}", now,
                                   ref=p.ref, pipeline_id=p.pipeline_id), now)
        for iid, state, branch in self.store.ended_merge_requests(p.project_path, p.mr_iid, p.ref):
            self.planner.raise_trigger(mr_trigger(p.project_path, iid, state, branch, now), now)
        if not p.is_tag and self.store.ref_deletion(p.project_path, p.ref) is not None:
            self.planner.raise_trigger(branch_trigger(p.project_path, p.ref, now), now)

    def expect_tags(self, project: ProjectSettings, p: Pipeline, now: float) -> None:
        """SPEC 4.3: each pattern expanded for this pipeline, in each configured repository, with the
        values GitLab gives its variables (a merge-request pipeline's ``$CI_COMMIT_REF_SLUG`` is its
        source branch's, whatever ref it runs on: as its hook named it, else as its MR's hooks did)."""
        repositories = project.repositories(p.project_path) or ()
        variables = pipeline_variables(self.store, p)
        for pattern in project.tags:
            tag = expand(pattern.pattern, variables)
            if tag is None:
                continue
            lifetime = "ttl" if pattern.ttl is not None else str(pattern.lifetime)
            for repository in repositories:
                seen = self.store.latest_observation(repository, tag, p.created_at - OBSERVATION_SLACK)
                self.store.add_record(project_path=p.project_path, pipeline=p, repository=repository,
                                      tag=tag, digest=seen, lifetime=lifetime, ttl_seconds=pattern.ttl,
                                      state="confirmed" if seen else "expected",
                                      source="registry" if seen else "pattern", now=now)

    def on_merge_request(self, mr: MergeRequestEvent, now: float) -> None:
        """Triggers come from the MR's state, whatever the action: the first hook (or catch-up) that
        shows it merged or closed raises that trigger, even when the ``merge``/``close`` delivery itself
        was lost and a later ``update``, ``approved`` or label change is the first to say so."""
        if self.settings.project_for(mr.project_path) is None:
            return
        known = self.store.merge_request_state(mr.project_path, mr.iid)
        raised = self.store.merge_request_trigger_raised(mr.project_path, mr.iid)
        state = {"merge": "merged", "close": "closed"}.get(mr.action, mr.state)
        if known == "merged" and state != "merged":
            return  # GitLab never reopens a merged MR: this hook was sent before the merge
        self.store.set_merge_request(mr.project_path, mr.iid, mr.source_branch, state,
                                     mr.source_project_id, mr.target_project_id, now)
        if mr.action == "reopen":
            self.store.cancel_scheduled(mr.project_path,
                                        kinds=["merge_request_merged", "merge_request_closed"],
                                        mr_iid=mr.iid, now=now, note=f"merge request !{mr.iid} reopened")
        if state not in ENDED_STATES:
            if raised is not None and state in OPEN_STATES:
                self.store.set_merge_request_trigger_raised(mr.project_path, mr.iid, None, now)
            return
        if mr.action in ("merge", "close") or known not in ENDED_STATES or raised != state:
            # A fork's source branch lives in another project: only the MR's own pipelines are covered.
            same_project = mr.source_project_id is None or mr.source_project_id == mr.target_project_id
            self.planner.raise_trigger(mr_trigger(mr.project_path, mr.iid, state,
                                                  mr.source_branch if same_project else None, now), now)
            self.store.set_merge_request_trigger_raised(mr.project_path, mr.iid, state, now)

    def on_push(self, push: PushEvent, now: float, *, at: float | None = None) -> None:
        """A branch pushed or deleted; ``at``: when the push hook was received (the deletion's time, to
        which pipelines' creation times are compared), else ``now``."""
        if push.is_tag or self.settings.project_for(push.project_path) is None:
            return
        self.store.set_ref(push.project_path, push.ref, not push.deleted, now,
                           deleted_at=(now if at is None else at) if push.deleted else None)
        if push.deleted:
            self.planner.raise_trigger(branch_trigger(push.project_path, push.ref, now), now)
        else:
            self.store.cancel_scheduled(push.project_path, kinds=["branch_deleted"], ref=push.ref, now=now,
                                        note=f"branch {push.ref} was pushed again")

    def on_registry_push(self, push: RegistryPush, now: float) -> None:
        """Attribute a pushed tag to the newest running pipeline expecting it; otherwise keep it as an
        observation only (proof the tag was pushed), never as ownership. A push that landed while
        the janitor was untagging that very tag is put back by the worker (a repair)."""
        if push.by_janitor:
            return
        self.store.add_observation(push.repository, push.tag, push.digest, push.at)
        for untag_id, _ in self.store.untags_in_window(push.repository, push.tag, push.at, RACE_SLACK):
            if self.store.add_repair(untag_id, push.repository, push.tag, push.digest, push.at, now):
                log.warning("%s:%s was pushed (%s) while untag %s ran; it will be put back",
                            push.repository, push.tag, push.digest, untag_id)
        for record in self.store.pattern_owners_of(push.repository, push.tag):
            pipeline = self.store.get_pipeline(record.project_path, record.pipeline_id)
            if pipeline is None:
                continue
            # A confirmed record of a pipeline still running follows its re-push (a retried job), and
            # corrects a digest taken from an observation older than the pipeline's own push; a
            # finished pipeline pushes nothing more.
            if record.state == "confirmed" and pipeline.finished:
                continue
            if record.digest == push.digest:
                return
            self.store.add_record(project_path=record.project_path, pipeline=pipeline,
                                  repository=push.repository, tag=push.tag, digest=push.digest,
                                  lifetime=record.lifetime, ttl_seconds=record.ttl_seconds,
                                  state="confirmed", source="registry", now=now)
            return

    # resolution -------------------------------------------------------------------------------------
    def resolve_ci_pushes(self, limit: int = 100) -> int:
        """Records still waiting for a digest. CI records without one, as janitors before SPEC 14 stored
        them (the CI gate reads the digest before it answers and stores none): HEAD the tag and record
        what it points at, so such records left in a database still end as confirmed or dropped. Then,
        at most every ``RESOLVE_RETRY`` seconds, the expected records of finished pipelines whose
        resolution failed or was interrupted (no plan takes them before it)."""
        resolved = 0
        for record in self.store.unresolved_ci_records(limit):
            project = self.settings.project_for(record.project_path)
            reader = self.readers(record.project_path, project) if project else None
            if reader is None:
                continue
            try:
                digest = reader.head(record.repository, record.tag)
            except Exception as exc:
                self.cannot_resolve(record, exc)
                continue
            self._reported.pop(record.id, None)
            with self.store.transaction():
                self.store.set_record_digest(record.id, digest, self.clock())
                pipeline = self.store.get_pipeline(record.project_path, record.pipeline_id)
                if digest and pipeline is not None and pipeline.finished:
                    self.raise_ended(pipeline, self.clock())
            resolved += 1
        return resolved + self.resolve_finished_pipelines(limit)

    def resolve_finished_pipelines(self, limit: int = 100) -> int:
        """Resolve the finished pipelines that still hold expected records, ``limit`` records a pass,
        going on where the last pass stopped. Returns how many pipelines were asked about."""
        now = self.clock()
        if now < self._next_resolve_sweep:
            return 0
        self._next_resolve_sweep = now + RESOLVE_RETRY
        found = self.store.awaiting_resolution(self._resolve_after_id, limit)
        self._resolve_after_id = found[-1][0] if len(found) >= limit else 0
        pipelines = sorted({(project_path, pipeline_id) for _, project_path, pipeline_id in found})
        for project_path, pipeline_id in pipelines:
            self.resolve_pipeline(project_path, pipeline_id)
        return len(pipelines)

    def resolve_pipeline(self, project_path: str, pipeline_id: int) -> None:
        """A finished pipeline's expected tags not yet confirmed: HEAD each, then record or drop them and
        raise the pipeline's triggers again, which plan the tags it pushed (and only those). When the
        registry cannot be asked now, they are asked again later (``resolve_finished_pipelines``); when
        the janitor may not read it at all (no credential, or one refused), the tags are planned as they
        are and their plans say why they fail."""
        project = self.settings.project_for(project_path)
        expected = [r for r in self.store.records_of_pipeline(project_path, pipeline_id)
                    if r.state == "expected"]
        if project is None or not expected:
            return
        reader = self.readers(project_path, project)
        found, unresolvable = ([], True) if reader is None else _head_each(reader, expected, self.cannot_resolve)
        for record_id, _ in found:
            self._reported.pop(record_id, None)
        if not found and not unresolvable:
            return
        with self.store.transaction():
            now = self.clock()
            for record_id, digest in found:
                self.store.set_record_digest(record_id, digest, now)
            if unresolvable:
                self.store.mark_unresolvable(project_path, pipeline_id, now)
            pipeline = self.store.get_pipeline(project_path, pipeline_id)
            if pipeline is not None and (unresolvable or any(digest for _, digest in found)):
                self.raise_ended(pipeline, now)

    def cannot_resolve(self, record: PushRecord, exc: Exception) -> None:
        """A record's tag could not be read now; it is asked again later. Logged at WARNING the first time
        for that record, at DEBUG after (each tick would repeat it)."""
        first = record.id not in self._reported
        if first:
            self._reported[record.id] = None
            while len(self._reported) > REPORTED_UNRESOLVED:
                self._reported.popitem(last=False)
        log.log(logging.WARNING if first else logging.DEBUG, "could not resolve %s:%s: %s%s", record.repository,
                record.tag, exc, "; asked again later (further failures of it are logged at DEBUG)" if first else "",
                extra={"project": record.project_path})


def _event_fields(event: InboxEvent) -> dict[str, str | None]:
    return {"project": event.project_path, "delivery": delivery_id(event.headers)}


def unusable_reason(exc: BaseException) -> str:
    """What is kept (and shown) of why an event was set aside: the error's type and message, bounded."""
    text = f"malformed: {exc}" if isinstance(exc, MalformedEvent) else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= UNUSABLE_REASON_CHARS else text[:UNUSABLE_REASON_CHARS - 1] + "…"


def _head_each(reader: ManifestReader, records: list[PushRecord],
               cannot_resolve: Callable[[PushRecord, Exception], None]) -> tuple[list[tuple[int, str | None]], bool]:
    """(record id, digest or None when absent) for each record, until the registry cannot be asked (told
    to ``cannot_resolve``); and whether it refused to be read (which asking again will not change)."""
    found: list[tuple[int, str | None]] = []
    for record in records:
        try:
            found.append((record.id, reader.head(record.repository, record.tag)))
        except RegistryRefused as exc:
            log.warning("may not read %s:%s (%s): its plans resolve it when they run", record.repository,
                        record.tag, exc)
            return found, True
        except Exception as exc:  # asked again by resolve_finished_pipelines; nothing is lost
            cannot_resolve(record, exc)
            break
    return found, False
