"""Inbox to ledger to triggers: the worker's first half, all storage, no registry writes.

Each inbox event is applied inside one transaction together with marking it processed, and every step
is idempotent (upserts, unique keys), so a crash at any point re-applies cleanly (S8, S9). The only
registry call here is the read-only manifest HEAD that resolves a finished pipeline's expected tags,
done after the transaction; a failure there leaves the records expected, resolved again at run time.
"""

from __future__ import annotations

import json
import logging
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
    parse_gitlab,
    parse_registry,
)
from daemon.domain.model import Pipeline, Trigger
from daemon.domain.patterns import PipelineVars, expand
from daemon.plan.planning import Planner, mr_trigger
from daemon.store import InboxEvent, Store

log = logging.getLogger(__name__)
# A registry notification may precede the pipeline hook's creation time by this much (clock skew
# between GitLab and the registry) and still count as that pipeline's push.
OBSERVATION_SLACK = 120.0
# How far around an untag's guard-to-write window a notified push still counts as inside it: the
# registry's clock and the janitor's may differ a little.
RACE_SLACK = 5.0


class ManifestReader(Protocol):
    def head(self, repository: str, ref: str) -> str | None:
        """The digest ``ref`` points at in ``repository``, or None when the registry holds no such tag.

        A reader that cannot ask raises: ``daemon.errors.RegistryUnavailable`` when asking again later may
        work (unreachable, 5xx, 429), ``daemon.errors.RegistryRefused`` when it will not (credential
        refused). The readers the worker is given may raise the registry client's own errors instead;
        it treats every failure as "ask again later"."""
        ...


#: A project's reader, from its path and settings; None when the janitor holds no credential for it.
ReaderFactory = Callable[[str, ProjectSettings], ManifestReader | None]


