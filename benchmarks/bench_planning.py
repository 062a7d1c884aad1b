"""Planning a trigger against a ledger of 1,000,000 push records vs one of 1,000.

SPEC 13: planning costs <= 2x against the big ledger. Both ledgers are real SQLite files (WAL) built
with the janitor's own schema and filled in one bulk transaction with the history of an instance:
projects, each a run of merge requests (two MR pipelines and a default-branch pipeline each, every one
pushing the tags of a usual .gitlab-ci.yml: ``mr-<iid>``, the ref slug, ``cache-<pipeline>``,
``preview-<sha>`` with a TTL, into one or two repositories), their pipelines, refs, plans and audit
rows. Most of it is history (merged or closed, untagged or dry-run, done, a few cancelled, a tenth of
the projects still in dry-run); every project has the same live part (three open MRs, a running
pipeline, TTL tags just expired in two projects, a few plans due), so the work a trigger implies is the
same in both ledgers and only the history it sits in differs. The MR, branch and pipeline triggers are
raised in the instance's monorepo, which holds a tenth of the big ledger's merge requests (6,360), so
a query that walks a project's history shows as well as one that walks the whole ledger.

Timed, each inside a transaction rolled back afterwards (so every repetition plans the same tags):
``Planner.raise_trigger`` for merge_request_merged, branch_deleted, pipeline_finished and ttl_expired,
and what every worker tick or webhook runs whatever happens: ``ttl_projects``, the TTL trigger's
candidate query, ``due_plans``, ``untags_done_since`` and ``cancel_scheduled`` (every pipeline and
push hook). Medians of interleaved repetitions; prints each ratio (all held to the SPEC's 2x), then
every statement more than 2x slower in the big ledger with its query plan, and every full scan; exits 1
when a ratio exceeds 2x. Building the big ledger takes about 25 s (``--keep DIR`` reuses it; an older
ledger there is brought forward by the janitor's own migrations). Not part of pytest or ``.ci/run``.

    python benchmarks/bench_planning.py [--records 1000000] [--repeat 31] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import verdict

from daemon.config import settings_from_dict
from daemon.domain.model import Trigger
from daemon.ingest.inbox import Ingest
from daemon.store import Store
from daemon.wiring import build_ingest, build_store

NOW = 1_750_000_000.0  # the moment every trigger is raised
STORY_GAP = 6 * 3600.0  # between one project's merge requests
TTL = 86400.0  # the preview tags' TTL
OPEN = 3  # open merge requests per project: the live part of each project
TTL_PROJECTS = (0, 1)  # projects holding TTL tags that just expired and wait for their plan
MONOREPO_SHARE = 0.1  # project 1, where the MR, branch and pipeline triggers are raised


def weight(p: int, projects: int) -> float:
    """Project 1 is the instance's monorepo: a tenth of all merge requests once there are enough projects."""
    return max(1.0, MONOREPO_SHARE * projects) if p == 1 else 1.0


def shape(records: int) -> tuple[int, int]:
    """(projects, merge requests of an ordinary project) for about ``records`` push records: projects grow
    faster than their history (1,000 records: 4 projects of 15 MRs; 1,000,000: 400 projects of 159 and
    the monorepo's 6,360)."""
    projects = max(4, round(4 * (records / 1000) ** (2 / 3)))
    per_story = 11 * sum(len(repositories(p)) * weight(p, projects) for p in range(projects))
    return projects, max(OPEN + 4, round(records / per_story))


def path_of(p: int) -> str:
    return f"bench/app-{p}"


def repositories(p: int) -> list[str]:
    return [path_of(p), f"{path_of(p)}/builder"] if p % 3 == 0 else [path_of(p)]


def dry_run_project(p: int) -> bool:
    return p % 10 == 3  # a tenth of projects still in dry-run: their TTL tags stay confirmed


