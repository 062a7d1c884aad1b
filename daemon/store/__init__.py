"""Storage: all SQL lives here; the rest of the janitor asks for domain objects.

SQLite (WAL) through sqlite-utils is the embedded default. Nothing outside this package may assume
SQLite: no connection, row or ``sqlite_utils`` object leaves it, and claims are atomic statements.
"""

from __future__ import annotations

from daemon.store.admin import AdminStore
from daemon.store.db import ConnectionPool
from daemon.store.inbox import InboxEvent, InboxStore
from daemon.store.ledger import LedgerStore
from daemon.store.plans import PlanStore
from daemon.store.reconcile import ReconcileStore
from daemon.store.schema import migrate
from daemon.store.stats import StatsStore

__all__ = ["InboxEvent", "Store", "open_store"]


class Store(InboxStore, LedgerStore, PlanStore, StatsStore, AdminStore, ReconcileStore):
    """The one storage object the web app and the worker are given."""

    def close(self) -> None:
        self.pool.close()


def open_store(url_or_path: str) -> Store:
    """Open (creating and migrating as needed) the database at ``sqlite:///path`` or a plain path."""
    path = url_or_path.removeprefix("sqlite:///")
    store = Store(ConnectionPool(path))
    migrate(store.db)
    return store
