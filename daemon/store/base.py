"""What every part of the store shares: this thread's connection, write transactions, the health probe.

Stores nothing itself. The connection (``_db``) is the parts' own: no method of any part returns it, a
row, a cursor or a ``sqlite_utils`` object, so that another engine can stand behind the same methods.
"""

from __future__ import annotations

import contextlib
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

    def writable(self) -> bool:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")
            return True
        except Exception:
            return False
