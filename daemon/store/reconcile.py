"""What catching up (SPEC 11) asks of the ledger: which projects and refs it holds, what it knows of an
MR or a ref, and which plans a step made. Read-only except through the ledger's own writes."""

from __future__ import annotations

from daemon.domain.model import Plan
from daemon.store.base import StoreBase
from daemon.store.plans import _PLAN_COLS, _plan


class ReconcileStore(StoreBase):
    def ledger_projects(self) -> list[str]:
        """Every project path that has a pipeline in the ledger."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT project_path FROM pipelines ORDER BY 1")]

    def open_refs(self, project_path: str) -> list[str]:
        """Branches (not git tags) with pipelines whose push records are still live, sorted."""
        rows = self.db.execute(
            "SELECT DISTINCT r.ref FROM push_records r JOIN pipelines p ON p.project_path = r.project_path"
            " AND p.pipeline_id = r.pipeline_id WHERE r.project_path = ? AND r.state IN ('expected',"
            " 'confirmed') AND p.is_tag = 0 ORDER BY r.ref", [project_path])
        return [r[0] for r in rows]

    def earliest_pipeline_at(self, project_path: str) -> float | None:
        row = self.db.execute("SELECT MIN(created_at) FROM pipelines WHERE project_path = ?",
                              [project_path]).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def merge_request_state(self, project_path: str, iid: int) -> str | None:
        row = self.db.execute("SELECT state FROM merge_requests WHERE project_path = ? AND iid = ?",
                              [project_path, iid]).fetchone()
        return None if row is None else str(row[0])

    def ref_known_live(self, project_path: str, ref: str) -> bool | None:
        """The last push or delete seen for the ref (open MRs not considered), None if never seen."""
        row = self.db.execute("SELECT live FROM refs WHERE project_path = ? AND ref = ?",
                              [project_path, ref]).fetchone()
        return None if row is None else bool(row[0])

    def last_plan_id(self) -> int:
        row = self.db.execute("SELECT MAX(id) FROM plans").fetchone()
        return int(row[0] or 0)

    def plans_after(self, project_path: str, plan_id: int) -> list[Plan]:
        """The project's plans made after ``plan_id`` (inside one write transaction: the ones it made)."""
        rows = self.db.execute(f"SELECT {_PLAN_COLS} FROM plans WHERE project_path = ? AND id > ? ORDER BY id",
                               [project_path, plan_id])
        return [_plan(r) for r in rows]
