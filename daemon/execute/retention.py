"""Retention: the worker's job that keeps the database from growing forever (``storage.retention``).

Each run prunes, in this order, applied events older than ``retention.events``, then what ages out with
``retention.plans``: unusable events, finished plans with their untags, push records whose tag is gone or
was pushed again, merge requests done with, pipelines and deleted branches nothing names any more, old
registry observations. What each step may delete, and what it never does, is ``daemon.store.retention``'s.
Each batch is one short transaction of at most ``batch`` rows, taken under the worker's lock and released
before the next, so a tick waits at most one batch; a run stops after ``budget`` seconds and the next one
goes on where it stopped.
Counters never fall: they are rows of their own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from daemon.config import Settings
from daemon.store import Store

log = logging.getLogger(__name__)

#: Rows looked at per transaction.
BATCH_ROWS = 500
#: Seconds one run may take before it leaves the rest to the next.
RUN_BUDGET = 10.0


class Pruner:
    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float], *,
                 lock: contextlib.AbstractContextManager[Any] | None = None, batch: int = BATCH_ROWS,
                 budget: float = RUN_BUDGET, timer: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.store, self.clock = settings, store, clock
        self._lock = lock if lock is not None else threading.Lock()
        self.batch, self.budget, self.timer = batch, budget, timer
        self._after: dict[str, int] = {}  # where each step's pass goes on (0: a new pass)

    def steps(self, now: float) -> list[tuple[str, Callable[[int, float, int], Any], float]]:
        retention = self.settings.storage.retention
        events, plans = now - retention.events, now - retention.plans
        s = self.store
        return [("events", s.prune_events, events), ("unusable_events", s.prune_unusable_events, plans),
                ("plans", s.prune_plans, plans), ("push_records", s.prune_push_records, plans),
                ("merge_requests", s.prune_merge_requests, plans), ("pipelines", s.prune_pipelines, plans),
                ("refs", s.prune_refs, plans),
                ("observations", s.prune_observations, plans)]

    def run(self) -> dict[str, int]:
        """One run: each step's batches until its pass is done or the budget is spent. Returns the rows
        deleted, by kind (only kinds with some)."""
        deadline = self.timer() + self.budget
        pruned: dict[str, int] = {}
        for name, prune, before in self.steps(self.clock()):
            while True:
                with self._lock:
                    deleted, after = prune(self._after.get(name, 0), before, self.batch)
                for kind, n in deleted.items():
                    if n:
                        pruned[kind] = pruned.get(kind, 0) + n
                self._after[name] = after or 0
                if after is None:
                    break
                if self.timer() >= deadline:
                    self._log(pruned, finished=False)
                    return pruned
        self._log(pruned, finished=True)
        return pruned

    def run_logged(self) -> None:
        """``run`` for the scheduler: a failure is logged, and the next run tries again."""
        try:
            self.run()
        except Exception:
            log.exception("pruning failed; trying again at the next run")

    @staticmethod
    def _log(pruned: dict[str, int], *, finished: bool) -> None:
        if pruned:
            log.info("pruned %s%s", ", ".join(f"{n} {kind}" for kind, n in pruned.items()),
                     "" if finished else " (time is up: the next run goes on)")
