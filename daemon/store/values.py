"""The key-value table (``kv``): small named values kept between runs with when each was last set (the
worker's heartbeat, catch-up watermarks and cursors, when each project's catch-up last succeeded, when
each project entry of the configuration was first seen).

Holds strings only; it must not become a second place for what has a table of its own.
"""

from __future__ import annotations

from daemon.store.base import StoreBase

#: Where the time of each project's last successful catch-up is kept, by project.
_RECONCILE_SUCCESS = "reconcile:last_success:"
#: When a worker first ran with each ``projects`` entry (its path, ``group/*`` included) configured.
_CONFIGURED_SINCE = "configured:since:"


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

    def reconcile_succeeded(self, project_path: str, now: float) -> None:
        """A catch-up of ``project_path`` ran to its end without an error at ``now``."""
        self.set_value(_RECONCILE_SUCCESS + project_path, repr(float(now)), now)

    def last_reconcile_successes(self) -> dict[str, float]:
        """Project -> when its last successful catch-up ended."""
        rows = self._db.execute("SELECT substr(key, ?), updated_at FROM kv WHERE substr(key, 1, ?) = ?",
                                [len(_RECONCILE_SUCCESS) + 1, len(_RECONCILE_SUCCESS), _RECONCILE_SUCCESS])
        return {str(r[0]): float(r[1]) for r in rows}

    def note_configured(self, entry_paths: list[str], now: float) -> None:
        """The configuration's ``projects`` entries as a worker starts: each one not seen before is
        configured since ``now`` (entries seen earlier keep their first time)."""
        with self.transaction():
            for path in entry_paths:
                self._db.execute("INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) DO NOTHING",
                                 [_CONFIGURED_SINCE + path, repr(float(now)), now])

    def configured_since(self) -> dict[str, float]:
        """``projects`` entry path -> when a worker first ran with it configured."""
        rows = self._db.execute("SELECT substr(key, ?), updated_at FROM kv WHERE substr(key, 1, ?) = ?",
                                [len(_CONFIGURED_SINCE) + 1, len(_CONFIGURED_SINCE), _CONFIGURED_SINCE])
        return {str(r[0]): float(r[1]) for r in rows}
