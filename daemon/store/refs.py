"""Branches: the refs seen pushed or deleted, and the merge requests whose state says whether their
source branch is still live.

It answers what the ledger knows of a ref or an MR; it must not ask GitLab (catching up does, then
writes here) nor decide what a dead branch means for its tags (the planner does).
"""

from __future__ import annotations

from collections.abc import Iterable

from daemon.store.base import StoreBase
from daemon.store.rows import marks


class RefStore(StoreBase):
    # merge requests --------------------------------------------------------------------------------
    def set_merge_request(self, project_path: str, iid: int, source_branch: str, state: str,
                          source_project_id: int | None, target_project_id: int | None,
                          now: float) -> None:
        self._db.execute(
            "INSERT INTO merge_requests (project_path, iid, source_branch, source_project_id,"
            " target_project_id, state, updated_at) VALUES (?,?,?,?,?,?,?)"
            " ON CONFLICT(project_path, iid) DO UPDATE SET source_branch = excluded.source_branch,"
            " state = excluded.state, updated_at = excluded.updated_at",
            [project_path, iid, source_branch, source_project_id, target_project_id, state, now])

    def ended_merge_requests(self, project_path: str, iid: int | None,
                             ref: str) -> list[tuple[int, str, str | None]]:
        """Merged or closed MRs a pipeline belongs to (by iid, or as a branch pipeline of the MR's source
        branch in this project): (iid, state, source branch or None for a fork's MR)."""
        rows = self._db.execute(
            "SELECT iid, state, source_branch, COALESCE(source_project_id = target_project_id, 1)"
            " FROM merge_requests WHERE project_path = ? AND state IN ('merged', 'closed')"
            " AND (iid = ? OR source_branch = ?)", [project_path, iid, ref]).fetchall()
        return [(int(r[0]), str(r[1]), str(r[2]) if r[3] else None) for r in rows
                if r[0] == iid or r[3]]

    def mr_source_branch(self, project_path: str, iid: int) -> str | None:
        """The branch of this project an MR comes from; None when unknown, or when the MR comes from a
        fork: the fork's branch name says nothing of this project's branch of the same name."""
        row = self._db.execute("SELECT source_branch FROM merge_requests WHERE project_path = ? AND iid = ?"
                               " AND (source_project_id IS NULL OR target_project_id IS NULL"
                               " OR source_project_id = target_project_id)", [project_path, iid]).fetchone()
        return None if row is None else str(row[0])

    def merge_request_state(self, project_path: str, iid: int) -> str | None:
        row = self._db.execute("SELECT state FROM merge_requests WHERE project_path = ? AND iid = ?",
                               [project_path, iid]).fetchone()
        return None if row is None else str(row[0])

    def open_mr_branches(self, project_path: str) -> set[str]:
        rows = self._db.execute("SELECT source_branch FROM merge_requests WHERE project_path = ? AND"
                                " state IN ('opened', 'reopened', 'locked')", [project_path])
        return {r[0] for r in rows}

    # refs ------------------------------------------------------------------------------------------
    def set_ref(self, project_path: str, ref: str, live: bool, now: float) -> None:
        self._db.execute(
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
            rows = self._db.execute(f"SELECT ref, live FROM refs WHERE project_path = ? AND ref IN"
                                    f" ({marks(len(chunk))})", [project_path, *chunk])
            known.update({r[0]: bool(r[1]) for r in rows})
        for ref in wanted:
            if ref in open_branches:
                known[ref] = True
        return known

    def ref_known_live(self, project_path: str, ref: str) -> bool | None:
        """The last push or delete seen for the ref (open MRs not considered), None if never seen."""
        row = self._db.execute("SELECT live FROM refs WHERE project_path = ? AND ref = ?",
                               [project_path, ref]).fetchone()
        return None if row is None else bool(row[0])
