"""Project problems: what the worker found wrong with a project's setup while running (its registry token
may not delete, ``no_delete_permission``), kept until it is fixed so status, the dashboard and the metrics
can say which project is misconfigured and how to fix it.

One row per (project, kind): finding it again keeps when it was first seen and updates the message; the
worker clears it once an untag of the project succeeds. It must not decide what counts as a problem
(the executor does) nor hold anything an untag row already says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from daemon.store.base import StoreBase

_PROBLEM_COLS = "project_path, kind, message, since, updated_at"


@dataclass(frozen=True)
class ProjectProblem:
    """``kind`` (``no_delete_permission``) is wrong with ``project_path``; ``message`` says what was found
    and how to fix it. ``since``: first found; ``updated_at``: last found again."""

    project_path: str
    kind: str
    message: str
    since: float
    updated_at: float


def _problem(row: Sequence[Any]) -> ProjectProblem:
    return ProjectProblem(project_path=str(row[0]), kind=str(row[1]), message=str(row[2] or ""),
                          since=float(row[3]), updated_at=float(row[4]))


class ProblemStore(StoreBase):
    def set_project_problem(self, project_path: str, kind: str, message: str, now: float) -> None:
        """Record (or find again) a problem of a project."""
        self._db.execute(
            "INSERT INTO project_problems (project_path, kind, message, since, updated_at) VALUES (?,?,?,?,?)"
            " ON CONFLICT(project_path, kind) DO UPDATE SET message = excluded.message,"
            " updated_at = excluded.updated_at", [project_path, kind, message, now, now])

    def clear_project_problem(self, project_path: str, kind: str) -> bool:
        """Forget a problem that was fixed; True when there was one."""
        cur = self._db.execute("DELETE FROM project_problems WHERE project_path = ? AND kind = ?",
                               [project_path, kind])
        return cur.rowcount > 0

    def project_problems(self, project_path: str | None = None) -> list[ProjectProblem]:
        """Open problems (of one project, or of all), by project and kind."""
        if project_path is None:
            rows = self._db.execute(f"SELECT {_PROBLEM_COLS} FROM project_problems ORDER BY project_path, kind")
        else:
            rows = self._db.execute(f"SELECT {_PROBLEM_COLS} FROM project_problems WHERE project_path = ?"
                                    " ORDER BY kind", [project_path])
        return [_problem(r) for r in rows]
