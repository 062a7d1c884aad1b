"""Notes on merge requests (``mr_note: true``): at most one per merge request, with where its sending
stands, so that neither a crash nor a second plan of the same merge request ever posts a second one.

A done plan of a merge request is looked at once (and again only if it changes, e.g. after a retry):
``mr_note_plans`` finds the ones not looked at yet through a partial index, ``check_mr_plan`` marks one
looked at and, in the same transaction, queues the merge request's note if it is to have one. A queued
note is claimed (``sending``, attempts counted) before GitLab is asked and finished after:

    pending -> sending -> posted     GitLab took it (``note_id``)
                       -> refused    GitLab said no (401, 403, 404, ...): never asked again
                       -> failed     GitLab could not be reached, attempt after attempt: given up
                       -> skipped    the project no longer wants a note (``mr_note`` off, not configured)
                       -> pending    a transient failure: asked again at ``due_at``

It must not decide whether a merge request gets a note or what it says (``daemon.execute.notes`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from daemon.store.base import StoreBase

#: Plans of merge requests done and not looked at since they last changed: every term is one of the
#: partial index's (``schema._v10_mr_notes``), so that only those are read.
_UNCHECKED = ("state = 'done' AND trigger_kind IN ('merge_request_merged', 'merge_request_closed')"
              " AND mr_iid IS NOT NULL AND mr_note_checked IS DISTINCT FROM updated_at")
_NOTE_COLS = "id, project_path, mr_iid, plan_id, state, attempts, note_id, detail, created_at, updated_at, due_at"


@dataclass(frozen=True)
class MrPlan:
    """A done plan of a merge request, not looked at since it last changed; ``done`` untags it made."""

    plan_id: int
    project_path: str
    mr_iid: int
    trigger_kind: str
    updated_at: float
    done: int


@dataclass(frozen=True)
class MrNote:
    """The note of merge request ``mr_iid`` of ``project_path``, reporting plan ``plan_id``. ``attempts``
    counts the times sending began (a claim), ``detail`` says why the last attempt did not post."""

    id: int
    project_path: str
    mr_iid: int
    plan_id: int
    state: str
    attempts: int
    note_id: int | None
    detail: str
    created_at: float
    updated_at: float
    due_at: float


def _note(row: Sequence[Any]) -> MrNote:
    return MrNote(id=int(row[0]), project_path=str(row[1]), mr_iid=int(row[2]), plan_id=int(row[3]),
                  state=str(row[4]), attempts=int(row[5] or 0), note_id=None if row[6] is None else int(row[6]),
                  detail=str(row[7] or ""), created_at=float(row[8]), updated_at=float(row[9]),
                  due_at=float(row[10]))


class MrNoteStore(StoreBase):
    def mr_note_plans(self, limit: int = 100) -> list[MrPlan]:
        """Done plans of merge requests not looked at since they last changed, oldest first."""
        rows = self._db.execute(
            "SELECT id, project_path, mr_iid, trigger_kind, updated_at, (SELECT COUNT(*) FROM untags u"
            f" WHERE u.plan_id = plans.id AND u.outcome = 'done') FROM plans WHERE {_UNCHECKED}"
            " ORDER BY id LIMIT ?", [limit])
        return [MrPlan(plan_id=int(r[0]), project_path=str(r[1]), mr_iid=int(r[2]), trigger_kind=str(r[3]),
                       updated_at=float(r[4]), done=int(r[5])) for r in rows]

    def check_mr_plan(self, plan: MrPlan, *, queue: bool, now: float) -> bool:
        """Mark ``plan`` looked at (as of its last change) and, with ``queue``, queue its merge request's
        note unless that merge request has one already (posted, refused or queued: one per MR). True
        when a note was queued here."""
        with self.transaction():
            self._db.execute("UPDATE plans SET mr_note_checked = ? WHERE id = ?", [plan.updated_at, plan.plan_id])
            if not queue:
                return False
            cur = self._db.execute(
                "INSERT INTO mr_notes (project_path, mr_iid, plan_id, state, attempts, created_at, updated_at,"
                " due_at) VALUES (?,?,?,'pending',0,?,?,?) ON CONFLICT(project_path, mr_iid) DO NOTHING",
                [plan.project_path, plan.mr_iid, plan.plan_id, now, now, now])
            return cur.rowcount == 1

    def claim_mr_notes(self, now: float, lease_seconds: float, limit: int = 20) -> list[MrNote]:
        """Take the notes due (and those whose sender's lease ran out: it may have died mid-send) for
        ``lease_seconds``: ``sending``, one more attempt counted, before GitLab is asked."""
        rows = self._claim(
            "mr_notes", "state IN ('pending', 'sending') AND ((state = 'pending' AND due_at <= ?) OR"
            " (state = 'sending' AND lease_until < ?))", [now, now], "due_at, id", limit,
            "state = 'sending', attempts = attempts + 1, lease_until = ?, updated_at = ?", [now + lease_seconds, now],
            _NOTE_COLS)
        return sorted((_note(r) for r in rows), key=lambda n: (n.due_at, n.id))

    def finish_mr_note(self, note_id: int, state: str, now: float, *, gitlab_note_id: int | None = None,
                       detail: str | None = None) -> None:
        """End a claimed note: ``posted`` (with GitLab's note id), ``refused``, ``failed`` or ``skipped``."""
        self._db.execute("UPDATE mr_notes SET state = ?, note_id = COALESCE(?, note_id), detail = ?,"
                         " lease_until = NULL, updated_at = ? WHERE id = ?",
                         [state, gitlab_note_id, detail, now, note_id])

    def retry_mr_note(self, note_id: int, due_at: float, now: float, detail: str) -> None:
        """A claimed note GitLab could not take now: pending again, due at ``due_at``."""
        self._db.execute("UPDATE mr_notes SET state = 'pending', due_at = ?, detail = ?, lease_until = NULL,"
                         " updated_at = ? WHERE id = ?", [due_at, detail, now, note_id])

    def mr_note(self, project_path: str, mr_iid: int) -> MrNote | None:
        row = self._db.execute(f"SELECT {_NOTE_COLS} FROM mr_notes WHERE project_path = ? AND mr_iid = ?",
                               [project_path, mr_iid]).fetchone()
        return None if row is None else _note(row)
