"""Catching up from the GitLab API (SPEC 11): the triggers whose webhooks never arrived.

GitLab does not redeliver a failed webhook and sends no push hook for a push touching more than 3 refs.
So, per configured project (exact paths; for ``group/*`` the projects below it that the ledger holds),
this module asks GitLab for the merge requests and the pipelines updated since the project's watermarks
and whether each branch the ledger still holds live tags for exists, then feeds what it learned through
the very ``Ingest`` handlers the webhooks use (which raise triggers through ``daemon.plan``). Trigger keys
are the same, so a trigger raised by a webhook and by reconcile makes one plan.

A merge request is caught up when the trigger of its state was not raised (whatever the ledger stored of
its state: a lost ``merge`` hook followed by an ``update`` stores ``merged`` and raises nothing). A
pipeline is caught up when the ledger never heard of it (it is recorded, its tag patterns expanded) or
has not heard the status GitLab reports (a finish makes its ``pipeline_finished`` trigger and resolves
its expected tags).

Operators ask for a run now (``registry-janitor reconcile``, ``POST /api/v1/reconcile``): the request is
stored and a worker runs it (``run_requests``), so the daemon's settings decide, never the asker's.

Owns: the per-project watermarks (``kv``), the bounds of one run, the per-project report. Must not: call
python-gitlab (``daemon.gitlab`` does), untag (plans wait their grace period and run in the worker like
any other), or let one project's failure stop the others."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from daemon.config import ProjectSettings, Settings
from daemon.domain.events import MergeRequestEvent, PipelineEvent, PushEvent, merge_request_of_ref, time_or_none
from daemon.domain.model import Pipeline, Plan
from daemon.domain.policy import LEASE_SECONDS
from daemon.errors import GitLabError
from daemon.gitlab.errors import GitLabAPIError
from daemon.ingest.inbox import Ingest
from daemon.store import Store

if TYPE_CHECKING:
    from daemon.gitlab.api import GitLabAPI, MergeRequestInfo, PipelineInfo

log = logging.getLogger(__name__)
T = TypeVar("T")

WATERMARK_KEY = "reconcile:merge_requests_updated:{project}"
PIPELINE_WATERMARK_KEY = "reconcile:pipelines_updated:{project}"
REF_CURSOR_KEY = "reconcile:ref_cursor:{project}"
# Re-read this much before the watermark: an MR updated just before the last run may have been committed
# in GitLab just after it. Re-reading is harmless (what the ledger already knows raises nothing).
OVERLAP_SECONDS = 300.0
# With no watermark yet, start this long before the project's first pipeline in the ledger: older MRs
# cannot own anything the janitor knows of. (Pipelines start at that first pipeline, less the overlap: one
# that last changed before the janitor heard of any has nothing left to tell.)
FIRST_RUN_SLACK = 86400.0
# MR pipelines' internal refs are not branches: asking for them as branches would say "deleted".
_NOT_BRANCHES = ("refs/merge-requests/", "refs/pipelines/", "refs/environments/")
_MR_ACTIONS = {"merged": "merge", "closed": "close"}


@dataclass
class ProjectReport:
    """What one run found for one project, and which plans it made."""

    project_path: str
    merge_requests: int = 0
    merged: list[int] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    reopened: list[int] = field(default_factory=list)
    pipelines: int = 0
    recorded: list[int] = field(default_factory=list)  # pipelines the ledger never heard of
    finished: list[int] = field(default_factory=list)  # pipelines whose finish it had not heard of
    refs_checked: int = 0
    deleted: list[str] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    since: str | None = None
    watermark: str | None = None
    pipelines_since: str | None = None
    pipelines_watermark: str | None = None
    more: bool = False  # a bound was reached; the next run goes on from here
    skipped: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_json(self) -> dict[str, Any]:
        """What a reconcile request keeps of this report: the project, whether it went well, the summary
        line, and the ids of the plans made."""
        return {"project": self.project_path, "ok": self.ok, "summary": self.summary(),
                "skipped": self.skipped, "error": self.error, "more": self.more,
                "plan_ids": [plan.id for plan in self.plans]}

    def summary(self) -> str:
        if self.error is not None:
            return f"failed: {self.error}"
        if self.skipped is not None:
            return f"skipped: {self.skipped}"
        if self.since is None:
            found = ["merge requests not asked (no pipeline of this project in the ledger yet)"]
        else:
            found = [f"{self.merge_requests} merge request(s) updated since {self.since}"]
        for label, items in (("merged", self.merged), ("closed", self.closed), ("reopened", self.reopened)):
            if items:
                found.append(f"{label} not yet seen: " + ", ".join(f"!{i}" for i in items))
        if self.pipelines_since is not None:
            found.append(f"{self.pipelines} pipeline(s) updated since {self.pipelines_since}")
        for label, ids in (("pipelines never heard of", self.recorded), ("finished not yet seen", self.finished)):
            if ids:
                found.append(f"{label}: " + ", ".join(f"#{i}" for i in ids))
        found.append(f"{self.refs_checked} branch(es) checked")
        if self.deleted:
            found.append("deleted: " + ", ".join(self.deleted))
        found.append(f"{len(self.plans)} plan(s) made")
        if self.more:
            found.append("more left for the next run")
        return "; ".join(found)


def _parse(stamp: str) -> datetime:
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Reconciler:
    """One catch-up pass over the configured projects. ``lock`` is held around each write (the worker
    passes the lock its tick holds), never around a GitLab call."""

    def __init__(self, settings: Settings, store: Store, ingest: Ingest, gitlab: GitLabAPI,
                 clock: Callable[[], float] = time.time, *, lock: contextlib.AbstractContextManager[Any] | None = None,
                 max_merge_requests: int = 500, max_pipelines: int = 500, max_refs: int = 200) -> None:
        self.settings = settings
        self.store = store
        self.ingest = ingest
        self.gitlab = gitlab
        self.clock = clock
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.max_merge_requests = max_merge_requests
        self.max_pipelines = max_pipelines
        self.max_refs = max_refs

    # which projects --------------------------------------------------------------------------------
    def projects(self, only: str | None = None) -> list[tuple[str, ProjectSettings]]:
        """Exact entries as configured; ``group/*`` entries expand to the ledger's projects below them
        (each project once, under the entry that ``Settings.project_for`` gives it)."""
        found: dict[str, ProjectSettings] = {}
        ledger = self.store.ledger_projects()
        for entry in self.settings.projects:
            paths = [entry.path] if "*" not in entry.path else [p for p in ledger if entry.matches(p)]
            for path in paths:
                if self.settings.project_for(path) is entry:
                    found.setdefault(path, entry)
        if only is not None:
            return [(only, found[only])] if only in found else []
        return sorted(found.items())

    # a run -----------------------------------------------------------------------------------------
    def run(self, only: str | None = None, *,
            after_each: Callable[[ProjectReport], None] | None = None) -> list[ProjectReport]:
        """Catch up every project (or ``only``); ``after_each`` is called with each project's report."""
        reports = []
        projects = self.projects(only)
        log.info("reconcile: %d project(s)", len(projects))
        for index, (path, project) in enumerate(projects, 1):
            report = self.reconcile_project(path, project)
            level = logging.WARNING if not report.ok else logging.INFO
            log.log(level, "reconcile %d/%d %s: %s", index, len(projects), path, report.summary())
            reports.append(report)
            if after_each is not None:
                after_each(report)
        return reports

    def run_requests(self, limit: int = 5) -> int:
        """Run the reconcile requests operators recorded (CLI or admin API), oldest first, with this
        process's settings; each one's lease is renewed after every project, so a worker that died
        running one leaves it to another. Returns how many finished."""
        finished = 0
        while finished < limit:
            req = self.store.claim_reconcile_request(self.clock(), LEASE_SECONDS)
            if req is None:
                break

            def renew(report: ProjectReport, request_id: int = req.id) -> None:
                now = self.clock()
                self.store.renew_reconcile_request(request_id, now + LEASE_SECONDS, now)

            result: dict[str, Any]
            try:
                reports = self.run(req.project_path, after_each=renew)
                state, result = "done", {"projects": [r.as_json() for r in reports]}
            except Exception as exc:  # the request says so; the worker goes on
                log.exception("reconcile request %s failed", req.id)
                state, result = "failed", {"error": f"{type(exc).__name__}: {exc}"}
            self.store.finish_reconcile_request(req.id, state, result, self.clock())
            log.info("reconcile request %s (%s, by %s): %s", req.id, req.project_path or "every project",
                     req.requested_by, state)
            finished += 1
        return finished

    def run_requests_logged(self) -> None:
        """For the scheduler: a failure is logged and the next interval tries again."""
        try:
            self.run_requests()
        except Exception:
            log.exception("reconcile requests failed; retrying next interval")

    def run_logged(self) -> None:
        """For the scheduler: a failure is logged and the next interval tries again."""
        try:
            self.run()
        except Exception:
            log.exception("reconcile failed; retrying next interval")

    def reconcile_project(self, path: str, project: ProjectSettings) -> ProjectReport:
        report = ProjectReport(path)
        token = self.settings.api_token_for(project)
        if token is None:
            report.skipped = "no gitlab.api_token and no registry_token for this project"
            return report
        try:
            self.gitlab.check_access(path, token)
            self.catch_up_merge_requests(path, token, report)
            try:
                self.catch_up_pipelines(path, token, report)
            except GitLabError as exc:  # the branches are asked all the same
                report.error = str(exc)
            self.check_branches(path, token, report)
        except GitLabError as exc:
            report.error = str(exc)
        except Exception as exc:  # one project's surprise must not stop the others
            log.exception("reconcile %s failed", path)
            report.error = f"{type(exc).__name__}: {exc}"
        if report.error is None:  # janitor_reconcile_last_success_timestamp_seconds
            self.store.reconcile_succeeded(path, self.clock())
        return report

    # merge requests --------------------------------------------------------------------------------
    def catch_up_merge_requests(self, path: str, token: str, report: ProjectReport) -> None:
        """MRs updated since the watermark, oldest first, at most ``max_merge_requests`` new ones a run;
        with no watermark yet, since a day before the project's first pipeline in the ledger."""
        earliest = self.store.earliest_pipeline_at(path)

        def apply(mr: MergeRequestInfo) -> None:
            report.merge_requests += 1
            self.apply_merge_request(path, mr, report)

        found = self._since_watermark(
            WATERMARK_KEY.format(project=path), None if earliest is None else earliest - FIRST_RUN_SLACK,
            lambda since: self.gitlab.merge_requests_since(path, token, since), lambda mr: mr.updated_at,
            self.max_merge_requests, apply, report)
        if found is not None:
            report.since, report.watermark = found

    def apply_merge_request(self, path: str, mr: MergeRequestInfo, report: ProjectReport) -> None:
        """Record the MR's state; raise what the ledger has not raised (a merge or close trigger: the stored
        state may say ``merged`` already when only a later hook came) or seen (a reopen)."""
        with self._writing(path, report) as now:
            known = self.store.merge_request_state(path, mr.iid)
            raised = self.store.merge_request_trigger_raised(path, mr.iid)
            if mr.state in _MR_ACTIONS:
                if raised == mr.state:
                    return  # its trigger was raised (by a webhook or an earlier run): nothing was missed
                action = _MR_ACTIONS[mr.state]
                (report.merged if mr.state == "merged" else report.closed).append(mr.iid)
            elif mr.state == "opened" and "closed" in (known, raised):
                action = "reopen"
                report.reopened.append(mr.iid)
            elif known == mr.state:
                return  # the webhook (or an earlier run) told us already: nothing was missed
            else:
                action = "update"  # opened or locked: who owns which branch, for S4
            self.ingest.on_merge_request(
                MergeRequestEvent(project_path=path, iid=mr.iid, action=action, state=mr.state,
                                  source_branch=mr.source_branch, source_project_id=mr.source_project_id,
                                  target_project_id=mr.target_project_id, default_branch=None), now)

    # pipelines -------------------------------------------------------------------------------------
    def catch_up_pipelines(self, path: str, token: str, report: ProjectReport) -> None:
        """Pipelines updated since the watermark, oldest first, at most ``max_pipelines`` new ones a run;
        with no watermark yet, since the project's first pipeline in the ledger."""
        earliest = self.store.earliest_pipeline_at(path)

        def apply(info: PipelineInfo) -> None:
            report.pipelines += 1
            self.apply_pipeline(path, token, info, report)

        found = self._since_watermark(
            PIPELINE_WATERMARK_KEY.format(project=path), None if earliest is None else earliest - OVERLAP_SECONDS,
            lambda since: self.gitlab.pipelines_since(path, token, since), lambda info: info.updated_at,
            self.max_pipelines, apply, report)
        if found is not None:
            report.pipelines_since, report.pipelines_watermark = found

    def _since_watermark(self, key: str, first: float | None, listing: Callable[[str], Iterable[T]],
                         updated_of: Callable[[T], str | None], limit: int, apply: Callable[[T], None],
                         report: ProjectReport) -> tuple[str, str | None] | None:
        """What GitLab lists as updated since the watermark kept at ``key`` (less ``OVERLAP_SECONDS``), or
        since ``first`` when there is none yet (None: nothing in the ledger to catch up on). At most
        ``limit`` items newer than the watermark a run (``report.more`` then says so); the watermark moves
        only once the listing finished or reached its bound. Returns (since, new watermark)."""
        stored = self.store.get_value(key)
        mark = _parse(stored) if stored is not None else None
        if mark is not None:
            start = mark.timestamp() - OVERLAP_SECONDS
        elif first is not None:
            start = first
        else:
            return None
        since = _iso(datetime.fromtimestamp(start, UTC))
        newest, fresh = mark, 0
        for item in listing(since):
            stamp = updated_of(item)
            updated = _parse(stamp) if stamp else None
            if mark is None or updated is None or updated > mark:
                if fresh >= limit:
                    report.more = True
                    break
                fresh += 1
            apply(item)
            if updated is not None and (newest is None or updated > newest):
                newest = updated
        if newest is not None and newest != mark:
            self.store.set_value(key, _iso(newest), self.clock())
        return since, (_iso(newest) if newest is not None else None)

    def apply_pipeline(self, path: str, token: str, info: PipelineInfo, report: ProjectReport) -> None:
        """Record a pipeline the ledger never heard of, or the status it has not heard yet (a finish
        raises ``pipeline_finished`` and resolves the expected tags, as the pipeline hook does)."""
        known = self.store.get_pipeline(path, info.id)
        if known is not None and (known.finished or known.status == info.status):
            return  # the webhook (a CI record, or an earlier run) told us already
        created = time_or_none(info.created_at)  # GitLab's own (the CI gate's record has its arrival)
        if known is None:
            pipeline = self._new_pipeline(path, token, info, created, report)
        else:
            pipeline = replace(known, status=info.status, created_at=known.created_at if created is None else created)
        with self._writing(path, report) as now:
            if self.store.get_pipeline(path, info.id) is None:
                report.recorded.append(info.id)
            to_resolve = self.ingest.on_gitlab(PipelineEvent(pipeline, created_known=created is not None), now)
        if pipeline.finished:
            report.finished.append(info.id)
        for project_path, pipeline_id in to_resolve:
            with self._planning(path, report):
                self.ingest.resolve_pipeline(project_path, pipeline_id)

    def _new_pipeline(self, path: str, token: str, info: PipelineInfo, created: float | None,
                      report: ProjectReport) -> Pipeline:
        """The pipeline as its hook would have described it. The listing names neither a merge request
        pipeline's MR (its ref does: ``refs/merge-requests/<iid>/head``) nor whether a ref is a tag (the
        single pipeline's answer does)."""
        mr_iid = merge_request_of_ref(info.ref)
        ref, is_tag = info.ref, False
        if mr_iid is not None:
            ref = self._merge_request_ref(path, token, mr_iid, report)
        else:
            detail = info if info.tag is not None else self.gitlab.pipeline(path, token, info.id)
            is_tag = bool(detail.tag)
        return Pipeline(project_path=path, pipeline_id=info.id, iid=info.iid, ref=ref, sha=info.sha,
                        status=info.status, is_tag=is_tag, mr_iid=mr_iid, default_branch=None,
                        created_at=self.clock() if created is None else created)

    def _merge_request_ref(self, path: str, token: str, iid: int, report: ProjectReport) -> str:
        """A merge request pipeline's ref as its hook gives it: the MR's source branch, or for a fork's MR
        (whose branch is not one of this project's) the MR's own ref. An MR the ledger does not know is
        asked for and caught up first (it may have ended while the janitor heard nothing)."""
        if self.store.merge_request_state(path, iid) is None:
            try:
                mr = self.gitlab.merge_request(path, token, iid)
            except GitLabAPIError as exc:
                if exc.status != 404:
                    raise
            else:
                self.apply_merge_request(path, mr, report)
        return self.store.mr_source_branch(path, iid) or f"refs/merge-requests/{iid}/head"

    # branches --------------------------------------------------------------------------------------
    def check_branches(self, path: str, token: str, report: ProjectReport) -> None:
        """Ask whether each branch with live tags in the ledger still exists, ``max_refs`` a run, going
        on where the last run stopped (so every ref is asked in turn however many there are)."""
        default = self.store.default_branch(path)
        refs = [r for r in self.store.open_refs(path) if r != default and not r.startswith(_NOT_BRANCHES)]
        key = REF_CURSOR_KEY.format(project=path)
        cursor = self.store.get_value(key) or ""
        ordered = [r for r in refs if r > cursor] + [r for r in refs if r <= cursor]
        batch = ordered[: self.max_refs]
        report.more = report.more or len(ordered) > len(batch)
        for ref in batch:
            present = self.gitlab.branch_present(path, ref, token)
            report.refs_checked += 1
            self.apply_branch(path, ref, present, report)
        if batch:
            self.store.set_value(key, batch[-1] if len(ordered) > len(batch) else "", self.clock())

    def apply_branch(self, path: str, ref: str, present: bool, report: ProjectReport) -> None:
        with self._writing(path, report) as now:
            if present:
                self.store.set_ref(path, ref, True, now)
                return
            if self.store.ref_known_live(path, ref) is False:
                return  # its deletion was seen (webhook or an earlier run): its trigger was raised then
            report.deleted.append(ref)
            self.ingest.on_push(PushEvent(project_path=path, ref=ref, is_tag=False, deleted=True,
                                          default_branch=None), now)

    # one write -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self, path: str, report: ProjectReport) -> Iterator[float]:
        """What reconcile learned goes through Ingest in one transaction (as an inbox event does):
        the check of what the ledger knows, the handler, and noting the plans it made."""
        with self._planning(path, report), self.store.transaction():
            yield self.clock()

    @contextlib.contextmanager
    def _planning(self, path: str, report: ProjectReport) -> Iterator[None]:
        """Under the lock, noting the plans made meanwhile (a finished pipeline's, once its expected tags
        are resolved, are made outside the write that recorded it: the registry is asked in between)."""
        with self.lock:
            before = self.store.last_plan_id()
            yield
            report.plans.extend(self.store.plans_after(path, before))