@dataclass
class Targets:
    """What the timed triggers are about: the same shape in both ledgers."""

    mr_iid: int = 0
    mr_branch: str = ""
    deleted_branch: str = ""
    running_pipeline: int = 0


@dataclass
class Rows:
    pipelines: list[tuple[Any, ...]] = field(default_factory=list)
    records: list[tuple[Any, ...]] = field(default_factory=list)
    merge_requests: list[tuple[Any, ...]] = field(default_factory=list)
    refs: list[tuple[Any, ...]] = field(default_factory=list)
    plans: list[tuple[Any, ...]] = field(default_factory=list)
    untags: list[tuple[Any, ...]] = field(default_factory=list)


class LedgerBuilder:
    """The rows of an instance's history; ids are assigned here so plans and untags can refer."""

    def __init__(self, projects: int, stories: int) -> None:
        self.projects = projects
        self.stories = stories
        self.rows = Rows()
        self.targets = Targets()
        self.next_pipeline = 1000
        self.next_record = 1
        self.next_plan = 1
        self.next_untag = 1

    def build(self) -> Rows:
        for p in range(self.projects):
            count = round(self.stories * weight(p, self.projects))
            for s in range(count):
                self._story(p, s, count)
        return self.rows

    def _plan(self, p: int, kind: str, key: str, state: str, at: float, *, ref: str | None = None,
              mr_iid: int | None = None, pipeline_id: int | None = None) -> int:
        plan_id = self.next_plan
        self.next_plan += 1
        self.rows.plans.append((plan_id, path_of(p), kind, key, ref, mr_iid, pipeline_id, state, at, at,
                                at, None, "", None))
        return plan_id

    def _untag(self, plan_id: int, record: tuple[Any, ...], outcome: str, reason: str | None,
               finished: float | None) -> None:
        rid, project, pid, repo, tag, digest = record[0], record[1], record[2], record[3], record[4], record[5]
        self.rows.untags.append((self.next_untag, plan_id, project, rid, pid, repo, tag, digest, outcome, reason,
                                 "placeholder" if outcome == "done" else None, 1, finished, finished,
                                 finished and finished - 1))
        self.next_untag += 1

    def _pipeline(self, p: int, ref: str, mr_iid: int | None, status: str, at: float) -> int:
        pid = self.next_pipeline
        self.next_pipeline += 1
        self.rows.pipelines.append((path_of(p), pid, pid, ref, f"{pid:040x}", status, 0, mr_iid, "master",
                                    at, at))
        return pid

    def _records(self, p: int, pid: int, ref: str, mr_iid: int | None, at: float) -> list[list[Any]]:
        tags: list[tuple[str, str, float | None]] = []
        if mr_iid is not None:
            tags.append((f"mr-{mr_iid}", "merge_request", None))
        tags += [(ref.replace("/", "-"), "branch", None), (f"cache-{pid}", "pipeline", None),
                 (f"preview-{pid:08x}", "ttl", TTL)]
        out = []
        for repo in repositories(p):
            for tag, lifetime, ttl in tags:
                out.append([self.next_record, path_of(p), pid, repo, tag, f"sha256:{self.next_record:064x}",
                            lifetime, ttl, "confirmed", "pattern", ref, mr_iid, at, at])
                self.next_record += 1
        return out

    def _story(self, p: int, s: int, stories: int) -> None:
        rows, iid = self.rows, s + 1
        at = NOW - (stories - s) * STORY_GAP
        branch = f"feature/{iid}-change"
        open_mr = s >= stories - OPEN
        last = s == stories - 1
        dry = dry_run_project(p)
        merged = s % 5 != 4
        mr_records: list[list[Any]] = []
        pipeline_records: list[tuple[int, list[list[Any]]]] = []
        for k in range(2):
            running = last and k == 1
            pid = self._pipeline(p, branch, iid, "running" if running else "success", at + k * 600)
            recs = self._records(p, pid, branch, iid, at + k * 600)
            mr_records += [r for r in recs if r[6] in ("merge_request", "branch")]
            pipeline_records.append((pid, recs))
            if running and p == 1:
                self.targets.running_pipeline = pid
        main_pid = self._pipeline(p, "master", None, "success", at + 1800)
        main_records = self._records(p, main_pid, "master", None, at + 1800)
        pipeline_records.append((main_pid, main_records))
        rows.merge_requests.append((path_of(p), iid, branch, 1000 + p, 1000 + p,
                                    "opened" if open_mr else ("merged" if merged else "closed"), at))
        rows.refs.append((path_of(p), branch, int(open_mr), at))
        if s == 0:
            rows.refs.append((path_of(p), "master", 1, at))
        if p == 1 and s == stories - OPEN:
            self.targets.mr_iid, self.targets.mr_branch = iid, branch
        if p == 1 and s == stories - OPEN + 1:
            self.targets.deleted_branch = branch
        done = "dry_run" if dry else "done"
        settled = "confirmed" if dry else "untagged"
        # The MR's tags: untagged (or dry-run) by its merge or close plan once it ended.
        if not open_mr:
            kind = "merge_request_merged" if merged else "merge_request_closed"
            if s % 25 == 7:  # closed, reopened (its plan cancelled while it waited), merged later
                cancelled = self._plan(p, "merge_request_closed", f"merge_request_closed:{path_of(p)}:{iid}"
                                       f":cancelled:{self.next_plan}", "cancelled", at + 3600, ref=branch,
                                       mr_iid=iid)
                for r in mr_records:
                    self._untag(cancelled, tuple(r), "skipped", "cancelled", at + 5400)
            plan = self._plan(p, kind, f"{kind}:{path_of(p)}:{iid}", done, at + 7200, ref=branch, mr_iid=iid)
            for n, r in enumerate(mr_records):
                skipped = (r[0] + n) % 33 == 0  # now and then another live pipeline owns the tag
                r[8] = "confirmed" if skipped else settled
                self._untag(plan, tuple(r), "skipped" if skipped else done,
                            "live_owner" if skipped else None, at + 7200)
            self._plan(p, "branch_deleted", f"branch_deleted:{path_of(p)}:{branch}", "done", at + 7300,
                       ref=branch)
        # Each finished pipeline's cache tag: untagged by its pipeline_finished plan.
        for pid, recs in pipeline_records:
            if pid == self.targets.running_pipeline or (last and pid == pipeline_records[1][0]):
                continue
            cache = [r for r in recs if r[6] == "pipeline"]
            due_plan = open_mr and p == 2 and pid == pipeline_records[0][0]  # a few plans due right now
            plan = self._plan(p, "pipeline_finished", f"pipeline_finished:{path_of(p)}:{pid}",
                              "scheduled" if due_plan else done, NOW - 60 if due_plan else at + 900,
                              pipeline_id=pid)
            recent = open_mr and not due_plan  # untags of the last hour, for the hourly budget
            for r in cache:
                if not due_plan:
                    r[8] = settled
                self._untag(plan, tuple(r), "pending" if due_plan else done, None,
                            None if due_plan else (NOW - 600 if recent else at + 900))
        # Preview tags: planned by ttl_expired once expired; in two projects the last ones just expired.
        ttl_plan = None
        for r in (r for _, recs in pipeline_records for r in recs if r[6] == "ttl"):
            expires = r[12] + TTL
            if expires > NOW or (p in TTL_PROJECTS and expires > NOW - 2 * STORY_GAP):
                continue  # not expired yet, or expired and waiting for this minute's trigger
            if ttl_plan is None:
                ttl_plan = self._plan(p, "ttl_expired", f"ttl_expired:{path_of(p)}:{int(expires // 60)}",
                                      done, expires)
            r[8] = settled
            self._untag(ttl_plan, tuple(r), done, None, expires + 60)
        for _, recs in pipeline_records:
            rows.records += [tuple(r) for r in recs]


