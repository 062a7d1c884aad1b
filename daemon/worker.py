"""The worker process: APScheduler 3.x jobs over the store. Never started inside gunicorn workers.

One ``tick`` every ``worker.poll_interval``: heartbeat, inbox -> ledger -> plans, TTL triggers, due plans.
Each job has ``max_instances=1`` and ``coalesce=True``: a slow tick is never run twice at once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import requests

from daemon.config import ProjectSettings, Settings
from daemon.execute import Executor, ProjectRegistryLike, RegistryFactory
from daemon.gitlab import GitLabTagDeleter
from daemon.ingest import Ingest, RefLookup
from daemon.model import Trigger
from daemon.registry.client import RegistryClient, new_session
from daemon.registry.ratelimit import RateLimiter
from daemon.registry.transport import Observer
from daemon.registry_stats import RegistryStats
from daemon.restore import carry_out_requests
from daemon.store import Store
from daemon.web.health import HEARTBEAT_KEY

log = logging.getLogger(__name__)


def registry_factory(settings: Settings, session: requests.Session | None = None,
                     observer: Observer | None = None) -> RegistryFactory:
    """One client (one keep-alive session, one rate limiter) per registry, scoped per project;
    ``observer`` sees every registry answer (``RegistryStats`` counts them for /metrics)."""
    reg = settings.registry
    client = RegistryClient(reg.url, session or new_session(),
                            limiter=RateLimiter(reg.requests_per_second, reg.burst), observer=observer)

    deleters: dict[str, GitLabTagDeleter] = {}

    def tag_deleter(token: str) -> GitLabTagDeleter | None:
        """The ``gitlab-api`` method writes through GitLab with the project's token (else the API token)."""
        if reg.untag_method != "gitlab-api":
            return None
        api = settings.gitlab.api_token
        token = api.get_secret_value() if api else token
        if token not in deleters:
            deleters[token] = GitLabTagDeleter(settings.gitlab.url, token, timeout=settings.gitlab.timeout)
        return deleters[token]

    def for_project(project_path: str, project: ProjectSettings) -> ProjectRegistryLike | None:
        if project.registry_token is None:
            return None
        token = project.registry_token.get_secret_value()
        return client.for_project(project_path, token, tag_deleter=tag_deleter(token))

    return for_project


def gitlab_ref_lookup(settings: Settings) -> RefLookup:
    """S4's question to GitLab for refs the janitor has not seen: does this branch still exist?"""
    from daemon.gitlab import GitLab

    client = GitLab.from_settings(settings.gitlab)

    def lookup(project_path: str, ref: str, project: ProjectSettings) -> bool | None:
        token = project.registry_token.get_secret_value() if project.registry_token else None
        return client.branch_exists(project_path, ref, token)

    return lookup


class Worker:
    def __init__(self, settings: Settings, store: Store, registries: RegistryFactory,
                 clock: Callable[[], float] = time.time, ref_lookup: RefLookup | None = None,
                 registry_stats: RegistryStats | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.ingest = Ingest(settings, store, registries, clock, ref_lookup)
        self.executor = Executor(settings, store, registries, clock, self.ingest.live_refs)
        self.registry_stats = registry_stats
        self._lock = threading.Lock()

    def tick(self) -> dict[str, int]:
        """One pass of everything due; safe to call from tests with an injected clock."""
        with self._lock:
            self.heartbeat()
            events = self.ingest.drain()
            self.ingest.resolve_ci_pushes()
            ttl = self.raise_ttl_triggers()
            carry_out_requests(self.settings, self.store, self.executor.registries, self.clock)
            plans = self.executor.run_due()
            self.executor.repair_races()
            if self.registry_stats is not None:
                self.registry_stats.flush(self.store)
            self.heartbeat()
        return {"events": events, "ttl_plans": ttl, "plans": plans}

    def heartbeat(self) -> None:
        self.store.set_value(HEARTBEAT_KEY, str(self.clock()), self.clock())

    def raise_ttl_triggers(self) -> int:
        now = self.clock()
        raised = 0
        for project_path in self.store.ttl_projects(now):
            key = f"ttl_expired:{project_path}:{int(now // 60)}"
            if self.ingest.raise_trigger(Trigger("ttl_expired", project_path, key, now), now) is not None:
                raised += 1
        return raised

    def run_forever(self) -> None:
        """Block running the scheduler until SIGTERM or SIGINT."""
        from apscheduler.schedulers.blocking import BlockingScheduler

        scheduler = BlockingScheduler(job_defaults={"max_instances": 1, "coalesce": True,
                                                    "misfire_grace_time": None})
        scheduler.add_job(self._safe_tick, "interval", seconds=self.settings.worker.poll_interval,
                          id="tick")
        from daemon.reconcile import schedule as schedule_reconcile  # catch up missed webhooks (SPEC 11)
        schedule_reconcile(scheduler, self, self._lock)
        stop = threading.Event()

        def _stop(signum: int, frame: FrameType | None) -> None:
            log.info("worker stopping (signal %s)", signum)
            stop.set()
            scheduler.shutdown(wait=False)

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        self._safe_tick()
        log.info("worker started: poll every %ss", self.settings.worker.poll_interval)
        if not stop.is_set():
            scheduler.start()

    def _safe_tick(self) -> None:
        try:
            counts = self.tick()
            if any(counts.values()):
                log.info("tick: %s", counts)
        except Exception:
            log.exception("worker tick failed; retrying next interval")
