"""Storage: all SQL lives here; the rest of the janitor asks for domain objects.

SQLite (WAL) through sqlite-utils is the embedded default; PostgreSQL (psycopg 3 and its pool) is the shared
engine that several web processes and workers use at once (``open_store`` picks one by the URL). Nothing
outside this package may assume either: no connection, row or driver object leaves it, and claims are
atomic statements.
``Store`` is assembled from one part per thing stored (the inbox, the ledger, refs and merge requests,
plans, untags, race repairs, operator requests, reconcile requests, registry request counters, project
problems, ignored deliveries, notes on merge requests, the key-value table, the running totals that only
rise and the GitLab request counters, the workers and what they share), pruning and backups, and the
counts that read across them; callers see only its methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from daemon.store import postgres
from daemon.store.copy import CopyFailed, CopyRefused, copy_store
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
from daemon.store.retention import BackupFailed, RetentionStore
from daemon.store.schema import migrate
from daemon.store.untags import UntagStore, UntagView
from daemon.store.values import ValueStore
from daemon.store.workers import WorkerRow, WorkerStore

__all__ = ["BackupFailed", "CopyFailed", "CopyRefused", "IgnoredCount", "InboxEvent", "LatencyHistogram", "MrNote",
           "MrPlan", "OperatorRequest", "ProjectProblem", "ReconcileRequest", "Store", "StoreMissing", "UntagView",
           "WorkerRow", "copy_store", "is_postgres_url", "open_store"]


class Store(InboxStore, LedgerStore, RefStore, PlanStore, UntagStore, RepairStore, RequestStore,
            RegistryRequestStore, ProblemStore, ValueStore, CountStore, CounterStore, IgnoredStore,
            MrNoteStore, ReconcileRequestStore, RetentionStore, WorkerStore):
    """The one storage object the web app and the worker are given."""

    @property
    def db(self) -> Any:
        """This thread's connection itself (``execute(sql, params)``), for tests and benchmarks that inspect
        or bulk-load the database. The janitor never uses it: everything it stores or reads goes through
        the methods above."""
        return self._db

    @property
    def engine(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._pool.engine

    def close(self) -> None:
        self._pool.close()


SQLITE_HEADER = b"SQLite format 3\x00"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class StoreMissing(Exception):
    """There is no janitor database where one was to be opened (and it was not to be created)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"no janitor database at {path} ({why})")
        self.path, self.why = path, why


def is_postgres_url(url: str) -> bool:
    return url.startswith(POSTGRES_SCHEMES)


def open_store(url_or_path: str, *, create: bool = True, password: str | None = None) -> Store:
    """Open the database at ``url_or_path``, migrating it as needed.

    ``postgresql://`` (or ``postgres://``) URLs open PostgreSQL (``password``, when given, is used instead
    of one in the URL). The database itself must exist (it is never created): with ``create`` the
    janitor's tables are made in it when missing; without, ``StoreMissing`` when it holds none.

    ``sqlite:///path`` or a plain path opens SQLite, the file created when missing unless ``create`` is
    False: then ``StoreMissing`` when there is no file, or the file is not a janitor database (one the
    janitor made has ``schema_version``)."""
    if is_postgres_url(url_or_path):
        return _open_postgres(url_or_path, create=create, password=password)
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


def _open_postgres(url: str, *, create: bool, password: str | None) -> Store:
    shown = postgres.redact(url)
    if not create:
        try:
            db = postgres.connect(url, password=password)
        except psycopg.Error as exc:
            raise StoreMissing(shown, f"cannot connect: {postgres.redact(str(exc).strip())}") from None
        try:
            if not postgres.schema_version(db):
                raise StoreMissing(shown, "the database holds no janitor tables")
        finally:
            db.close()
    db = postgres.connect(url, password=password, application_name="registry-janitor-migrate")
    try:
        postgres.migrate_postgres(db)
    finally:
        db.close()
    return Store(postgres.ConnectionPool(url, password=password))
