"""Deliveries written together by many request threads: each one stored once, each answer its own."""

import threading

from support.janitor import make_store


def _add(store, key, n=0):
    return store.add_event(delivery_key=key, source="gitlab", kind="pipeline", project_path="g/p",
                           headers={"X-Gitlab-Event": "Pipeline Hook"}, body=b'{"n": %d}' % n, received_at=1.0)


def test_concurrent_deliveries_are_each_stored_once_and_duplicates_answered_as_such(tmp_path):
    store = make_store(tmp_path)
    answers: dict[str, list[bool]] = {}
    lock = threading.Lock()
    start = threading.Barrier(8)

    def deliver(thread: int) -> None:
        start.wait()
        for n in range(60):
            key = f"k-{n}" if n % 3 == 0 else f"k-{thread}-{n}"  # every third key sent by all 8 threads
            stored = _add(store, key, n)
            with lock:
                answers.setdefault(key, []).append(stored)

    threads = [threading.Thread(target=deliver, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(sorted(got) == [False] * (len(got) - 1) + [True] for got in answers.values())
    rows = store.db.execute("SELECT delivery_key FROM inbox").fetchall()
    assert sorted(r[0] for r in rows) == sorted(answers)
    store.close()


def test_a_refused_delivery_fails_alone_whatever_batch_it_was_written_in(tmp_path):
    store = make_store(tmp_path)
    store.db.execute("CREATE TRIGGER refuse BEFORE INSERT ON inbox WHEN NEW.delivery_key LIKE 'bad-%'"
                     " BEGIN SELECT RAISE(ABORT, 'refused'); END")
    outcomes: dict[str, object] = {}
    start = threading.Barrier(8)

    def deliver(thread: int) -> None:
        start.wait()
        for n in range(40):
            key = f"bad-{thread}-{n}" if n % 10 == thread else f"ok-{thread}-{n}"
            try:
                outcomes[key] = _add(store, key, n)
            except Exception as exc:
                outcomes[key] = exc

    threads = [threading.Thread(target=deliver, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(v, Exception) for k, v in outcomes.items() if k.startswith("bad-"))
    assert all(v is True for k, v in outcomes.items() if k.startswith("ok-"))
    stored = {r[0] for r in store.db.execute("SELECT delivery_key FROM inbox")}
    assert stored == {k for k in outcomes if k.startswith("ok-")}
    store.close()


def test_inside_an_open_transaction_the_delivery_joins_it(tmp_path):
    store = make_store(tmp_path)
    db = store.db
    db.execute("BEGIN IMMEDIATE")
    assert _add(store, "in-tx") is True
    db.execute("ROLLBACK")
    assert db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0] == 0
    store.close()
