"""The inbox: every authentic event, stored raw before the web answers 2xx (S9), deduplicated (S8), and
whether (and with what error) the worker has applied it. A delivery may also carry a key of its body,
so that a resend GitLab sent with new delivery headers is found by its body within a given time.

It must not read what an event says: parsing and applying events is the ingest stage's, and nobody may
answer 2xx for a delivery this module has not committed. Events the worker could not apply keep their
error and are kept as long as plans (``storage.retention.plans``; applied events go after
``storage.retention.events``, ``daemon.store.retention``): they are what ``unusable_events`` lists.
Storing an event and setting one aside are counted in ``counters`` by the schema's triggers, in the same
statement (``daemon.store.counters``).

Deliveries arriving together in one web process are committed together (group commit): the first
request thread to take the write turn inserts every delivery queued so far in one transaction, and each
request answers once the transaction holding its delivery has committed. Under load this writes each
shared page once per batch instead of once per delivery, and the threads of a process queue on a lock
instead of SQLite's busy-wait sleeps; an idle janitor still writes each delivery on its own at once.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from daemon.store.base import StoreBase

# Nothing is inserted when the delivery key was stored before, nor when a delivery with the body key to look
# for was received since the given time (the last three parameters: that body key twice, NULL to not look,
# and the time).
# (The cast gives PostgreSQL the type of a parameter that may be NULL.) The unique index on the delivery key
# decides between deliveries stored at once; on PostgreSQL a body key is locked while it is looked for
# (``_lock_bodies``), as SQLite's one writer at a time does for it.
_INSERT = ("INSERT INTO inbox (delivery_key, source, kind, project_path, headers, body, received_at,"
           " body_key) SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE CAST(? AS TEXT) IS NULL OR NOT EXISTS"
           " (SELECT 1 FROM inbox WHERE body_key = ? AND received_at >= ?) ON CONFLICT DO NOTHING")


@dataclass(frozen=True)
class InboxEvent:
    id: int
    source: str
    kind: str
    project_path: str | None
    headers: Mapping[str, str]
    body: bytes
    received_at: float


@dataclass(frozen=True)
class UnusableEvent:
    """An event the worker could not apply and set aside (``error``: what applying it raised) so that the
    events after it were applied."""

    id: int
    source: str
    kind: str
    project_path: str | None
    received_at: float
    set_aside_at: float
    error: str


class _Delivery:
    __slots__ = ("error", "row", "stored", "written")

    def __init__(self, row: tuple[Any, ...]) -> None:
        self.row = row
        self.stored = False
        self.written = False
        self.error: BaseException | None = None


class _GroupCommit:
    """The deliveries of one process waiting for their transaction."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.turn = threading.Lock()  # held by the thread writing a batch
        self.queue_lock = threading.Lock()
        self.queue: list[_Delivery] = []


_GROUPS_LOCK = threading.Lock()


