"""The ledger: pipelines, push records (who pushed which tag, kept for good), and observations (tags
the registry said were pushed, before anyone is known to own them).

Records and their states are facts the worker learned; this module must not decide what to untag (the
planner does) nor ask the registry or GitLab anything. When a record learns its digest (or that it was
never pushed), its waiting untags are brought in line here, so no untag guards a digest the ledger
no longer holds. A record becoming confirmed is counted (``pushes_recorded``, ``created`` per day) by the
schema's triggers in the statement that confirms it (``daemon.store.counters``).
"""

from __future__ import annotations

from collections.abc import Iterable

from daemon.domain.model import FINISHED_STATUSES, Pipeline, PushRecord, Trigger
from daemon.store.base import StoreBase
from daemon.store.rows import PIPELINE_COLS, RECORD_COLS, marks, to_pipeline, to_record

# An expired TTL record stays expired: each minute's ttl_expired trigger would plan it again while
# the plan that holds it waits out its grace period (or an admin's decision), and again after it was
# skipped (live owner, superseded), rejected or failed. A TTL tag gets one plan; a failed untag is
# retried by an operator (retry), not by the next minute's trigger.
_NOT_PLANNED = "NOT EXISTS (SELECT 1 FROM untags u WHERE u.push_record_id = push_records.id)"
# ``planned_at IS NULL`` says the same from the record itself (set when a plan's untag takes it), so the
# TTL queries read partial indexes of unplanned live TTL records instead of every TTL record ever pushed.
# Plans whose untags have not started: a record found never pushed leaves them.
_NOT_STARTED = "('scheduled', 'held', 'ready')"
_MR_REF_PREFIX = "refs/merge-requests/"


def _mr_ref(column: str) -> str:
    """Whether ``column`` is a merge request's own ref, compared as ``str.startswith`` does: case and all
    (SQLite's ``LIKE`` ignores ASCII case, PostgreSQL's does not)."""
    return f"substr({column}, 1, {len(_MR_REF_PREFIX)}) = '{_MR_REF_PREFIX}'"


