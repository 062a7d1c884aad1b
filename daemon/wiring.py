"""The composition root: every long-lived part of the janitor is built here, from ``Settings``.

The CLI, the gunicorn entry points, the demo, the tests and the benchmarks get their store, registry
clients, GitLab client, worker and app from these functions and nowhere else, so how the parts fit
together is written once. Each builder takes the parts a caller may want to supply itself (a clock, a
``requests.Session``, a ref lookup) and builds the rest as configured.

Must not: hold a rule of the product; this module only connects parts.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from flask import Flask

from daemon.config import ProjectSettings, Settings, StorageSettings
from daemon.execute.executor import Executor, ProjectRegistryLike, RegistryFactory
from daemon.execute.notes import MrNotes
from daemon.execute.repair import RaceRepair
from daemon.execute.retention import Pruner
from daemon.gitlab.api import GitLab, GitLabAPI
from daemon.gitlab.stats import GitLabStats
from daemon.gitlab.tags import GitLabTagDeleter
from daemon.ingest.catchup import Reconciler
from daemon.ingest.ci_gate import CiGate, JobVerifier, TagDetailsReader
from daemon.ingest.inbox import Ingest, ReaderFactory
from daemon.plan.planning import LiveRefs, Planner, RefLookup
from daemon.registry.client import UNTAG_LANES, RegistryClient, new_session
from daemon.registry.ratelimit import Beat, RateLimiter, SharedRateLimiter, sleep_beating
from daemon.registry.stats import RegistryStats
from daemon.registry.transport import Observer
from daemon.store import Store, open_store
from daemon.web import create_app
from daemon.worker import Heartbeat, Worker

Clock = Callable[[], float]

#: The CI gate's registry reads happen while a job waits for its answer: a short timeout and one quick
#: retry, never a long ``Retry-After`` sleep; the job is told to come back instead (503).
CI_READ_OPTIONS: dict[str, Any] = {"timeout": 5.0, "max_retries": 1, "backoff_base": 0.1, "backoff_cap": 0.5,
                                   "max_retry_after": 1.0}


def build_store(settings: Settings, *, create: bool = True) -> Store:
    """The configured store, migrated as needed: created when missing (the daemon's processes), or with
    ``create=False`` only opened (the admin commands: ``StoreMissing`` when there is none, never a new
    empty one)."""
    return open_store(settings.storage.url, create=create, password=settings.storage.password_value)


def build_storage(storage: StorageSettings, *, create: bool = True) -> Store:
    """The store one storage section names, with no other settings (``migrate-store``'s two databases):
    as ``build_store`` opens it."""
    return open_store(storage.url, create=create, password=storage.password_value)


def build_gitlab(settings: Settings, store: Store | None = None) -> GitLabAPI:
    """The GitLab API client (job tokens, branches, merge requests, hooks) as configured; with ``store``,
    each request it sends is counted there (``janitor_gitlab_requests_total``)."""
    return GitLabAPI.from_settings(settings.gitlab, observer=GitLabStats(store) if store is not None else None)


def build_registry_client(settings: Settings, session: requests.Session | None = None,
                          observer: Observer | None = None, beat: Beat | None = None,
                          store: Store | None = None, **options: Any) -> RegistryClient:
    """One client for the configured registry: one keep-alive session, one rate limiter; project tokens
    go only to a token service on ``gitlab.url``'s host or in ``registry.token_realms``. ``beat`` (the
    worker's heartbeat) is called on each request and while the client waits (rate limit, retries). With
    ``store`` (the worker's), the rate limit is the registry's bucket in storage, which every worker takes
    from; without, this process's own. It untags in ``UNTAG_LANES`` lanes unless ``untag_lanes`` says
    otherwise."""
    reg = settings.registry
    if store is not None:
        options.setdefault("limiter", SharedRateLimiter(reg.url, reg.requests_per_second, reg.burst,
                                                        store.take_rate_token, beat=beat))
    options.setdefault("limiter", RateLimiter(reg.requests_per_second, reg.burst, beat=beat))
    options.setdefault("untag_lanes", UNTAG_LANES)
    if beat is not None:
        options.setdefault("sleep", functools.partial(sleep_beating, sleep=time.sleep, beat=beat))
    return RegistryClient(reg.url, session or new_session(), gitlab_url=settings.gitlab.url,
                          token_realms=reg.token_realms, observer=observer, **options)


def build_registries(settings: Settings, session: requests.Session | None = None,
                     observer: Observer | None = None, beat: Beat | None = None,
                     store: Store | None = None, **options: Any) -> RegistryFactory:
    """Per-project views of one registry client; ``observer`` sees every registry answer
    (``RegistryStats`` counts them for /metrics). None for a project without ``registry_token``. With
    ``store``, the rate limit is shared with every worker through it. ``options`` go to the client
    (``timeout``, ``max_retries`` ...)."""
    client = build_registry_client(settings, session, observer, beat, store, **options)
    deleters: dict[str, GitLabTagDeleter] = {}

    def tag_deleter(token: str) -> GitLabTagDeleter | None:
        """The ``gitlab-api`` method writes through GitLab with the project's own token (its ``api`` scope),
        never ``gitlab.api_token``, which may be read-only (``read_api``)."""
        if settings.registry.untag_method != "gitlab-api":
            return None
        if token not in deleters:
            deleters[token] = GitLabTagDeleter(settings.gitlab.url, token, timeout=settings.gitlab.timeout)
        return deleters[token]

    def for_project(project_path: str, project: ProjectSettings) -> ProjectRegistryLike | None:
        if project.registry_token is None:
            return None
        token = project.registry_token.get_secret_value()
        return client.for_project(project_path, token, tag_deleter=tag_deleter(token))

    return for_project


def build_ci_readers(settings: Settings) -> ReaderFactory:
    """The CI gate's manifest reads (SPEC 14), through each project's own ``registry_token``: one
    read-only HEAD per record sent without a digest, on a client with ``CI_READ_OPTIONS``."""
    return build_registries(settings, **CI_READ_OPTIONS)


def build_ref_lookup(settings: Settings, gitlab: GitLab | None = None) -> RefLookup:
    """S4's question to GitLab for refs the janitor has not seen: does this branch still exist?"""
    client = gitlab or build_gitlab(settings)

    def lookup(project_path: str, ref: str, project: ProjectSettings, *, fresh: bool = False) -> bool | None:
        token = project.registry_token.get_secret_value() if project.registry_token else None
        return client.branch_exists(project_path, ref, token, fresh=fresh)

    return lookup


def build_planner(settings: Settings, store: Store, *, clock: Clock = time.time,
                  ref_lookup: RefLookup | None = None) -> Planner:
    return Planner(settings, store, LiveRefs(store, ref_lookup, clock))


def build_ingest(settings: Settings, store: Store, *, registries: RegistryFactory | None = None,
                 clock: Clock = time.time, ref_lookup: RefLookup | None = None) -> Ingest:
    """Inbox events -> ledger -> plans, reading finished pipelines' tags through ``registries``."""
    planner = build_planner(settings, store, clock=clock, ref_lookup=ref_lookup)
    return Ingest(settings, store, planner, registries or build_registries(settings), clock)


def build_reconciler(settings: Settings, store: Store, ingest: Ingest, *, clock: Clock = time.time,
                     gitlab: GitLabAPI | None = None,
                     lock: contextlib.AbstractContextManager[Any] | None = None, **bounds: int) -> Reconciler:
    """Catch-up from the GitLab API, feeding the same ``Ingest`` handlers the webhooks use."""
    return Reconciler(settings, store, ingest, gitlab or build_gitlab(settings, store), clock, lock=lock, **bounds)


def build_worker(settings: Settings, store: Store, *, registries: RegistryFactory | None = None,
                 clock: Clock = time.time, ref_lookup: RefLookup | None = None,
                 registry_stats: RegistryStats | None = None, gitlab: GitLabAPI | None = None) -> Worker:
    """The worker with every stage it schedules: ingest, plan, execute (with the notes on merge requests,
    posted through ``gitlab``), catch-up, pruning. Its heartbeat beats as the work progresses: in the executor and
    in the registry client's requests and waits."""
    heartbeat = Heartbeat(store, clock)
    registries = registries or build_registries(settings, observer=registry_stats, beat=heartbeat.beat, store=store)
    ingest = build_ingest(settings, store, registries=registries, clock=clock, ref_lookup=ref_lookup)
    lock = threading.Lock()
    executor = Executor(settings, store, registries, clock, ingest.planner.live_refs, beat=heartbeat.beat,
                        working_on=heartbeat.working_on)
    gitlab = gitlab or build_gitlab(settings, store)
    reconciler = build_reconciler(settings, store, ingest, clock=clock, gitlab=gitlab, lock=lock)
    return Worker(settings, store, ingest=ingest, executor=executor,
                  repair=RaceRepair(settings, store, registries, clock), reconciler=reconciler,
                  clock=clock, lock=lock, registry_stats=registry_stats,
                  notes=MrNotes(settings, store, gitlab, clock), heartbeat=heartbeat,
                  pruner=Pruner(settings, store, clock, lock=lock))


def build_worker_from_config(settings: Settings) -> Worker:
    """What ``registry-janitor worker`` runs: the configured store, registry metrics, S4 lookups."""
    stats = RegistryStats()  # registry request metrics, flushed to storage every tick
    store = build_store(settings)
    gitlab = build_gitlab(settings, store)
    return build_worker(settings, store, registry_stats=stats, gitlab=gitlab,
                        ref_lookup=build_ref_lookup(settings, gitlab))


def build_app(settings: Settings, store: Store | None = None, *, clock: Clock = time.time,
              verifier: JobVerifier | None = None, tag_details: TagDetailsReader | None = None) -> Flask:
    """The web app; ``verifier`` checks CI job tokens and ``tag_details`` reads a tag's ``created_at`` for
    the CI gate's evidence (GitLab as configured unless given); the CI gate reads digests from the
    configured registry (read-only, ``build_ci_readers``)."""
    store = store if store is not None else build_store(settings)
    planner = build_planner(settings, store, clock=clock)
    gitlab = build_gitlab(settings, store)
    gate = CiGate(settings, store, planner, verifier or gitlab, build_ci_readers(settings), clock,
                  tags=tag_details or gitlab)
    return create_app(settings, store, clock=clock, ci_gate=gate)
