"""``GET /metrics``: Prometheus text exposition (format 0.0.4) rendered by ``prometheus_client``, read from
storage on every scrape.

Each app has its own ``CollectorRegistry`` (never the global one) holding :class:`StorageCollector`, which
reads the store on every scrape, so any gunicorn worker answers the same numbers: events (stored, ignored by
reason, and set aside as unusable), recorded pushes and untags by outcome (running totals from the counter
rows, which only rise: ``daemon.store.counters``), plans by state, queue depth, projects whose setup the
worker found wrong (``janitor_project_misconfigured``), the registry requests the worker counted
(``daemon.registry.stats``), the GitLab API requests the web and the worker counted
(``daemon.gitlab.stats``), each project's last successful catch-up, and ``janitor_build_info``. The
process and platform collectors add this process's own ``process_*`` and ``python_info``. The admin token
is required when ``server.metrics_require_token``.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Callable, Iterator, Mapping

from flask import Blueprint, Response
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.config import Settings
from daemon.domain.measures import LABELS
from daemon.domain.model import IGNORED_REASONS
from daemon.ops.status import PLAN_STATES, worker_heartbeat_age
from daemon.store import LatencyHistogram, Store
from daemon.web.auth import refusal
from daemon.web.context import janitor, settings

bp = Blueprint("metrics", __name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REGISTRY = "metrics_registry"


def version() -> str:
    """The installed registry-janitor's version (``unknown`` when run from a tree that is not installed)."""
    try:
        return importlib.metadata.version("registry-janitor")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _histogram(name: str, help_text: str, label: str, latency: Mapping[str, LatencyHistogram]) -> Metric:
    family = HistogramMetricFamily(name, help_text, labels=[label])
    for key, hist in sorted(latency.items()):
        running, buckets = 0, []
        for le in LABELS:
            running += hist.buckets.get(le, 0)
            buckets.append((le, float(running)))
        family.add_metric([key], buckets, round(hist.seconds_sum, 6))
    return family


class StorageCollector(Collector):
    """Every janitor metric, read from ``store`` when Prometheus scrapes."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        s = self.store
        build = GaugeMetricFamily("janitor_build_info", "The running janitor: its version and Python's; always 1.",
                                  labels=["version", "python"])
        build.add_metric([version(), platform.python_version()], 1)
        yield build
        events = CounterMetricFamily("janitor_events_total", "Authentic webhook and registry events stored.",
                                     labels=["project", "kind"])
        for project, kind, n in s.event_counts():
            events.add_metric([project, kind], n)
        yield events
        ignored = CounterMetricFamily(
            "janitor_events_ignored_total",
            "Authentic GitLab deliveries answered 200 and not stored (reason unconfigured_project: it names a"
            " project no entry configures; unused_kind: a kind the janitor does not use).", labels=["reason"])
        counted = dict.fromkeys(IGNORED_REASONS, 0) | {row.reason: row.count for row in s.ignored_counts()}
        for reason, n in sorted(counted.items()):
            ignored.add_metric([reason], n)
        yield ignored
        yield CounterMetricFamily(
            "janitor_events_unusable_total",
            "Stored events the worker could not apply and set aside (the events after them went on); the"
            " dashboard and /api/v1/status show each one's error.", value=s.unusable_event_count())
        pushes = CounterMetricFamily("janitor_pushes_recorded_total",
                                     "Pushes the ledger confirmed, by how it learnt of them (pattern, ci, registry).",
                                     labels=["project", "source"])
        for project, source, n in s.recorded_push_counts():
            pushes.add_metric([project, source], n)
        yield pushes
        untags = CounterMetricFamily("janitor_untags_total",
                                     "Outcomes untags reached (done, skipped, failed, dry_run), each time one did: a"
                                     " failed untag retried to done counts once as failed and once as done.",
                                     labels=["project", "outcome"])
        for project, outcome, n in s.finished_untag_counts():
            untags.add_metric([project, outcome], n)
        yield untags
        ratio = GaugeMetricFamily("janitor_untag_ratio", "Images untagged / images created, per project.",
                                  labels=["project"])
        for project, counters in sorted(s.project_counters().items()):
            ratio.add_metric([project], counters["ratio"])
        yield ratio
        problems = GaugeMetricFamily(
            "janitor_project_misconfigured",
            "1 while the worker finds a project's setup wrong (reason no_delete_permission: its token may"
            " not untag); gone once an untag of the project succeeds.", labels=["project", "reason"])
        for problem in s.project_problems():
            problems.add_metric([problem.project_path, problem.kind], 1)
        yield problems
        plans = GaugeMetricFamily("janitor_plans", "Plans by state.", labels=["state"])
        by_state = s.plan_state_counts()
        for state in PLAN_STATES:
            plans.add_metric([state], by_state.get(state, 0))
        yield plans
        yield GaugeMetricFamily("janitor_queue_depth", "Stored events the worker has not processed yet.",
                                value=s.queue_depth())
        yield GaugeMetricFamily("janitor_operator_requests_open", "Restores and retries waiting for the worker.",
                                value=s.open_request_count())
        age, _fresh = worker_heartbeat_age(self.settings, s, self.clock())
        if age is not None:
            yield GaugeMetricFamily("janitor_worker_heartbeat_age_seconds",
                                    "Seconds since the worker's last heartbeat.", value=round(age, 3))
        reconciled = GaugeMetricFamily("janitor_reconcile_last_success_timestamp_seconds",
                                       "When each project's last catch-up from the GitLab API ended without an"
                                       " error (Unix time).", labels=["project"])
        for project, at in sorted(s.last_reconcile_successes().items()):
            reconciled.add_metric([project], at)
        yield reconciled
        registry = CounterMetricFamily(
            "janitor_registry_requests_total",
            "Requests the worker sent to the registry and its token service, by answer (0: no answer).",
            labels=["method", "code"])
        for method, code, n in s.registry_request_counts():
            registry.add_metric([method, str(code)], n)
        yield registry
        yield _histogram("janitor_registry_request_seconds", "Registry request latency as the worker measured it.",
                         "method", s.registry_latency())
        gitlab = CounterMetricFamily(
            "janitor_gitlab_requests_total",
            "Requests the web (CI job tokens, tag evidence) and the worker (catch-up, branches, notes) sent to"
            " GitLab's API, by endpoint and answer (0: no answer).", labels=["endpoint", "code"])
        for endpoint, code, n in s.gitlab_request_counts():
            gitlab.add_metric([endpoint, str(code)], n)
        yield gitlab
        yield _histogram("janitor_gitlab_request_seconds", "GitLab API request latency, by endpoint.", "endpoint",
                         s.gitlab_latency())


def metrics_registry(settings: Settings, store: Store, clock: Callable[[], float]) -> CollectorRegistry:
    """An app's own registry: the storage collector, and this process's process and platform metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StorageCollector(settings, store, clock))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


@bp.record_once
def _register(state: BlueprintSetupState) -> None:
    parts = state.app.extensions["janitor"]
    parts[_REGISTRY] = metrics_registry(parts["settings"], parts["store"], parts["clock"])


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    if settings().server.metrics_require_token:
        refused = refusal()
        if refused is not None:
            return refused
    registry: CollectorRegistry = janitor()[_REGISTRY]
    return Response(generate_latest(registry), content_type=CONTENT_TYPE)
