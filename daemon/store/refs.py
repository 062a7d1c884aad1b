"""Branches: the refs seen pushed or deleted, and the merge requests whose state says whether their
source branch is still live.

It answers what the ledger knows of a ref or an MR; it must not ask GitLab (catching up does, then
writes here) nor decide what a dead branch means for its tags (the planner does).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from daemon.store.base import StoreBase
from daemon.store.rows import marks

# A merge request's own refs in its target project: live while the MR is open.
_MR_REF = re.compile(r"^refs/merge-requests/(\d+)/")
_OPEN_STATES = ("opened", "reopened", "locked")


class RefStore(StoreBase):
    # merge requests --------------------------------------------------------------------------------
    def set_merge_request(self, project_path: str, iid: int, source_branch: str, state: str,
                          source_project_id: int | None, target_project_id: int | None,
                          now: float) -> None:
        """Record an MR's state as a hook or the API gave it. A merged MR stays merged: GitLab never
        reopens one, so a hook sent before the merge and delivered after it says nothing new."""
        self._db.execute(
            "INSERT INTO merge_requests (project_path, iid, source_branch, source_project_id,"
            " target_project_id, state, updated_at) VALUES (?,?,?,?,?,?,?)"
            " ON CONFLICT(project_path, iid) DO UPDATE SET source_branch = excluded.source_branch,"
            " state = CASE WHEN merge_requests.state = 'merged' THEN 'merged' ELSE excluded.state END,"
            " updated_at = excluded.updated_at",
            [project_path, iid, source_branch, source_project_id, target_project_id, state, now])

    def merge_request_trigger_raised(self, project_path: str, iid: int) -> str | None:
        """The state (``merged`` or ``closed``) whose trigger was raised for this MR since it was last
        open, or None: no merge or close trigger raised yet (or the MR was reopened since)."""
        row = self._db.execute("SELECT trigger_raised FROM merge_requests WHERE project_path = ? AND iid = ?",
                               [project_path, iid]).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def set_merge_request_trigger_raised(self, project_path: str, iid: int, state: str | None,
                                         now: float) -> None:
        """Note that the trigger of ``state`` was raised for this MR (None: it is open again). The MR
        must have been recorded first (``set_merge_request``)."""
        self._db.execute("UPDATE merge_requests SET trigger_raised = ?, updated_at = ? WHERE project_path = ?"
                         " AND iid = ?", [state, now, project_path, iid])

    def merge_request_branch(self, project_path: str, iid: int) -> str | None:
        """An MR's source branch as its hooks named it, in whichever project it lives (a fork's too):
        what GitLab's ``$CI_COMMIT_REF_NAME`` says in the MR's pipelines."""
        row = self._db.execute("SELECT source_branch FROM merge_requests WHERE project_path = ? AND iid = ?",
                               [project_path, iid]).fetchone()
        return None if row is None or not row[0] else str(row[0])

    def ended_merge_requests(self, project_path: str, iid: int | None,
                             ref: str) -> list[tuple[int, str, str | None]]:
        """Merged or closed MRs a pipeline belongs to (by iid, or as a branch pipeline of the MR's source
        branch in this project): (iid, state, source branch or None for a fork's MR)."""
        rows = self._db.execute(
            "SELECT iid, state, source_branch, CASE WHEN source_project_id IS NULL OR target_project_id IS NULL"
            " OR source_project_id = target_project_id THEN 1 ELSE 0 END"
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
        """Branches of this project that an open MR comes from (a fork's MR names a branch of the fork)."""
        rows = self._db.execute("SELECT source_branch FROM merge_requests WHERE project_path = ? AND"
                                f" state IN ({marks(len(_OPEN_STATES))}) AND (source_project_id IS NULL"
                                " OR target_project_id IS NULL OR source_project_id = target_project_id)",
                                [project_path, *_OPEN_STATES])
        return {r[0] for r in rows}

    # refs ------------------------------------------------------------------------------------------
    def set_ref(self, project_path: str, ref: str, live: bool, now: float, *,
                deleted_at: float | None = None) -> None:
        """Record a ref live or deleted. A deletion keeps when it happened (``deleted_at``, else ``now``):
        only a pipeline created after it shows the branch came back."""
        gone = None if live else (now if deleted_at is None else deleted_at)
        self._db.execute(
            "INSERT INTO refs (project_path, ref, live, updated_at, deleted_at) VALUES (?,?,?,?,?)"
            " ON CONFLICT(project_path, ref) DO UPDATE SET live = excluded.live,"
            " updated_at = excluded.updated_at, deleted_at = excluded.deleted_at",
            [project_path, ref, int(live), now, gone])

    def ref_deletion(self, project_path: str, ref: str) -> float | None:
        """When the ref's deletion was seen, if the last the ledger knows of it is a deletion."""
        row = self._db.execute("SELECT COALESCE(deleted_at, updated_at) FROM refs WHERE project_path = ?"
                               " AND ref = ? AND live = 0", [project_path, ref]).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def ref_states(self, project_path: str, refs: Iterable[str]) -> dict[str, bool | None]:
        """Known liveness: an open MR's source branch is live; an MR's own ref
        (``refs/merge-requests/<iid>/...``) lives as long as the MR is open; else the last push/delete
        seen."""
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
            match = _MR_REF.match(ref)
            if match:
                state = self.merge_request_state(project_path, int(match.group(1)))
                if state is not None:
                    known[ref] = state in _OPEN_STATES
        return known

    def ref_known_live(self, project_path: str, ref: str) -> bool | None:
        """The last push or delete seen for the ref (open MRs not considered), None if never seen."""
        row = self._db.execute("SELECT live FROM refs WHERE project_path = ? AND ref = ?",
                               [project_path, ref]).fetchone()
        return None if row is None else bool(row[0])
