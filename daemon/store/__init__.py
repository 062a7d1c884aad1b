"""Storage: all SQL lives here; the rest of the janitor asks for domain objects.

SQLite (WAL) through sqlite-utils is the embedded default. Nothing outside this package may assume
SQLite: no connection, row or ``sqlite_utils`` object leaves it, and claims are atomic statements.
``Store`` is assembled from one part per thing stored (the inbox, the ledger, refs and merge requests,
plans, untags, race repairs, operator requests, reconcile requests, registry request counters, project
problems, ignored deliveries, notes on merge requests, the key-value table, the running totals that only
rise and the GitLab request counters) and the counts that read across them; callers see only its methods.
"""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from daemon.store.counters import CounterStore
from daemon.store.counts import CountStore
from daemon.store.db import ConnectionPool
from daemon.store.ignored import IgnoredCount, IgnoredStore
from daemon.store.inbox import InboxEvent, InboxStore
from daemon.store.ledger import LedgerStore
from daemon.store.mr_notes import MrNote, MrNoteStore, MrPlan
from daemon.store.operator_requests import OperatorRequest, RequestStore
from daemon.store.plans import PlanStore
from daemon.store.problems import ProblemStore, ProjectProblem
from daemon.store.reconcile_requests import ReconcileRequest, ReconcileRequestStore
from daemon.store.refs import RefStore
from daemon.store.registry_requests import LatencyHistogram, RegistryRequestStore
from daemon.store.repairs import RepairStore
from daemon.store.schema import migrate
from daemon.store.untags import UntagStore, UntagView
from daemon.store.values import ValueStore

__all__ = ["IgnoredCount", "InboxEvent", "LatencyHistogram", "MrNote", "MrPlan", "OperatorRequest",
           "ProjectProblem", "ReconcileRequest", "Store", "StoreMissing", "UntagView", "open_store"]


class Store(InboxStore, LedgerStore, RefStore, PlanStore, UntagStore, RepairStore, RequestStore,
            RegistryRequestStore, ProblemStore, ValueStore, CountStore, CounterStore, IgnoredStore,
            MrNoteStore, ReconcileRequestStore):
    """The one storage object the web app and the worker are given."""

    @property
    def db(self) -> sqlite_utils.Database:
        """The SQLite database itself, for tests and benchmarks that inspect or bulk-load the file. The
        janitor never uses it: everything it stores or reads goes through the methods above."""
        return self._db

    def has_schema(self) -> bool:
        """Whether the janitor's tables were ever made in this database."""
        row = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'")
        return row.fetchone() is not None

    def close(self) -> None:
        self._pool.close()


SQLITE_HEADER = b"SQLite format 3\x00"


class StoreMissing(Exception):
    """There is no janitor database where one was to be opened (and it was not to be created)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"no janitor database at {path} ({why})")
        self.path, self.why = path, why


def open_store(url_or_path: str, *, create: bool = True) -> Store:
    """Open the database at ``sqlite:///path`` or a plain path, migrating it as needed; created when
    missing, unless ``create`` is False: then ``StoreMissing`` when there is no file, or the file is not a
    janitor database (one the janitor made has ``schema_version``)."""
    path = url_or_path.removeprefix("sqlite:///")
    if not create:
        found = Path(path).resolve() if path != ":memory:" else None
        if found is None or not found.is_file():
            raise StoreMissing(str(found or path), "no such file")
        with found.open("rb") as file:
            if file.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                raise StoreMissing(str(found), "the file is not an SQLite database")
    store = Store(ConnectionPool(path))
    if not create and not store.has_schema():
        store.close()
        raise StoreMissing(str(Path(path).resolve()), "the file holds no janitor tables")
    migrate(store._db)
    return store
