"""Storage: all SQL lives here; the rest of the janitor asks for domain objects.

SQLite (WAL) through sqlite-utils is the embedded default. Nothing outside this package may assume
SQLite: no connection, row or ``sqlite_utils`` object leaves it, and claims are atomic statements.
``Store`` is assembled from one part per thing stored (the inbox, the ledger, refs and merge requests,
plans, untags, race repairs, operator requests, registry request counters, project problems, ignored
deliveries, notes on merge requests, the key-value table) and the counts that read across them; callers
see only its methods.
"""

from __future__ import annotations

import sqlite_utils

from daemon.store.counts import CountStore
from daemon.store.db import ConnectionPool
from daemon.store.ignored import IgnoredCount, IgnoredStore
from daemon.store.inbox import InboxEvent, InboxStore
from daemon.store.ledger import LedgerStore
from daemon.store.mr_notes import MrNote, MrNoteStore, MrPlan
from daemon.store.operator_requests import OperatorRequest, RequestStore
from daemon.store.plans import PlanStore
from daemon.store.problems import ProblemStore, ProjectProblem
from daemon.store.refs import RefStore
from daemon.store.registry_requests import LatencyHistogram, RegistryRequestStore
from daemon.store.repairs import RepairStore
from daemon.store.schema import migrate
from daemon.store.untags import UntagStore, UntagView
from daemon.store.values import ValueStore

__all__ = ["IgnoredCount", "InboxEvent", "LatencyHistogram", "MrNote", "MrPlan", "OperatorRequest",
           "ProjectProblem", "Store", "UntagView", "open_store"]


class Store(InboxStore, LedgerStore, RefStore, PlanStore, UntagStore, RepairStore, RequestStore,
            RegistryRequestStore, ProblemStore, ValueStore, CountStore, IgnoredStore,
            MrNoteStore):
    """The one storage object the web app and the worker are given."""

    @property
    def db(self) -> sqlite_utils.Database:
        """The SQLite database itself, for tests and benchmarks that inspect or bulk-load the file. The
        janitor never uses it: everything it stores or reads goes through the methods above."""
        return self._db

    def close(self) -> None:
        self._pool.close()


def open_store(url_or_path: str) -> Store:
    """Open (creating and migrating as needed) the database at ``sqlite:///path`` or a plain path."""
    path = url_or_path.removeprefix("sqlite:///")
    store = Store(ConnectionPool(path))
    migrate(store._db)
    return store