SCHEMA_INSERTS = {
    "pipelines": "INSERT INTO pipelines (project_path, pipeline_id, iid, ref, sha, status, is_tag, mr_iid,"
                 " default_branch, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
    "records": "INSERT INTO push_records (id, project_path, pipeline_id, repository, tag, digest, lifetime,"
               " ttl_seconds, state, source, ref, mr_iid, recorded_at, updated_at)"
               " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "merge_requests": "INSERT INTO merge_requests (project_path, iid, source_branch, source_project_id,"
                      " target_project_id, state, updated_at) VALUES (?,?,?,?,?,?,?)",
    "refs": "INSERT INTO refs (project_path, ref, live, updated_at) VALUES (?,?,?,?)",
    "plans": "INSERT INTO plans (id, project_path, trigger_kind, trigger_key, ref, mr_iid, pipeline_id, state,"
             " created_at, due_at, updated_at, lease_until, note, approved_by) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "untags": "INSERT INTO untags (id, plan_id, project_path, push_record_id, pipeline_id, repository, tag,"
              " expected_digest, outcome, reason, method, attempts, created_at, finished_at, started_at)"
              " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
}


def build_ledger(path: Path, records: int) -> tuple[Targets, int, int]:
    """Create the janitor's schema at ``path`` and fill it; returns (targets, records, projects)."""
    projects, stories = shape(records)
    build_store(settings_from_dict({"storage": {"url": f"sqlite:///{path}"}}, environ={})).close()
    builder = LedgerBuilder(projects, stories)
    rows = builder.build()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    for table, sql in SCHEMA_INSERTS.items():
        conn.executemany(sql, getattr(rows, table))
    # What the janitor writes on a record when a plan takes it (bulk here, one by one when planning).
    conn.execute("UPDATE push_records SET planned_at = (SELECT MIN(u.created_at) FROM untags u"
                 " WHERE u.push_record_id = push_records.id) WHERE id IN (SELECT push_record_id FROM untags)")
    conn.execute("INSERT INTO kv (key, value, updated_at) VALUES ('bench:targets', ?, ?)",
                 [json.dumps({**asdict(builder.targets), "records": len(rows.records), "projects": projects}), NOW])
    conn.execute("COMMIT")
    conn.execute("ANALYZE")  # what `PRAGMA optimize` gives a long-running instance
    conn.close()
    return builder.targets, len(rows.records), projects


@dataclass
class Ledger:
    name: str
    store: Store
    ingest: Ingest
    targets: Targets
    records: int
    projects: int

    def rolled_back(self, work: Callable[[], object]) -> float:
        """Seconds ``work`` takes inside a transaction that is then rolled back."""
        conn = self.store.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            started = time.perf_counter()
            work()
            return time.perf_counter() - started
        finally:
            conn.execute("ROLLBACK")

    def read(self, work: Callable[[], object]) -> float:
        started = time.perf_counter()
        work()
        return time.perf_counter() - started


def open_ledger(name: str, path: Path, targets: Targets, records: int, projects: int) -> Ledger:
    settings = settings_from_dict({
        "storage": {"url": f"sqlite:///{path}"},
        "defaults": {"grace_period": "15m"},
        "projects": [{"path": "bench/*", "webhook_secret": "s", "images": ["", "builder"], "tags": [
            {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"},
            {"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"},
            {"pattern": "cache-$CI_PIPELINE_ID", "lifetime": "pipeline"},
            {"pattern": "preview-$CI_COMMIT_SHORT_SHA", "ttl": "1d"}]}],
    }, environ={})
    store = build_store(settings)
    ingest = build_ingest(settings, store, registries=lambda project_path, project: None, clock=lambda: NOW)
    return Ledger(name, store, ingest, targets, records, projects)


def work_items(ledger: Ledger) -> Iterator[tuple[str, bool, Callable[[], float]]]:
    """(label, is a trigger the SPEC target names, timed call)."""
    t, s, i = ledger.targets, ledger.store, ledger.ingest
    p1, p0, p2 = path_of(1), path_of(0), path_of(2)
    triggers = {
        "merge_request_merged": Trigger("merge_request_merged", p1, f"merge_request_merged:{p1}:{t.mr_iid}", NOW,
                                        ref=t.mr_branch, mr_iid=t.mr_iid),
        "branch_deleted": Trigger("branch_deleted", p1, f"branch_deleted:{p1}:{t.deleted_branch}", NOW,
                                  ref=t.deleted_branch),
        "pipeline_finished": Trigger("pipeline_finished", p1, f"pipeline_finished:{p1}:{t.running_pipeline}", NOW,
                                     ref=t.mr_branch, pipeline_id=t.running_pipeline),
        "ttl_expired": Trigger("ttl_expired", p0, f"ttl_expired:{p0}:{int(NOW // 60)}", NOW),
    }
    for kind, trigger in triggers.items():
        yield kind, True, lambda trigger=trigger: ledger.rolled_back(lambda: i.planner.raise_trigger(trigger, NOW))
    yield "tick: ttl_projects", False, lambda: ledger.read(lambda: s.ttl_projects(NOW))
    yield "tick: TTL candidates", False, lambda: ledger.read(lambda: s.candidates(triggers["ttl_expired"]))
    yield "tick: due_plans", False, lambda: ledger.read(lambda: s.due_plans(NOW))
    yield "tick: untags_done_since", False, lambda: ledger.read(lambda: s.untags_done_since(p2, NOW - 3600))
    yield "hook: cancel_scheduled", False, lambda: ledger.rolled_back(
        lambda: s.cancel_scheduled(p1, kinds=["branch_deleted"], ref=t.mr_branch, now=NOW, note="bench"))


def sanity(ledger: Ledger) -> dict[str, int]:
    """What each trigger finds, so a reader sees both ledgers ask the same work."""
    t, s = ledger.targets, ledger.store
    p1 = path_of(1)
    out: dict[str, int] = {}
    for label, trigger in (("mr", Trigger("merge_request_merged", p1, "x", NOW, ref=t.mr_branch, mr_iid=t.mr_iid)),
                           ("branch", Trigger("branch_deleted", p1, "x", NOW, ref=t.deleted_branch)),
                           ("pipeline", Trigger("pipeline_finished", p1, "x", NOW, pipeline_id=t.running_pipeline)),
                           ("ttl", Trigger("ttl_expired", path_of(0), "x", NOW))):
        out[label] = len(s.candidates(trigger))
    out["ttl_projects"] = len(s.ttl_projects(NOW))
    out["due_plans"] = len(s.due_plans(NOW))
    return out


def statement_costs(ledger: Ledger) -> list[tuple[str, str, float]]:
    """(step, statement, median seconds) of every SELECT each step runs, timed one by one."""
    out: list[tuple[str, str, float]] = []
    conn = ledger.store.db.conn
    for label, _, timed in work_items(ledger):
        seen: list[str] = []
        conn.set_trace_callback(seen.append)
        timed()
        conn.set_trace_callback(None)
        for sql in seen:
            if sql.lstrip().upper().startswith("SELECT"):
                times = []
                for _ in range(7):
                    started = time.perf_counter()
                    conn.execute(sql).fetchall()
                    times.append(time.perf_counter() - started)
                out.append((label, sql, statistics.median(times)))
    return out


LITERAL = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b")


def paired(costs: list[tuple[str, str, float]]) -> Iterator[tuple[tuple[str, str, int], str, float]]:
    """Each statement keyed by (step, its text without literals, occurrence), to pair the two ledgers'."""
    seen: dict[tuple[str, str], int] = {}
    for step, sql, seconds in costs:
        shape = LITERAL.sub("?", " ".join(sql.split()))
        n = seen[(step, shape)] = seen.get((step, shape), -1) + 1
        yield (step, shape, n), sql, seconds


def plan_of(ledger: Ledger, sql: str) -> str:
    return "; ".join(row[3] for row in ledger.store.db.conn.execute("EXPLAIN QUERY PLAN " + sql))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="push records in the big ledger")
    parser.add_argument("--small", type=int, default=1_000, help="push records in the small ledger")
    parser.add_argument("--repeat", type=int, default=31, help="timed repetitions of each step per ledger")
    parser.add_argument("--keep", type=Path, help="build the ledgers here once and reuse them on later runs")
    args = parser.parse_args()

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench-planning-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ledgers: list[Ledger] = []
    try:
        for name, size in (("small", args.small), ("big", args.records)):
            path = workdir / f"ledger-{size}.db"
            started = time.perf_counter()
            if path.exists() and args.keep:
                with sqlite3.connect(path) as conn:
                    saved = json.loads(conn.execute("SELECT value FROM kv WHERE key = 'bench:targets'").fetchone()[0])
                records, projects = saved.pop("records"), saved.pop("projects")
                targets = Targets(**saved)
                built = "reused"
            else:
                path.unlink(missing_ok=True)
                targets, records, projects = build_ledger(path, size)
                built = f"built in {time.perf_counter() - started:.0f}s"
            ledgers.append(open_ledger(name, path, targets, records, projects))
            print(f"{name} ledger: {records:,} push records, {projects} projects ({built}, "
                  f"{path.stat().st_size / 1e6:.0f} MB)")
        for ledger in ledgers:
            print(f"  {ledger.name}: candidates per trigger and tick {sanity(ledger)}")

        timings: dict[str, dict[str, list[float]]] = {ledger.name: {} for ledger in ledgers}
        targeted: dict[str, bool] = {}
        for ledger in ledgers:  # warm both: caches, prepared statements
            for label, is_target, timed in work_items(ledger):
                targeted[label] = is_target
                for _ in range(3):
                    timed()
        for _ in range(args.repeat):
            for ledger in ledgers:
                for label, _, timed in work_items(ledger):
                    timings[ledger.name].setdefault(label, []).append(timed())

        costs = [statement_costs(ledger) for ledger in ledgers]
        small_costs = {key: a for key, _, a in paired(costs[0])}
        slower = [(key[0], sql, small_costs[key], b, plan_of(ledgers[1], sql)) for key, sql, b in paired(costs[1])
                  if key in small_costs and b > 2 * small_costs[key] and b > 50e-6]
        scans = sorted({(sql, plan) for sql, plan in ((sql, plan_of(ledgers[1], sql)) for _, sql, _ in costs[1])
                        if "SCAN " in plan.replace("SCAN CONSTANT", "")})
    finally:
        for ledger in ledgers:
            ledger.store.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    small, big = timings["small"], timings["big"]
    print(f"\n{'step':28s} {'1,000 records':>14s} {f'{ledgers[1].records:,} records':>18s}")
    ok = True
    for label in small:
        a, b = statistics.median(small[label]) * 1e3, statistics.median(big[label]) * 1e3
        print(f"{label:28s} {a:11.3f} ms {b:15.3f} ms")
    print()
    for label in small:
        ratio = statistics.median(big[label]) / statistics.median(small[label])
        ok = verdict(f"{label:28s} big / small", ratio, 2.0, at_most=True) and ok
    print(f"\nstatements over 2x slower in the big ledger: {len(slower) or 'none'}")
    for step, sql, a, b, plan in slower:
        print(f"  [{step}] {a * 1e3:.3f} -> {b * 1e3:.3f} ms: {' '.join(sql.split())[:150]}\n      plan: {plan}")
    print(f"full scans in the big ledger: {len(scans) or 'none'}")
    for sql, plan in scans:
        print(f"  {' '.join(sql.split())[:150]}\n      plan: {plan}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
