"""Claims take what they are asked for and no more, on both engines: a worker that claims one merge
request note holds exactly one, so no note it will not send waits out a lease it never needed.

(On PostgreSQL an ``UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`` may run its
subquery more than once and take more than ``n`` rows. Every claim, notes, operator requests and reconcile
requests, goes through ``StoreBase._claim``, which picks its rows once; the notes are where it showed.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from daemon.store import Store, open_store

NOW = 1_700_000_000.0


@pytest.fixture
def store(storage_url: Callable[[], str]) -> Iterator[Store]:
    opened = open_store(storage_url())
    yield opened
    opened.close()


def _due_notes(store: Store, count: int, *, at_once: bool = False) -> None:
    """``count`` pending notes, each due a second before the next (the last first), or all at ``NOW``."""
    for iid in range(1, count + 1):
        store.db.execute("INSERT INTO mr_notes (project_path, mr_iid, plan_id, state, attempts, created_at,"
                         " updated_at, due_at) VALUES ('grp/app', ?, ?, 'pending', 0, ?, ?, ?)",
                         [iid, iid, NOW, NOW, NOW if at_once else NOW - iid])


def _sending(store: Store) -> int:
    return int(store.db.execute("SELECT COUNT(*) FROM mr_notes WHERE state = 'sending'").fetchone()[0])


def test_claiming_one_note_takes_one(store: Store) -> None:
    _due_notes(store, 5)
    for taken in range(1, 6):
        claimed = store.claim_mr_notes(NOW, 20.0, 1)
        assert len(claimed) == 1
        assert _sending(store) == taken
    assert store.claim_mr_notes(NOW, 20.0, 1) == []


def test_claiming_some_notes_takes_that_many_oldest_due_first(store: Store) -> None:
    _due_notes(store, 5)
    claimed = store.claim_mr_notes(NOW, 20.0, 2)
    assert [n.mr_iid for n in claimed] == [5, 4]
    assert _sending(store) == 2


@pytest.mark.parametrize("count", [2, 3, 10])
def test_claiming_one_of_notes_due_at_once_takes_one(store: Store, count: int) -> None:
    _due_notes(store, count, at_once=True)
    assert len(store.claim_mr_notes(NOW + 61, 20.0, 1)) == 1
    assert _sending(store) == 1
