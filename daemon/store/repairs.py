"""Race repairs: a push the registry notified while the janitor was untagging that very tag, recorded
so the worker puts the pushed digest back, and what came of it.

It must not decide that a push raced an untag (ingest does, from the untags' guard-to-write windows)
nor put anything back (the executor's repair does).
"""

from __future__ import annotations

from daemon.store.base import StoreBase


class RepairStore(StoreBase):
    def add_repair(self, untag_id: int, repository: str, tag: str, digest: str, seen_at: float,
                   now: float) -> bool:
        cur = self._db.execute(
            "INSERT INTO repairs (untag_id, repository, tag, digest, seen_at, state, created_at)"
            " VALUES (?,?,?,?,?,'pending',?) ON CONFLICT DO NOTHING", [untag_id, repository, tag, digest, seen_at, now])
        return cur.rowcount == 1

    def pending_repairs(self, limit: int = 50) -> list[tuple[int, int, str, str, str, str]]:
        """(repair id, untag id, project path, repository, tag, digest to put back)."""
        rows = self._db.execute(
            "SELECT r.id, r.untag_id, u.project_path, r.repository, r.tag, r.digest FROM repairs r"
            " JOIN untags u ON u.id = r.untag_id WHERE r.state = 'pending' ORDER BY r.id LIMIT ?", [limit])
        return [(int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5])) for r in rows]

    def finish_repair(self, repair_id: int, state: str, note: str, now: float) -> bool:
        """Record what came of a pending repair; False when it was no longer pending: another worker
        finished it first, and what that one found stands."""
        cur = self._db.execute("UPDATE repairs SET state = ?, note = ?, finished_at = ? WHERE id = ?"
                               " AND state = 'pending'", [state, note, now, repair_id])
        return cur.rowcount == 1