class InboxStore(StoreBase):
    _inbox_group: _GroupCommit | None = None

    def add_event(self, *, delivery_key: str, source: str, kind: str, project_path: str | None,
                  headers: Mapping[str, str], body: bytes, received_at: float, body_key: str | None = None,
                  same_body_since: float | None = None) -> bool:
        """Store one delivery durably (committed before this returns); False when this delivery key was
        stored before, or when ``same_body_since`` is given and a delivery with the same ``body_key`` was
        received since then (a resend that came with new delivery headers)."""
        check = body_key if same_body_since is not None else None
        row = (delivery_key, source, kind, project_path, json.dumps(dict(headers)), body, received_at, body_key,
               check, check, same_body_since)
        if self._pool.in_transaction():  # the caller's own transaction decides
            self._lock_bodies([row])
            return self._db.execute(_INSERT, row).rowcount == 1
        mine = _Delivery(row)
        group = self._group()
        with group.queue_lock:
            group.queue.append(mine)
        with group.turn:
            if not mine.written:  # nobody took it into a batch while this thread waited: write them all
                with group.queue_lock:
                    batch, group.queue = group.queue, []
                self._write_batch(batch)
        if mine.error is not None:
            raise mine.error
        return mine.stored

    def _group(self) -> _GroupCommit:
        group = self._inbox_group
        if group is None or group.pid != os.getpid():  # new, or inherited through a fork
            with _GROUPS_LOCK:
                group = self._inbox_group
                if group is None or group.pid != os.getpid():
                    group = self._inbox_group = _GroupCommit()
        return group

    def _lock_bodies(self, rows: list[tuple[Any, ...]]) -> None:
        """On PostgreSQL, in the transaction about to insert ``rows``: lock each body key looked for (in
        one order, so two batches never wait for each other), so that two processes storing the same
        body at once do not both find it absent."""
        for body_key in sorted({str(row[8]) for row in rows if row[8] is not None}):
            self._lock_key(f"inbox body {body_key}")

    def _write_batch(self, batch: list[_Delivery]) -> None:
        db = self._db
        try:
            if len(batch) == 1 and (batch[0].row[8] is None or not self._postgres):
                batch[0].stored = db.execute(_INSERT, batch[0].row).rowcount == 1  # its own transaction
            else:
                with self.transaction():
                    self._lock_bodies([delivery.row for delivery in batch])
                    for delivery in batch:
                        delivery.stored = db.execute(_INSERT, delivery.row).rowcount == 1
        except Exception as exc:
            if len(batch) > 1:  # one bad delivery must not fail the others: each on its own
                for delivery in batch:
                    self._write_batch([delivery])
                return
            batch[0].error = exc  # nobody may answer 2xx for a delivery that is not stored
        except BaseException as exc:
            for delivery in batch:
                delivery.error = exc
            raise
        finally:
            for delivery in batch:
                delivery.written = True

    def pending_events(self, limit: int = 200) -> list[InboxEvent]:
        rows = self._db.execute(
            "SELECT id, source, kind, project_path, headers, body, received_at FROM inbox"
            " WHERE processed_at IS NULL ORDER BY id LIMIT ?", [limit]).fetchall()
        return [InboxEvent(r[0], r[1], r[2], r[3], json.loads(r[4] or "{}"), bytes(r[5]), r[6])
                for r in rows]

    def pending_registry_bodies(self, limit: int = 200) -> list[tuple[bytes, float]]:
        """The raw bodies (and arrival times) of the newest registry notifications not yet applied, newest
        first: pushes the ledger has not observed yet."""
        rows = self._db.execute(
            "SELECT body, received_at FROM inbox WHERE processed_at IS NULL AND source = 'registry'"
            " ORDER BY id DESC LIMIT ?", [limit]).fetchall()
        return [(bytes(r[0]), float(r[1])) for r in rows]

    def mark_processed(self, event_id: int, now: float, error: str | None = None) -> None:
        """The worker is done with an event: applied, or (``error``) set aside as unusable."""
        self._db.execute("UPDATE inbox SET processed_at = ?, error = ? WHERE id = ?", [now, error, event_id])

    def is_storage_failure(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised while an event was applied, is a failure of storage itself (locked, I/O,
        disk full, a damaged file, the transaction or connection gone), which no event is to blame for,
        rather than a refusal of what the event asked it to keep (a value it cannot hold, a constraint)."""
        if self._pool.is_storage_failure(exc):
            return True
        try:
            return not self._pool.in_transaction()
        except Exception:
            return True

    def unusable_events(self, limit: int = 20) -> list[UnusableEvent]:
        """The newest events the worker set aside as unusable, newest first."""
        rows = self._db.execute(
            "SELECT id, source, kind, project_path, received_at, processed_at, error FROM inbox"
            " WHERE error IS NOT NULL ORDER BY id DESC LIMIT ?", [limit]).fetchall()
        return [UnusableEvent(int(r[0]), str(r[1]), str(r[2]), None if r[3] is None else str(r[3]), float(r[4]),
                              float(r[5] or 0.0), str(r[6])) for r in rows]

    def last_pending_event_id(self) -> int:
        """The id of the newest event not yet applied (0 when none): one read of the pending index, cheap
        enough for the worker to ask several times a second whether something arrived."""
        row = self._db.execute("SELECT MAX(id) FROM inbox WHERE processed_at IS NULL").fetchone()
        return int(row[0] or 0)

    def queue_depth(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM inbox WHERE processed_at IS NULL").fetchone()[0])

    def oldest_pending_event(self) -> float | None:
        row = self._db.execute("SELECT MIN(received_at) FROM inbox WHERE processed_at IS NULL").fetchone()
        return None if row is None or row[0] is None else float(row[0])
