"""The key-value table (``kv``): small named values kept between runs with when each was last set (the
worker's heartbeat, catch-up watermarks and cursors).

Holds strings only; it must not become a second place for what has a table of its own.
"""

from __future__ import annotations

from daemon.store.base import StoreBase


class ValueStore(StoreBase):
    def get_value(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def set_value(self, key: str, value: str, now: float) -> None:
        self._db.execute(
            "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            [key, value, now])

    def value_age(self, key: str, now: float) -> float | None:
        row = self._db.execute("SELECT updated_at FROM kv WHERE key = ?", [key]).fetchone()
        return None if row is None else now - float(row[0])
