"""What several workers share through storage: who is working (``workers``: a row per worker process, its
last heartbeat and the plan it runs), which worker applies an inbox event, the registry's rate limit
(``rate_buckets``: a token bucket per registry), and each project's hourly budget while plans run
(``budget_holds``: the untags a running plan is about to send, counted against ``max_untags_per_hour`` by
every other worker).

Every claim here is one atomic statement or one write transaction, written so that SQLite and PostgreSQL
both accept it and both serialize it: a token is taken by one ``UPDATE ... WHERE tokens >= 1``; a budget is
held after taking the project's own row of ``budget_holds`` (``plan_id`` 0), which PostgreSQL locks until
the transaction ends and SQLite's write lock covers anyway. Must not: decide how many untags a project may
have (the executor passes the limit) or how fast a registry may be asked (the limiter passes rate and
burst).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.store.base import StoreBase


@dataclass(frozen=True)
class WorkerRow:
    id: str
    host: str
    pid: int
    started_at: float
    beat_at: float
    plan_id: int | None


def _refill(now: float, rate: float, burst: float) -> tuple[str, list[float]]:
    """The SQL of a bucket's level at ``now`` (refilled by the time since ``updated_at``, at most ``burst``;
    a clock behind ``updated_at`` refills nothing), with its parameters."""
    sql = ("(CASE WHEN updated_at >= ? THEN (CASE WHEN tokens > ? THEN ? ELSE tokens END)"
           " WHEN tokens + (? - updated_at) * ? >= ? THEN ? ELSE tokens + (? - updated_at) * ? END)")
    return sql, [now, burst, burst, now, rate, burst, burst, now, rate]


class WorkerStore(StoreBase):
    # workers ----------------------------------------------------------------------------------------
    def worker_beat(self, worker_id: str, host: str, pid: int, started_at: float, now: float,
                    plan_id: int | None) -> None:
        """The worker ``worker_id`` is alive at ``now``, running ``plan_id`` (None: no plan)."""
        self._db.execute(
            "INSERT INTO workers (id, host, pid, started_at, beat_at, plan_id) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET beat_at = excluded.beat_at, plan_id = excluded.plan_id",
            [worker_id, host, pid, started_at, now, plan_id])

    def remove_worker(self, worker_id: str) -> None:
        """The worker stopped (or was found gone): it is no longer listed."""
        self._db.execute("DELETE FROM workers WHERE id = ?", [worker_id])

    def workers_of_host(self, host: str) -> list[WorkerRow]:
        """The workers that beat from ``host``, the latest started first."""
        rows = self._db.execute("SELECT id, host, pid, started_at, beat_at, plan_id FROM workers WHERE host = ?"
                                " ORDER BY started_at DESC, id", [host])
        return [_worker(r) for r in rows]

    def get_worker(self, worker_id: str) -> WorkerRow | None:
        row = self._db.execute("SELECT id, host, pid, started_at, beat_at, plan_id FROM workers WHERE id = ?",
                               [worker_id]).fetchone()
        return None if row is None else _worker(row)

    def live_workers(self, since: float) -> list[WorkerRow]:
        """The workers that beat at ``since`` or later, the latest started first."""
        rows = self._db.execute("SELECT id, host, pid, started_at, beat_at, plan_id FROM workers"
                                " WHERE beat_at >= ? ORDER BY started_at DESC, id", [since])
        return [_worker(r) for r in rows]

    def any_worker_row(self) -> bool:
        """Whether any worker ever beat into ``workers`` (a worker of a release before it only beat the one
        heartbeat value)."""
        return self._db.execute("SELECT 1 FROM workers LIMIT 1").fetchone() is not None

    def prune_workers(self, before: float) -> int:
        """Forget the workers whose last beat is older than ``before``; returns how many."""
        return int(self._db.execute("DELETE FROM workers WHERE beat_at < ?", [before]).rowcount or 0)

    # inbox events ---------------------------------------------------------------------------------------
    def claim_event(self, event_id: int, now: float) -> bool:
        """Inside the transaction that applies an inbox event: take it, unless another worker has (then
        False, and nothing is to be done with it). The row stays this transaction's until it ends (locked
        on PostgreSQL; SQLite's write lock covers it), and a rollback hands the event back."""
        cur = self._db.execute("UPDATE inbox SET processed_at = ? WHERE id = ? AND processed_at IS NULL",
                               [now, event_id])
        return bool(cur.rowcount)

    # the registry's rate limit ----------------------------------------------------------------------
    def take_rate_token(self, name: str, rate: float, burst: int, now: float) -> float:
        """Take one token of the bucket ``name`` (``rate`` per second, up to ``burst``; a new bucket
        starts full): 0.0 when taken, else the seconds until one is due (nothing taken)."""
        level, params = _refill(now, rate, float(burst))
        cur = self._db.execute(f"UPDATE rate_buckets SET tokens = {level} - 1,"
                               " updated_at = (CASE WHEN updated_at > ? THEN updated_at ELSE ? END)"
                               f" WHERE name = ? AND {level} >= 1", [*params, now, now, name, *params])
        if cur.rowcount:
            return 0.0
        row = self._db.execute(f"SELECT {level} FROM rate_buckets WHERE name = ?", [*params, name]).fetchone()
        if row is None:
            self._db.execute("INSERT INTO rate_buckets (name, tokens, updated_at) VALUES (?, ?, ?)"
                             " ON CONFLICT(name) DO NOTHING", [name, float(burst), now])
            return self.take_rate_token(name, rate, burst, now)
        return max((1.0 - float(row[0])) / rate, 0.001)

    # the hourly budget ------------------------------------------------------------------------------
    def hold_budget(self, plan_id: int, project_path: str, holder: str, want: int, limit: int,
                    since: float, now: float) -> int:
        """Hold up to ``want`` untags of ``project_path``'s budget (``limit`` untags done since ``since``)
        for the plan ``plan_id`` that ``holder`` runs; returns how many were granted (0: spent). Counted
        against it: the project's untags done since ``since``, and what the other running plans hold and
        have not done yet (a hold counts while its plan runs under the same holder with its lease)."""
        with self.transaction():
            self._db.execute(  # the project's row: one holder at a time per project (locked on PostgreSQL)
                "INSERT INTO budget_holds (project_path, plan_id, holder, count, held_at) VALUES (?, 0, '', 0, ?)"
                " ON CONFLICT(project_path, plan_id) DO UPDATE SET held_at = excluded.held_at", [project_path, now])
            done = int(self._db.execute("SELECT COUNT(*) FROM untags WHERE project_path = ? AND outcome = 'done'"
                                        " AND finished_at >= ?", [project_path, since]).fetchone()[0])
            held = self._db.execute(
                "SELECT h.count, (SELECT COUNT(*) FROM untags u WHERE u.plan_id = h.plan_id AND u.outcome = 'done'"
                " AND u.finished_at >= h.held_at) FROM budget_holds h JOIN plans p ON p.id = h.plan_id"
                " WHERE h.project_path = ? AND h.plan_id <> 0 AND h.plan_id <> ? AND p.state = 'running'"
                " AND p.lease_holder = h.holder AND p.lease_until >= ?", [project_path, plan_id, now]).fetchall()
            in_flight = sum(max(0, int(count) - int(finished)) for count, finished in held)
            granted = max(0, min(want, limit - done - in_flight))
            self._db.execute(
                "INSERT INTO budget_holds (project_path, plan_id, holder, count, held_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(project_path, plan_id) DO UPDATE SET holder = excluded.holder,"
                " count = excluded.count, held_at = excluded.held_at", [project_path, plan_id, holder, granted, now])
        return granted

    def release_budget(self, plan_id: int, holder: str) -> None:
        """The hold ``holder`` has for the plan ends (its batch's outcomes are stored, or it stopped)."""
        self._db.execute("DELETE FROM budget_holds WHERE plan_id = ? AND plan_id <> 0 AND holder = ?",
                         [plan_id, holder])


def _worker(row: tuple[Any, ...]) -> WorkerRow:
    return WorkerRow(str(row[0]), str(row[1]), int(row[2]), float(row[3]), float(row[4]),
                     None if row[5] is None else int(row[5]))
