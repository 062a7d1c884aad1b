"""The worker process's loop: APScheduler 3.x jobs over parts built elsewhere (``daemon.wiring``).

One ``tick`` every ``worker.poll_interval``, and sooner when there is work: every ``WAKE_CHECK_SECONDS``
the ``wake`` job looks (two reads of indexes, while no tick runs) for an event stored since the last tick
began, or a plan that came due since then (``Worker.work_arrived``), and when it finds one moves the next
tick to now, so neither a webhook nor a plan whose grace period ends waits out the rest of the poll
interval. A tick: inbox -> ledger -> plans, TTL triggers, operator
requests, due plans, race repairs, then the notes on merge requests whose plans are done, beating while it
works (``Heartbeat``); catch-up from the GitLab API every ``worker.reconcile_interval``, and the catch-ups
operators ask for every ``poll_interval``, and pruning (``daemon.execute.retention``) every ``PRUNE_EVERY``
seconds, a batch at a time under the same lock as the tick.
Each job has ``max_instances=1`` and ``coalesce=True``, and ticks only ever run from the one ``tick``
job (under the worker's lock): a slow tick is never run twice at once.
Never started inside gunicorn workers (APScheduler's job store cannot be shared between processes).
Must not: hold a rule of the product; it only says when each stage runs.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from daemon.config import Settings
from daemon.domain.patterns import format_duration
from daemon.domain.policy import HEARTBEAT_BEAT_SECONDS, HEARTBEAT_KEY, WORKER_FORGET_SECONDS, heartbeat_limit
from daemon.execute.executor import Executor
from daemon.execute.lease import Holder, this_process
from daemon.execute.notes import MrNotes
from daemon.execute.operator import carry_out_requests
from daemon.execute.repair import RaceRepair
from daemon.execute.retention import Pruner
from daemon.ingest.catchup import Reconciler
from daemon.ingest.inbox import Ingest
from daemon.plan.ttl import raise_ttl_triggers
from daemon.registry.stats import RegistryStats
from daemon.store import Store

log = logging.getLogger(__name__)

#: Seconds between pruning runs.
PRUNE_EVERY = 300.0

#: Seconds between two looks for work that arrived between polls (an event stored, a plan come due).
WAKE_CHECK_SECONDS = 0.25


class Heartbeat:
    """The worker's sign of life in storage, written by the work itself and by nothing else: ``now`` at the
    start and end of each tick, ``beat`` wherever work progresses (each untag, each registry request, each
    slice of a wait for the rate limit), written at most every ``HEARTBEAT_BEAT_SECONDS``. No thread of its
    own beats: a worker stuck anywhere stops beating, and its probe (``registry-janitor worker-health``)
    finds the heartbeat stale. Safe to call from any thread.

    Each beat writes this worker's row of ``workers`` (``worker_id``: host, pid and run; when it started;
    the plan it runs, told by ``working_on``) and the newest beat of any worker (``HEARTBEAT_KEY``). Rows of
    workers silent for ``WORKER_FORGET_SECONDS`` are pruned as ticks begin."""

    def __init__(self, store: Store, clock: Callable[[], float], every: float = HEARTBEAT_BEAT_SECONDS,
                 holder: Holder | None = None) -> None:
        self.store = store
        self.clock = clock
        self.every = every
        holder = holder or this_process()
        self.worker_id, self.host, self.pid = holder.worker_id, holder.host, holder.pid
        self.started_at = clock()
        self.plan_id: int | None = None
        self._last: float | None = None
        self._pruned: float | None = None
        self._lock = threading.Lock()

    def _write(self, at: float) -> None:
        with self.store.transaction():
            self.store.set_value(HEARTBEAT_KEY, str(at), at)
            self.store.worker_beat(self.worker_id, self.host, self.pid, self.started_at, at, self.plan_id)

    def now(self) -> None:
        """Write the heartbeat (and, every ``WORKER_FORGET_SECONDS / 10``, forget long silent workers)."""
        at = self.clock()
        self._write(at)
        with self._lock:
            self._last = at
            prune = self._pruned is None or not 0 <= at - self._pruned < WORKER_FORGET_SECONDS / 10
            if prune:
                self._pruned = at
        if prune:
            self.store.prune_workers(at - WORKER_FORGET_SECONDS)

    def working_on(self, plan_id: int | None) -> None:
        """This worker runs ``plan_id`` now (None: no plan any more), written at once. Never raises."""
        self.plan_id = plan_id
        at = self.clock()
        try:
            self._write(at)
        except Exception as exc:
            log.warning("could not store the worker's heartbeat: %s", exc)
            return
        with self._lock:
            self._last = at

    def started(self, poll_interval: float) -> None:
        """A worker process starts: the row an earlier run of this same host and pid left (a restarted
        container's worker has the pid its predecessor had) is removed once that row is stale."""
        now = self.clock()
        for row in self.store.workers_of_host(self.host):
            if row.id != self.worker_id and row.pid == self.pid and now - row.beat_at > heartbeat_limit(poll_interval):
                self.store.remove_worker(row.id)

    def stopped(self) -> None:
        """The worker stops: it is no longer listed."""
        try:
            self.store.remove_worker(self.worker_id)
        except Exception as exc:
            log.warning("could not remove worker %s from the list: %s", self.worker_id, exc)

    def beat(self) -> None:
        """Write the heartbeat unless it was written less than ``every`` seconds ago. Never raises: a
        heartbeat that cannot be stored must not break off the untag in progress (the stale heartbeat, and
        the tick's own storage failures, report it)."""
        at = self.clock()
        with self._lock:
            if self._last is not None and 0 <= at - self._last < self.every:
                return
            self._last = at
        try:
            self._write(at)
        except Exception as exc:
            log.warning("could not store the worker's heartbeat: %s", exc)


class Worker:
    def __init__(self, settings: Settings, store: Store, *, ingest: Ingest, executor: Executor,
                 repair: RaceRepair, clock: Callable[[], float], reconciler: Reconciler | None = None,
                 lock: contextlib.AbstractContextManager[Any] | None = None,
                 registry_stats: RegistryStats | None = None, notes: MrNotes | None = None,
                 heartbeat: Heartbeat | None = None, pruner: Pruner | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self._heartbeat = heartbeat if heartbeat is not None else Heartbeat(store, clock)
        self.ingest = ingest
        self.executor = executor
        self.repair = repair
        self.reconciler = reconciler
        self.registry_stats = registry_stats
        self.notes = notes
        self.pruner = pruner
        # Held around each tick and each of reconcile's writes (never around a GitLab call).
        self._lock = lock if lock is not None else threading.Lock()
        #: When the last tick began (the worker's clock), the newest pending inbox event then, and whether
        #: a tick runs now (for ``work_arrived`` and the ``wake`` job).
        self._ticked_at = 0.0
        self._seen_event = 0
        self._ticking = False
        #: Whether this process has noted its configured project entries (``Store.note_configured``).
        self._noted_configured = False

    def tick(self) -> dict[str, int]:
        """One pass of everything due; safe to call from tests with an injected clock."""
        with self._lock, self._marked():
            self.heartbeat()
            if not self._noted_configured:  # the dashboard's "quiet" waits a day after an entry is added
                self.store.note_configured([p.path for p in self.settings.projects], self.clock())
                self._noted_configured = True
            self._seen_event = self.store.last_pending_event_id()
            events = self.ingest.drain()
            self.ingest.resolve_ci_pushes()
            ttl = raise_ttl_triggers(self.ingest.planner, self.clock())
            carry_out_requests(self.settings, self.store, self.executor.registries, self.clock)
            plans = self.executor.run_due()
            self.repair.run()
            if self.registry_stats is not None:
                self.registry_stats.flush(self.store)
            self.heartbeat()
        # Posting to GitLab waits on GitLab: outside the lock, which catch-up's writes take too.
        notes = self.notes.run() if self.notes is not None else 0
        return {"events": events, "ttl_plans": ttl, "plans": plans, "notes": notes}

    @contextlib.contextmanager
    def _marked(self) -> Iterator[None]:
        """Around a tick's work: when it began (what ``work_arrived`` compares with), and that it runs."""
        self._ticking, self._ticked_at = True, self.clock()
        try:
            yield
        finally:
            self._ticking = False

    def heartbeat(self) -> None:
        self._heartbeat.now()

    def run_forever(self) -> None:
        """Block running the scheduler until SIGTERM or SIGINT."""
        from apscheduler.schedulers.blocking import BlockingScheduler

        scheduler = BlockingScheduler(job_defaults={"max_instances": 1, "coalesce": True,
                                                    "misfire_grace_time": None})
        self.schedule_ticks(scheduler)
        self.schedule_reconcile(scheduler)
        self.schedule_reconcile_requests(scheduler)
        self.schedule_prune(scheduler)
        stop = threading.Event()

        def _stop(signum: int, frame: FrameType | None) -> None:
            if stop.is_set():  # a second signal (the process group and `run` both sent one)
                return
            log.info("worker stopping (signal %s)", signum)
            stop.set()
            if scheduler.running:  # a signal before start(): start is skipped below
                scheduler.shutdown(wait=False)

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            self._heartbeat.started(self.settings.worker.poll_interval)
        except Exception as exc:  # the first tick meets and reports the same storage
            log.warning("could not tidy this host's worker list: %s", exc)
        self._safe_tick()
        log.info("worker %s started: poll every %s", self._heartbeat.worker_id,
                 format_duration(self.settings.worker.poll_interval))
        if not stop.is_set():
            scheduler.start()
        self._heartbeat.stopped()

    def schedule_ticks(self, scheduler: Any) -> None:
        """Add the ``tick`` job (every ``worker.poll_interval``) and the ``wake`` job that moves it to now
        when work arrives between polls (every ``WAKE_CHECK_SECONDS``)."""
        scheduler.add_job(self._safe_tick, "interval", seconds=self.settings.worker.poll_interval, id="tick",
                          max_instances=1, coalesce=True)
        scheduler.add_job(self.wake, "interval", seconds=WAKE_CHECK_SECONDS, args=[scheduler], id="wake",
                          max_instances=1, coalesce=True)

    def schedule_reconcile(self, scheduler: Any) -> Any:
        """Add the catch-up job (SPEC 11): every ``worker.reconcile_interval``, the first run soon after
        start (webhooks missed while the janitor was down are caught up first)."""
        if self.reconciler is None:
            return None
        interval = self.settings.worker.reconcile_interval
        first = datetime.now(UTC) + timedelta(seconds=min(interval, max(self.settings.worker.poll_interval, 1.0)))
        return scheduler.add_job(self.reconciler.run_logged, "interval", seconds=interval, id="reconcile",
                                 next_run_time=first, max_instances=1, coalesce=True)

    def schedule_reconcile_requests(self, scheduler: Any) -> Any:
        """Add the job that runs the catch-ups operators ask for (``registry-janitor reconcile``, ``POST
        /api/v1/reconcile``): every ``worker.poll_interval``, beside the tick (a long catch-up never holds
        the tick, its heartbeat or due plans back)."""
        if self.reconciler is None:
            return None
        return scheduler.add_job(self.reconciler.run_requests_logged, "interval",
                                 seconds=self.settings.worker.poll_interval, id="reconcile_requests",
                                 max_instances=1, coalesce=True)

    def work_arrived(self) -> bool:
        """Whether an event was stored, or a plan came due, since the last tick started (what it could not
        have seen): two reads of indexes, no write."""
        return (self.store.last_pending_event_id() > self._seen_event
                or self.store.plan_came_due(self._ticked_at, self.clock()))

    def wake(self, scheduler: Any) -> bool:
        """The ``wake`` job: when no tick runs and work arrived since the last one began, move the next
        tick to now (the poll interval counts from there). Returns whether it did."""
        if self._ticking:  # what arrives meanwhile is found once the tick is over
            return False
        try:
            if not self.work_arrived():
                return False
        except Exception as exc:  # storage unreadable now: the poll's tick meets and reports it
            log.debug("could not look for new work: %s", exc)
            return False
        scheduler.modify_job("tick", next_run_time=datetime.now(UTC))
        return True

    def schedule_prune(self, scheduler: Any) -> Any:
        """Add the pruning job (``storage.retention``): every ``PRUNE_EVERY`` seconds, beside the tick; each of
        its batches takes the worker's lock, so a tick waits for one batch at most."""
        if self.pruner is None:
            return None
        return scheduler.add_job(self.pruner.run_logged, "interval", seconds=PRUNE_EVERY, id="prune",
                                 max_instances=1, coalesce=True)

    def _safe_tick(self) -> None:
        try:
            counts = self.tick()
            if any(counts.values()):
                log.info("tick: %s", counts)
        except Exception:
            log.exception("worker tick failed; retrying next interval")
