"""The ledger: pipelines, push records (who pushed which tag), merge requests, refs, observations."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from daemon.domain.model import Pipeline, PushRecord, Trigger
from daemon.store.base import StoreBase

_RECORD_COLS = ("id, project_path, pipeline_id, repository, tag, digest, lifetime, state, source, ref,"
                " mr_iid, recorded_at, ttl_seconds")
_PIPELINE_COLS = ("project_path, pipeline_id, ref, sha, status, iid, is_tag, mr_iid, default_branch,"
                  " created_at")


def _record(row: Sequence[Any]) -> PushRecord:
    return PushRecord(id=row[0], project_path=row[1], pipeline_id=row[2], repository=row[3], tag=row[4],
                      digest=row[5], lifetime=row[6], state=row[7], source=row[8], ref=row[9],
                      mr_iid=row[10], recorded_at=row[11], ttl_seconds=row[12])


def _pipeline(row: Sequence[Any]) -> Pipeline:
    return Pipeline(project_path=row[0], pipeline_id=row[1], ref=row[2], sha=row[3] or "", status=row[4],
                    iid=row[5], is_tag=bool(row[6]), mr_iid=row[7], default_branch=row[8],
                    created_at=row[9] or 0.0)


# An expired TTL record stays expired: each minute's ttl_expired trigger would plan it again while
# the plan that holds it waits out its grace period (or an admin's decision), and again after it was
# skipped (live owner, superseded), rejected or failed. A TTL tag gets one plan; a failed untag is
# retried by an operator (retry), not by the next minute's trigger.
_NOT_PLANNED = "NOT EXISTS (SELECT 1 FROM untags u WHERE u.push_record_id = push_records.id)"
# ``planned_at IS NULL`` says the same from the record itself (set when a plan's untag takes it), so the
# TTL queries read partial indexes of unplanned live TTL records instead of every TTL record ever pushed.


def _marks(n: int) -> str:
    return ",".join("?" * n)


class LedgerStore(StoreBase):
    # pipelines -------------------------------------------------------------------------------------
    def upsert_pipeline(self, p: Pipeline, now: float) -> None:
        """Keep the newest status; a late 'running' hook never un-finishes a pipeline. A branch name
        replaces a ``refs/merge-requests/...`` ref a CI job reported first."""
        self.db.execute(
            "INSERT INTO pipelines (project_path, pipeline_id, iid, ref, sha, status, is_tag, mr_iid,"
            " default_branch, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(project_path, pipeline_id) DO UPDATE SET"
            " status = CASE WHEN pipelines.status IN ('success','failed','canceled','skipped')"
            "   THEN pipelines.status ELSE excluded.status END,"
            " ref = CASE WHEN pipelines.ref LIKE 'refs/merge-requests/%'"
            "   AND excluded.ref NOT LIKE 'refs/merge-requests/%' THEN excluded.ref ELSE pipelines.ref END,"
            " mr_iid = COALESCE(excluded.mr_iid, pipelines.mr_iid),"
            " default_branch = COALESCE(excluded.default_branch, pipelines.default_branch),"
            " updated_at = excluded.updated_at",
            [p.project_path, p.pipeline_id, p.iid, p.ref, p.sha, p.status, int(p.is_tag), p.mr_iid,
             p.default_branch, p.created_at, now])
        if not p.ref.startswith("refs/merge-requests/"):
            # A CI job of a merge-request pipeline may record its pushes before any hook said which
            # branch ``refs/merge-requests/<iid>/head`` stands for; the pipeline hook names it, and the
            # records made under the placeholder ref take the branch (branch_deleted must find them).
            self.db.execute("UPDATE push_records SET ref = ? WHERE project_path = ? AND pipeline_id = ?"
                            " AND ref LIKE 'refs/merge-requests/%'", [p.ref, p.project_path, p.pipeline_id])

    def get_pipeline(self, project_path: str, pipeline_id: int) -> Pipeline | None:
        row = self.db.execute(f"SELECT {_PIPELINE_COLS} FROM pipelines WHERE project_path = ?"
                              " AND pipeline_id = ?", [project_path, pipeline_id]).fetchone()
        return None if row is None else _pipeline(row)

    def pipelines(self, project_path: str, ids: Iterable[int]) -> dict[int, Pipeline]:
        ids = sorted(set(ids))
        out: dict[int, Pipeline] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self.db.execute(f"SELECT {_PIPELINE_COLS} FROM pipelines WHERE project_path = ?"
                                   f" AND pipeline_id IN ({_marks(len(chunk))})", [project_path, *chunk])
            out.update({r[1]: _pipeline(r) for r in rows})
        return out

    # push records ----------------------------------------------------------------------------------
    def add_record(self, *, project_path: str, pipeline: Pipeline, repository: str, tag: str,
                   digest: str | None, lifetime: str, ttl_seconds: float | None, state: str, source: str,
                   now: float) -> tuple[int, bool]:
        """Insert a push record or strengthen an existing one (expected -> confirmed, a digest learned).
        Returns (id, created)."""
        db = self.db
        cur = db.execute(
            "INSERT OR IGNORE INTO push_records (project_path, pipeline_id, repository, tag, digest,"
            " lifetime, ttl_seconds, state, source, ref, mr_iid, recorded_at, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
        row = self.db.execute(f"SELECT {_RECORD_COLS} FROM push_records WHERE id = ?",
                              [record_id]).fetchone()
        return None if row is None else _record(row)

    def records_of_pipeline(self, project_path: str, pipeline_id: int) -> list[PushRecord]:
        rows = self.db.execute(f"SELECT {_RECORD_COLS} FROM push_records WHERE project_path = ?"
                               " AND pipeline_id = ?", [project_path, pipeline_id])
        return [_record(r) for r in rows]

    def set_record_digest(self, record_id: int, digest: str | None, now: float) -> None:
        """Resolve an expected record: confirmed with the digest found, or dropped when absent."""
        self.db.execute("UPDATE push_records SET digest = ?, state = ?, updated_at = ? WHERE id = ?",
                        [digest, "confirmed" if digest else "dropped", now, record_id])
        self._pending_untags_follow(record_id, digest, now)

    def _pending_untags_follow(self, record_id: int, digest: str | None, now: float) -> None:
        """A plan made while its record was only expected carries no digest to guard (S3), and the
        executor would untag whatever the tag points at when it runs. Once the ledger learns the
        record's digest, its waiting untags guard that digest; once it learns the pipeline never
        pushed the tag (dropped), they are skipped: the ledger no longer attributes it to anyone (S1)."""
        if digest:
            self.db.execute("UPDATE untags SET expected_digest = ? WHERE push_record_id = ?"
                            " AND outcome = 'pending'", [digest, record_id])
        else:
            self.db.execute("UPDATE untags SET outcome = 'skipped', reason = 'missing', finished_at = ?"
                            " WHERE push_record_id = ? AND outcome = 'pending'", [now, record_id])

    def candidates(self, trigger: Trigger) -> list[PushRecord]:
        """A superset of the records ``trigger`` may end, found through indexes only; the planner
        makes the exact selection."""
        p = trigger.project_path
        sql = (f"SELECT {_RECORD_COLS} FROM push_records WHERE project_path = ?"
               " AND state IN ('expected', 'confirmed') AND ")
        if trigger.kind in ("merge_request_merged", "merge_request_closed"):
            rows = self.db.execute(sql + "mr_iid = ? UNION " + sql + "ref = ?",
                                   [p, trigger.mr_iid, p, trigger.ref or "\0"])
        elif trigger.kind == "branch_deleted":
            rows = self.db.execute(sql + "ref = ?", [p, trigger.ref])
        elif trigger.kind == "ttl_expired":
            rows = self.db.execute(sql + "ttl_seconds IS NOT NULL AND recorded_at + ttl_seconds <= ?"
                                   f" AND planned_at IS NULL AND {_NOT_PLANNED}", [p, trigger.raised_at])
        else:
            rows = self.db.execute(sql + "pipeline_id = ?", [p, trigger.pipeline_id])
        return [_record(r) for r in rows]

    def owners_of(self, pairs: Iterable[tuple[str, str]]) -> list[PushRecord]:
        """Every live record, of any project, of these repository:tag pairs (for S4)."""
        out: list[PushRecord] = []
        for repo, tag in sorted(set(pairs)):
            rows = self.db.execute(f"SELECT {_RECORD_COLS} FROM push_records WHERE repository = ?"
                                    " AND tag = ? AND state IN ('expected', 'confirmed')", [repo, tag])
            out.extend(_record(r) for r in rows)
        return out

    def mark_untagged(self, record_id: int, now: float) -> None:
        self.db.execute("UPDATE push_records SET state = 'untagged', updated_at = ? WHERE id = ?",
                        [now, record_id])

    def mark_tag_gone(self, record_id: int, now: float) -> None:
        """The tag of this record was removed: it and the confirmed records of the same project and
        repository:tag by earlier pipelines are done with (their pushes were overwritten, then removed)."""
        self.db.execute(
            "UPDATE push_records SET state = 'untagged', updated_at = ? WHERE id IN (SELECT o.id FROM"
            " push_records r JOIN push_records o ON o.repository = r.repository AND o.tag = r.tag AND"
            " o.project_path = r.project_path WHERE r.id = ? AND (o.id = r.id OR (o.state = 'confirmed'"
            " AND o.pipeline_id < r.pipeline_id)))", [now, record_id])

    def pattern_owners_of(self, repository: str, tag: str) -> list[PushRecord]:
        """Records of this tag that patterns or notifications made (not a CI job's own word), still
        expected or confirmed, newest pipeline first: who a notified push of the tag may belong to."""
        rows = self.db.execute(f"SELECT {_RECORD_COLS} FROM push_records WHERE repository = ? AND tag = ?"
                               " AND (state = 'expected' OR (state = 'confirmed' AND source != 'ci'))"
                               " ORDER BY pipeline_id DESC", [repository, tag])
        return [_record(r) for r in rows]

    def ttl_projects(self, now: float) -> list[str]:
        # Grouped on +project_path, not DISTINCT: SQLite would otherwise walk a project_path index in
        # order (every record) rather than the expiry index (the few records due).
        rows = self.db.execute("SELECT project_path FROM push_records WHERE ttl_seconds IS NOT NULL"
                               " AND state = 'confirmed' AND recorded_at + ttl_seconds <= ?"
                               f" AND planned_at IS NULL AND {_NOT_PLANNED}"
                               " GROUP BY +project_path ORDER BY +project_path", [now])
        return [r[0] for r in rows]

    # observations (registry pushes not yet attributed) -------------------------------------------
    def add_observation(self, repository: str, tag: str, digest: str, seen_at: float) -> None:
        self.db.execute("INSERT INTO observations (repository, tag, digest, seen_at) VALUES (?,?,?,?)",
                        [repository, tag, digest, seen_at])

    def latest_observation(self, repository: str, tag: str, since: float) -> str | None:
        row = self.db.execute("SELECT digest FROM observations WHERE repository = ? AND tag = ?"
                              " AND seen_at >= ? ORDER BY seen_at DESC, id DESC LIMIT 1",
                              [repository, tag, since]).fetchone()
        return None if row is None else str(row[0])

    # merge requests and refs -----------------------------------------------------------------------
    def set_merge_request(self, project_path: str, iid: int, source_branch: str, state: str,
                          source_project_id: int | None, target_project_id: int | None,
                          now: float) -> None:
        self.db.execute(
            "INSERT INTO merge_requests (project_path, iid, source_branch, source_project_id,"
            " target_project_id, state, updated_at) VALUES (?,?,?,?,?,?,?)"
            " ON CONFLICT(project_path, iid) DO UPDATE SET source_branch = excluded.source_branch,"
            " state = excluded.state, updated_at = excluded.updated_at",
            [project_path, iid, source_branch, source_project_id, target_project_id, state, now])

    def ended_merge_requests(self, project_path: str, iid: int | None,
                             ref: str) -> list[tuple[int, str, str | None]]:
        """Merged or closed MRs a pipeline belongs to (by iid, or as a branch pipeline of the MR's source
        branch in this project): (iid, state, source branch or None for a fork's MR)."""
        rows = self.db.execute(
            "SELECT iid, state, source_branch, COALESCE(source_project_id = target_project_id, 1)"
            " FROM merge_requests WHERE project_path = ? AND state IN ('merged', 'closed')"
            " AND (iid = ? OR source_branch = ?)", [project_path, iid, ref]).fetchall()
        return [(int(r[0]), str(r[1]), str(r[2]) if r[3] else None) for r in rows
                if r[0] == iid or r[3]]

    def mr_source_branch(self, project_path: str, iid: int) -> str | None:
        """The branch of this project an MR comes from; None when unknown, or when the MR comes from a
        fork: the fork's branch name says nothing of this project's branch of the same name."""
        row = self.db.execute("SELECT source_branch FROM merge_requests WHERE project_path = ? AND iid = ?"
                              " AND (source_project_id IS NULL OR target_project_id IS NULL"
                              " OR source_project_id = target_project_id)", [project_path, iid]).fetchone()
        return None if row is None else str(row[0])

    def default_branch(self, project_path: str) -> str | None:
        row = self.db.execute("SELECT default_branch FROM pipelines WHERE project_path = ? AND"
                              " default_branch IS NOT NULL ORDER BY pipeline_id DESC LIMIT 1",
                              [project_path]).fetchone()
        return None if row is None else str(row[0])

    def unresolved_ci_records(self, limit: int = 100) -> list[PushRecord]:
        rows = self.db.execute(f"SELECT {_RECORD_COLS} FROM push_records WHERE state = 'expected'"
                               " AND source = 'ci' ORDER BY id LIMIT ?", [limit])
        return [_record(r) for r in rows]

    def open_mr_branches(self, project_path: str) -> set[str]:
        rows = self.db.execute("SELECT source_branch FROM merge_requests WHERE project_path = ? AND"
                               " state IN ('opened', 'reopened', 'locked')", [project_path])
        return {r[0] for r in rows}

    def set_ref(self, project_path: str, ref: str, live: bool, now: float) -> None:
        self.db.execute(
            "INSERT INTO refs (project_path, ref, live, updated_at) VALUES (?,?,?,?)"
            " ON CONFLICT(project_path, ref) DO UPDATE SET live = excluded.live,"
            " updated_at = excluded.updated_at", [project_path, ref, int(live), now])

    def ref_states(self, project_path: str, refs: Iterable[str]) -> dict[str, bool | None]:
        """Known liveness: an open MR's source branch is live; else the last push/delete seen."""
        wanted = sorted(set(refs))
        known: dict[str, bool | None] = dict.fromkeys(wanted)
        open_branches = self.open_mr_branches(project_path)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            rows = self.db.execute(f"SELECT ref, live FROM refs WHERE project_path = ? AND ref IN"
                                   f" ({_marks(len(chunk))})", [project_path, *chunk])
            known.update({r[0]: bool(r[1]) for r in rows})
        for ref in wanted:
            if ref in open_branches:
                known[ref] = True
        return known
