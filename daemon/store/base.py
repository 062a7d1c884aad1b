"""What every part of the store shares: this thread's connection, write transactions, the health probe.

Stores nothing itself. The connection (``_db``) is the parts' own: no method of any part returns it, a
row, a cursor or a ``sqlite_utils`` object, so that another engine can stand behind the same methods.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

import sqlite_utils

from daemon.store.db import ConnectionPool, write_tx


class StoreBase:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    @property
    def _db(self) -> sqlite_utils.Database:
        """This thread's connection."""
        return self._pool.get()

    def release_connection(self) -> None:
        """Close the calling thread's connection: a short-lived thread that used the store calls this
        before it ends (the next call from that thread would open a new one)."""
        self._pool.release()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (taking the write lock up front); nested, a savepoint: what a failing
        inner block wrote is undone while the outer transaction goes on."""
        with write_tx(self._db):
            yield

    def writable(self, now: float, wait: float) -> str | None:
        """None when a row could be stored now, else why not. Proven by storing one: a new connection (what
        a new request thread opens) takes the write lock within ``wait`` seconds and commits a ``kv`` row
        (``store_probe``), which fails as an insert into the inbox would on a read-only file, directory or
        volume, a full disk, a file removed or replaced under the running process, or a lock held past
        ``wait``."""
        try:
            with self._pool.probe_connection(wait) as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute("INSERT INTO kv (key, value, updated_at) VALUES ('store_probe', '', ?)"
                                 " ON CONFLICT(key) DO UPDATE SET updated_at = excluded.updated_at", [now])
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            return str(exc) or exc.__class__.__name__
        return None