class LedgerStore(StoreBase):
    # pipelines -------------------------------------------------------------------------------------
    def upsert_pipeline(self, p: Pipeline, now: float, *, source_branch: str | None = None) -> None:
        """Keep the newest status; a late 'running' hook never un-finishes a pipeline. A branch name
        replaces a ``refs/merge-requests/...`` ref a CI job reported first. ``source_branch``: a
        merge-request pipeline's source branch as its hook named it (GitLab's ``$CI_COMMIT_REF_NAME``)."""
        self._db.execute(
            "INSERT INTO pipelines (project_path, pipeline_id, iid, ref, sha, status, is_tag, mr_iid,"
            " default_branch, created_at, updated_at, source_branch) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(project_path, pipeline_id) DO UPDATE SET"
            " status = CASE WHEN pipelines.status IN ('success','failed','canceled','skipped')"
            "   THEN pipelines.status ELSE excluded.status END,"
            f" ref = CASE WHEN {_mr_ref('pipelines.ref')} AND NOT {_mr_ref('excluded.ref')}"
            "   THEN excluded.ref ELSE pipelines.ref END,"
            " mr_iid = COALESCE(excluded.mr_iid, pipelines.mr_iid),"
            " default_branch = COALESCE(excluded.default_branch, pipelines.default_branch),"
            " source_branch = COALESCE(excluded.source_branch, pipelines.source_branch),"
            " updated_at = excluded.updated_at",
            [p.project_path, p.pipeline_id, p.iid, p.ref, p.sha, p.status, int(p.is_tag), p.mr_iid,
             p.default_branch, p.created_at, now, source_branch])
        if not p.ref.startswith("refs/merge-requests/"):
            # A CI job of a merge-request pipeline may record its pushes before any hook said which
            # branch ``refs/merge-requests/<iid>/head`` stands for; the pipeline hook names it, and the
            # records made under the placeholder ref take the branch (branch_deleted must find them).
            self._db.execute("UPDATE push_records SET ref = ? WHERE project_path = ? AND pipeline_id = ?"
                             f" AND {_mr_ref('ref')}", [p.ref, p.project_path, p.pipeline_id])

    def pipeline_source_branch(self, project_path: str, pipeline_id: int) -> str | None:
        """A merge-request pipeline's source branch as its hook named it; None when no hook did."""
        row = self._db.execute("SELECT source_branch FROM pipelines WHERE project_path = ? AND pipeline_id = ?",
                               [project_path, pipeline_id]).fetchone()
        return None if row is None or not row[0] else str(row[0])

    def mark_unresolvable(self, project_path: str, pipeline_id: int, now: float) -> None:
        """The janitor may not read what this finished pipeline pushed (no registry credential, or one
        the registry refuses): its expected records are planned as they are, resolved when plans run."""
        self._db.execute("UPDATE pipelines SET unresolvable_at = COALESCE(unresolvable_at, ?) WHERE"
                         " project_path = ? AND pipeline_id = ?", [now, project_path, pipeline_id])

    def unresolvable_pipelines(self, project_path: str, ids: Iterable[int]) -> set[int]:
        """Which of these pipelines were marked unresolvable."""
        ids = sorted(set(ids))
        out: set[int] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self._db.execute(f"SELECT pipeline_id FROM pipelines WHERE project_path = ? AND pipeline_id"
                                    f" IN ({marks(len(chunk))}) AND unresolvable_at IS NOT NULL",
                                    [project_path, *chunk])
            out.update(int(r[0]) for r in rows)
        return out

    def get_pipeline(self, project_path: str, pipeline_id: int) -> Pipeline | None:
        row = self._db.execute(f"SELECT {PIPELINE_COLS} FROM pipelines WHERE project_path = ?"
                               " AND pipeline_id = ?", [project_path, pipeline_id]).fetchone()
        return None if row is None else to_pipeline(row)

    def pipelines(self, project_path: str, ids: Iterable[int]) -> dict[int, Pipeline]:
        ids = sorted(set(ids))
        out: dict[int, Pipeline] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self._db.execute(f"SELECT {PIPELINE_COLS} FROM pipelines WHERE project_path = ?"
                                    f" AND pipeline_id IN ({marks(len(chunk))})", [project_path, *chunk])
            out.update({r[1]: to_pipeline(r) for r in rows})
        return out

    def unfinished_pipelines(self, heard_before: float, limit: int = 50) -> tuple[int, list[tuple[Pipeline, float]]]:
        """Pipelines not finished whose status the ledger last heard of before ``heard_before``: how many,
        and the ``limit`` heard of longest ago as (pipeline, when last heard of), oldest first."""
        finished = sorted(FINISHED_STATUSES)
        where = f"status NOT IN ({marks(len(finished))}) AND updated_at < ?"
        count = self._db.execute(f"SELECT COUNT(*) FROM pipelines WHERE {where}",
                                 [*finished, heard_before]).fetchone()[0]
        rows = self._db.execute(f"SELECT {PIPELINE_COLS}, updated_at FROM pipelines WHERE {where}"
                                " ORDER BY updated_at, project_path, pipeline_id LIMIT ?",
                                [*finished, heard_before, limit]).fetchall()
        return int(count), [(to_pipeline(r), float(r[-1])) for r in rows]

    def default_branch(self, project_path: str) -> str | None:
        row = self._db.execute("SELECT default_branch FROM pipelines WHERE project_path = ? AND"
                               " default_branch IS NOT NULL ORDER BY pipeline_id DESC LIMIT 1",
                               [project_path]).fetchone()
        return None if row is None else str(row[0])

    def ledger_projects(self) -> list[str]:
        """Every project path that has a pipeline in the ledger."""
        return [r[0] for r in self._db.execute("SELECT DISTINCT project_path FROM pipelines ORDER BY 1")]

    def earliest_pipeline_at(self, project_path: str) -> float | None:
        row = self._db.execute("SELECT MIN(created_at) FROM pipelines WHERE project_path = ?",
                               [project_path]).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def open_refs(self, project_path: str) -> list[str]:
        """Branches (not git tags) with pipelines whose push records are still live, sorted."""
        rows = self._db.execute(
            "SELECT DISTINCT r.ref FROM push_records r JOIN pipelines p ON p.project_path = r.project_path"
            " AND p.pipeline_id = r.pipeline_id WHERE r.project_path = ? AND r.state IN ('expected',"
            " 'confirmed') AND p.is_tag = 0 ORDER BY r.ref", [project_path])
        return [r[0] for r in rows]

    # push records ----------------------------------------------------------------------------------
    def add_record(self, *, project_path: str, pipeline: Pipeline, repository: str, tag: str,
                   digest: str | None, lifetime: str, ttl_seconds: float | None, state: str, source: str,
                   now: float) -> tuple[int, bool]:
        """Insert a push record or strengthen an existing one (expected -> confirmed, a digest learned).
        Returns (id, created)."""
        db = self._db
        cur = db.execute(
            "INSERT INTO push_records (project_path, pipeline_id, repository, tag, digest,"
            " lifetime, ttl_seconds, state, source, ref, mr_iid, recorded_at, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            [project_path, pipeline.pipeline_id, repository, tag, digest, lifetime, ttl_seconds, state,
             source, pipeline.ref, pipeline.mr_iid, now, now])
        row = db.execute("SELECT id, state FROM push_records WHERE project_path = ? AND pipeline_id = ?"
                         " AND repository = ? AND tag = ?",
                         [project_path, pipeline.pipeline_id, repository, tag]).fetchone()
        created = cur.rowcount == 1
        if not created and state == "confirmed" and digest:
            db.execute("UPDATE push_records SET state = 'confirmed', digest = ?, source = ?, updated_at = ?"
                       " WHERE id = ?", [digest, source, now, row[0]])
            self._pending_untags_follow(int(row[0]), digest, now)
        if not created and source == "pattern":  # the project's patterns decide lifetimes
            db.execute("UPDATE push_records SET lifetime = ?, ttl_seconds = ? WHERE id = ?",
                       [lifetime, ttl_seconds, row[0]])
        return int(row[0]), created

    def record(self, record_id: int) -> PushRecord | None:
        row = self._db.execute(f"SELECT {RECORD_COLS} FROM push_records WHERE id = ?",
                               [record_id]).fetchone()
        return None if row is None else to_record(row)

    def records_of_pipeline(self, project_path: str, pipeline_id: int) -> list[PushRecord]:
        rows = self._db.execute(f"SELECT {RECORD_COLS} FROM push_records WHERE project_path = ?"
                                " AND pipeline_id = ?", [project_path, pipeline_id])
        return [to_record(r) for r in rows]

    def set_record_digest(self, record_id: int, digest: str | None, now: float) -> None:
        """Resolve an expected record: confirmed with the digest found, or dropped when absent."""
        self._db.execute("UPDATE push_records SET digest = ?, state = ?, updated_at = ? WHERE id = ?",
                         [digest, "confirmed" if digest else "dropped", now, record_id])
        self._pending_untags_follow(record_id, digest, now)

    def _pending_untags_follow(self, record_id: int, digest: str | None, now: float) -> None:
        """A plan made while its record was only expected carries no digest to guard (S3), and the
        executor would untag whatever the tag points at when it runs. Once the ledger learns the
        record's digest, its waiting untags guard that digest; once it learns the pipeline never
        pushed the tag (dropped), the ledger no longer attributes it to anyone (S1): a tag that never
        existed was never going to be untagged, so its waiting untags leave the plans that have not
        started (a plan left with none goes too), and only a plan already running records it
        ``skipped: missing``."""
        db = self._db
        if digest:
            db.execute("UPDATE untags SET expected_digest = ? WHERE push_record_id = ?"
                       " AND outcome = 'pending'", [digest, record_id])
            return
        with self.transaction():
            emptied = {int(r[0]) for r in db.execute(
                f"DELETE FROM untags WHERE push_record_id = ? AND outcome = 'pending' AND plan_id IN"
                f" (SELECT id FROM plans WHERE state IN {_NOT_STARTED}) RETURNING plan_id",
                [record_id]).fetchall()}
            for plan_id in sorted(emptied):
                db.execute(f"DELETE FROM plans WHERE id = ? AND state IN {_NOT_STARTED}"
                           " AND NOT EXISTS (SELECT 1 FROM untags u WHERE u.plan_id = plans.id)", [plan_id])
            db.execute("UPDATE untags SET outcome = 'skipped', reason = 'missing', finished_at = ?"
                       " WHERE push_record_id = ? AND outcome = 'pending'", [now, record_id])

    def awaiting_resolution(self, after_id: int, limit: int) -> list[tuple[int, str, int]]:
        """Records still only expected of pipelines that finished (their resolution failed or was
        interrupted, and the registry did not refuse it) that no plan took yet, after record
        ``after_id`` in id order: (record id, project, pipeline id)."""
        rows = self._db.execute(
            "SELECT r.id, r.project_path, r.pipeline_id FROM push_records r JOIN pipelines p"
            " ON p.project_path = r.project_path AND p.pipeline_id = r.pipeline_id"
            " WHERE r.state = 'expected' AND r.planned_at IS NULL AND r.id > ?"
            " AND p.status IN ('success', 'failed', 'canceled', 'skipped') AND p.unresolvable_at IS NULL"
            " ORDER BY r.id LIMIT ?",
            [after_id, limit])
        return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]

    def candidates(self, trigger: Trigger) -> list[PushRecord]:
        """A superset of the records ``trigger`` may end, found through indexes only; the planner
        makes the exact selection."""
        p = trigger.project_path
        sql = (f"SELECT {RECORD_COLS} FROM push_records WHERE project_path = ?"
               " AND state IN ('expected', 'confirmed') AND ")
        if trigger.kind in ("merge_request_merged", "merge_request_closed") and trigger.ref:
            rows = self._db.execute(sql + "mr_iid = ? UNION " + sql + "ref = ?", [p, trigger.mr_iid, p, trigger.ref])
        elif trigger.kind in ("merge_request_merged", "merge_request_closed"):
            rows = self._db.execute(sql + "mr_iid = ?", [p, trigger.mr_iid])
        elif trigger.kind == "branch_deleted":
            rows = self._db.execute(sql + "ref = ?", [p, trigger.ref])
        elif trigger.kind == "ttl_expired":
            rows = self._db.execute(sql + "ttl_seconds IS NOT NULL AND recorded_at + ttl_seconds <= ?"
                                    f" AND planned_at IS NULL AND {_NOT_PLANNED}", [p, trigger.raised_at])
        else:
            rows = self._db.execute(sql + "pipeline_id = ?", [p, trigger.pipeline_id])
        return [to_record(r) for r in rows]

    def owners_of(self, pairs: Iterable[tuple[str, str]]) -> list[PushRecord]:
        """Every live record, of any project, of these repository:tag pairs (for S4)."""
        out: list[PushRecord] = []
        for repo, tag in sorted(set(pairs)):
            rows = self._db.execute(f"SELECT {RECORD_COLS} FROM push_records WHERE repository = ?"
                                    " AND tag = ? AND state IN ('expected', 'confirmed')", [repo, tag])
            out.extend(to_record(r) for r in rows)
        return out

    def mark_untagged(self, record_id: int, now: float) -> None:
        self._db.execute("UPDATE push_records SET state = 'untagged', updated_at = ? WHERE id = ?",
                         [now, record_id])

    def mark_tag_gone(self, record_id: int, now: float) -> None:
        """The tag of this record was removed: it and the confirmed records of the same project and
        repository:tag by earlier pipelines are done with (their pushes were overwritten, then removed)."""
        self._db.execute(
            "UPDATE push_records SET state = 'untagged', updated_at = ? WHERE id IN (SELECT o.id FROM"
            " push_records r JOIN push_records o ON o.repository = r.repository AND o.tag = r.tag AND"
            " o.project_path = r.project_path WHERE r.id = ? AND (o.id = r.id OR (o.state = 'confirmed'"
            " AND o.pipeline_id < r.pipeline_id)))", [now, record_id])

    def pattern_owners_of(self, repository: str, tag: str) -> list[PushRecord]:
        """Records of this tag that patterns or notifications made (not a CI job's own word), still
        expected or confirmed, newest pipeline first: who a notified push of the tag may belong to."""
        rows = self._db.execute(f"SELECT {RECORD_COLS} FROM push_records WHERE repository = ? AND tag = ?"
                                " AND (state = 'expected' OR (state = 'confirmed' AND source != 'ci'))"
                                " ORDER BY pipeline_id DESC", [repository, tag])
        return [to_record(r) for r in rows]

    def ttl_projects(self, now: float) -> list[str]:
        # Grouped on +project_path, not DISTINCT: SQLite would otherwise walk a project_path index in
        # order (every record) rather than the expiry index (the few records due). (PostgreSQL has no
        # unary + on text, nor needs it.)
        column = "project_path" if self._postgres else "+project_path"
        rows = self._db.execute("SELECT project_path FROM push_records WHERE ttl_seconds IS NOT NULL"
                                " AND state = 'confirmed' AND recorded_at + ttl_seconds <= ?"
                                f" AND planned_at IS NULL AND {_NOT_PLANNED}"
                                f" GROUP BY {column} ORDER BY {column}", [now])
        return [r[0] for r in rows]

    def unresolved_ci_records(self, limit: int = 100) -> list[PushRecord]:
        rows = self._db.execute(f"SELECT {RECORD_COLS} FROM push_records WHERE state = 'expected'"
                                " AND source = 'ci' ORDER BY id LIMIT ?", [limit])
        return [to_record(r) for r in rows]

    # observations (registry pushes not yet attributed) -------------------------------------------
    def add_observation(self, repository: str, tag: str, digest: str, seen_at: float) -> None:
        self._db.execute("INSERT INTO observations (repository, tag, digest, seen_at) VALUES (?,?,?,?)",
                         [repository, tag, digest, seen_at])

    def latest_observation(self, repository: str, tag: str, since: float) -> str | None:
        row = self._db.execute("SELECT digest FROM observations WHERE repository = ? AND tag = ?"
                               " AND seen_at >= ? ORDER BY seen_at DESC, id DESC LIMIT 1",
                               [repository, tag, since]).fetchone()
        return None if row is None else str(row[0])

    def observed_since(self, repository: str, tag: str, digest: str, since: float) -> bool:
        """Whether a push of ``repository:tag`` at ``digest`` was observed at or after ``since``."""
        row = self._db.execute("SELECT 1 FROM observations WHERE repository = ? AND tag = ? AND seen_at >= ?"
                               " AND digest = ? LIMIT 1", [repository, tag, since, digest]).fetchone()
        return row is not None

    def observation_before(self, repository: str, tag: str, before: float) -> tuple[str, float] | None:
        """The newest observed push of ``repository:tag`` before ``before``: (digest, seen_at)."""
        row = self._db.execute("SELECT digest, seen_at FROM observations WHERE repository = ? AND tag = ?"
                               " AND seen_at < ? ORDER BY seen_at DESC, id DESC LIMIT 1",
                               [repository, tag, before]).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))
