"""What every part of the store shares: the connection pool and the key-value table."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlite_utils

from daemon.store.db import ConnectionPool, write_tx


class StoreBase:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    @property
    def db(self) -> sqlite_utils.Database:
        return self.pool.get()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (taking the write lock up front); nested, a savepoint: what a failing
        inner block wrote is undone while the outer transaction goes on."""
        with write_tx(self.db):
            yield

    def get_value(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def set_value(self, key: str, value: str, now: float) -> None:
        self.db.execute(
            "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            [key, value, now])

    def value_age(self, key: str, now: float) -> float | None:
        row = self.db.execute("SELECT updated_at FROM kv WHERE key = ?", [key]).fetchone()
        return None if row is None else now - float(row[0])

    def writable(self) -> bool:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("ROLLBACK")
            return True
        except Exception:
            return False