class Ingest:
    def __init__(self, settings: Settings, store: Store, planner: Planner, readers: ReaderFactory,
                 clock: Callable[[], float]) -> None:
        self.settings = settings
        self.store = store
        self.planner = planner
        self.readers = readers
        self.clock = clock

    # inbox ------------------------------------------------------------------------------------------
    def drain(self, limit: int = 500) -> int:
        """Apply pending inbox events in arrival order; returns how many were applied."""
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
        now = self.clock()
        to_resolve: list[tuple[str, int]] = []
        error: str | None = None
        with self.store.transaction():
            try:
                # A savepoint of its own: an event that fails half-way leaves none of its writes behind.
                with self.store.transaction():
                    payload = json.loads(event.body)
                    if event.source == "registry":
                        for push in parse_registry(payload, event.received_at):
                            self.on_registry_push(push, now)
                    else:
                        parsed = parse_gitlab(event.headers.get("X-Gitlab-Event"), payload, event.received_at)
                        to_resolve = self.on_gitlab(parsed, now)
            except (MalformedEvent, ValueError, TypeError, KeyError, AttributeError) as exc:
                # A payload the web accepted but the ledger cannot use must not block the inbox
                # behind it: it is kept, marked with why, and the worker moves on.
                error = f"unusable event: {exc!r}"
                log.warning("inbox event %s: %s", event.id, error)
            self.store.mark_processed(event.id, now, error)
        for project_path, pipeline_id in to_resolve:
            self.resolve_pipeline(project_path, pipeline_id)

    def on_gitlab(self, event: object, now: float) -> list[tuple[str, int]]:
        if isinstance(event, PipelineEvent):
            return self.on_pipeline(event.pipeline, now)
        if isinstance(event, MergeRequestEvent):
            self.on_merge_request(event, now)
        elif isinstance(event, PushEvent):
            self.on_push(event, now)
        elif isinstance(event, IgnoredEvent):
            log.debug("ignored %s event", event.kind)
        return []

    # events -----------------------------------------------------------------------------------------
    def on_pipeline(self, p: Pipeline, now: float) -> list[tuple[str, int]]:
        project = self.settings.project_for(p.project_path)
        if project is None:
            return []
        self.store.upsert_pipeline(p, now)
        stored = self.store.get_pipeline(p.project_path, p.pipeline_id) or p
        if not p.is_tag:
            self.store.set_ref(p.project_path, p.ref, True, now)
            # The branch was recreated: its pending deletion plan no longer holds.
            self.store.cancel_scheduled(p.project_path, kinds=["branch_deleted"], ref=p.ref, now=now,
                                        note=f"branch {p.ref} has a new pipeline ({p.pipeline_id})")
        self.expect_tags(project, stored, now)
        if not stored.finished:
            return []
        self.planner.raise_trigger(Trigger("pipeline_finished", p.project_path,
                                   f"pipeline_finished:{p.project_path}:{p.pipeline_id}", now,
                                   ref=p.ref, pipeline_id=p.pipeline_id), now)
        # A pipeline that finishes after its MR was merged or closed pushed tags that trigger already
        # ended: raise it again, and they join its plan or follow it.
        for iid, state, branch in self.store.ended_merge_requests(p.project_path, p.mr_iid, p.ref):
            self.planner.raise_trigger(mr_trigger(p.project_path, iid, state, branch, now), now)
        return [(p.project_path, p.pipeline_id)]

    def expect_tags(self, project: ProjectSettings, p: Pipeline, now: float) -> None:
        """SPEC 4.3: each pattern expanded for this pipeline, in each configured repository."""
        repositories = project.repositories(p.project_path) or ()
        variables = PipelineVars(ref=p.ref, sha=p.sha, pipeline_id=p.pipeline_id, pipeline_iid=p.iid,
                                 is_tag=p.is_tag, mr_iid=p.mr_iid)
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
        if self.settings.project_for(mr.project_path) is None:
            return
        self.store.set_merge_request(mr.project_path, mr.iid, mr.source_branch, mr.state,
                                     mr.source_project_id, mr.target_project_id, now)
        if mr.action == "reopen":
            self.store.cancel_scheduled(mr.project_path,
                                        kinds=["merge_request_merged", "merge_request_closed"],
                                        mr_iid=mr.iid, now=now, note=f"merge request !{mr.iid} reopened")
            return
        if mr.action in ("merge", "close"):
            # A fork's source branch lives in another project: only the MR's own pipelines are covered.
            same_project = mr.source_project_id is None or mr.source_project_id == mr.target_project_id
            state = "merged" if mr.action == "merge" else "closed"
            self.planner.raise_trigger(mr_trigger(mr.project_path, mr.iid, state,
                                                  mr.source_branch if same_project else None, now), now)

    def on_push(self, push: PushEvent, now: float) -> None:
        if push.is_tag or self.settings.project_for(push.project_path) is None:
            return
        self.store.set_ref(push.project_path, push.ref, not push.deleted, now)
        if push.deleted:
            self.planner.raise_trigger(Trigger("branch_deleted", push.project_path,
                                       f"branch_deleted:{push.project_path}:{push.ref}", now, ref=push.ref),
                               now)
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
        """CI records without a digest, as janitors before SPEC 14 stored them (the CI gate reads the
        digest before it answers and stores none): HEAD the tag and record what it points at, so such
        records left in a database still end as confirmed or dropped."""
        resolved = 0
        for record in self.store.unresolved_ci_records(limit):
            project = self.settings.project_for(record.project_path)
            reader = self.readers(record.project_path, project) if project else None
            if reader is None:
                continue
            try:
                digest = reader.head(record.repository, record.tag)
            except Exception as exc:
                log.warning("could not resolve %s:%s: %s", record.repository, record.tag, exc)
                continue
            self.store.set_record_digest(record.id, digest, self.clock())
            resolved += 1
        return resolved

    def resolve_pipeline(self, project_path: str, pipeline_id: int) -> None:
        """A finished pipeline's expected tags not yet confirmed: HEAD each, record or drop."""
        project = self.settings.project_for(project_path)
        expected = [r for r in self.store.records_of_pipeline(project_path, pipeline_id)
                    if r.state == "expected"]
        if project is None or not expected:
            return
        reader = self.readers(project_path, project)
        if reader is None:
            return
        for record in expected:
            try:
                digest = reader.head(record.repository, record.tag)
            except Exception as exc:  # the plan re-resolves at run time; nothing is lost
                log.warning("could not resolve %s:%s: %s", record.repository, record.tag, exc)
                return
            self.store.set_record_digest(record.id, digest, self.clock())
