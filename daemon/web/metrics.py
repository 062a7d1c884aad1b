"""``GET /metrics``: Prometheus text exposition (format 0.0.4), derived from storage on every scrape.

Every number comes from the database, so any gunicorn worker answers the same: events (stored, ignored
by reason, and set aside as unusable), recorded pushes, untags by outcome, plans by state, queue depth, projects whose
setup the worker found wrong (``janitor_project_misconfigured``), and the registry requests the worker
counted and flushed (``daemon.registry.stats``). The admin token is required when
``server.metrics_require_token``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flask import Blueprint, Response
from flask.typing import ResponseReturnValue

from daemon.domain.measures import LABELS
from daemon.domain.model import IGNORED_REASONS
from daemon.ops.status import PLAN_STATES, worker_heartbeat_age
from daemon.store import Store
from daemon.web.auth import refusal
from daemon.web.context import now, settings, store

bp = Blueprint("metrics", __name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{_escape(str(value))}"' for name, value in pairs) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[str, Sequence[tuple[str, str]], float]]) -> None:
        """One metric family: HELP, TYPE, then (suffix, labels, value) samples."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            self.lines.append(f"{name}{suffix}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(s: Store, heartbeat_age: float | None) -> str:
    out = Exposition()
    out.family("janitor_events_total", "counter", "Authentic webhook and registry events stored.",
               (("", [("project", p), ("kind", k)], n) for p, k, n in s.event_counts()))
    ignored = dict.fromkeys(IGNORED_REASONS, 0) | {row.reason: row.count for row in s.ignored_counts()}
    out.family("janitor_events_ignored_total", "counter",
               "Authentic GitLab deliveries answered 200 and not stored (reason unconfigured_project: it names a"
               " project no entry configures; unused_kind: a kind the janitor does not use).",
               (("", [("reason", reason)], n) for reason, n in sorted(ignored.items())))
    out.family("janitor_events_unusable_total", "counter",
               "Stored events the worker could not apply and set aside (the events after them went on); the"
               " dashboard and /api/v1/status show each one's error.",
               [("", [], s.unusable_event_count())])
    out.family("janitor_pushes_recorded_total", "counter",
               "Pushes the ledger confirmed, by how it learnt of them (pattern, ci, registry).",
               (("", [("project", p), ("source", src)], n) for p, src, n in s.recorded_push_counts()))
    out.family("janitor_untags_total", "counter", "Untags with an outcome (done, skipped, failed, dry_run).",
               (("", [("project", p), ("outcome", o)], n) for p, o, n in s.finished_untag_counts()))
    counters = s.project_counters()
    out.family("janitor_untag_ratio", "gauge", "Images untagged / images created, per project.",
               (("", [("project", p)], c["ratio"]) for p, c in sorted(counters.items())))
    out.family("janitor_project_misconfigured", "gauge",
               "1 while the worker finds a project's setup wrong (reason no_delete_permission: its token may"
               " not untag); gone once an untag of the project succeeds.",
               (("", [("project", p.project_path), ("reason", p.kind)], 1) for p in s.project_problems()))
    plans = s.plan_state_counts()
    out.family("janitor_plans", "gauge", "Plans by state.",
               (("", [("state", st)], plans.get(st, 0)) for st in PLAN_STATES))
    out.family("janitor_queue_depth", "gauge", "Stored events the worker has not processed yet.",
               [("", [], s.queue_depth())])
    out.family("janitor_operator_requests_open", "gauge", "Restores and retries waiting for the worker.",
               [("", [], s.open_request_count())])
    if heartbeat_age is not None:
        out.family("janitor_worker_heartbeat_age_seconds", "gauge", "Seconds since the worker's last tick.",
                   [("", [], round(heartbeat_age, 3))])
    out.family("janitor_registry_requests_total", "counter",
               "Requests the worker sent to the registry and its token service, by answer (0: no answer).",
               (("", [("method", m), ("code", str(c))], n) for m, c, n in s.registry_request_counts()))
    samples: list[tuple[str, Sequence[tuple[str, str]], float]] = []
    for method, hist in sorted(s.registry_latency().items()):
        running = 0
        for label in LABELS:
            running += hist.buckets.get(label, 0)
            samples.append(("_bucket", [("method", method), ("le", label)], running))
        samples.append(("_sum", [("method", method)], round(hist.seconds_sum, 6)))
        samples.append(("_count", [("method", method)], hist.count))
    out.family("janitor_registry_request_seconds", "histogram",
               "Registry request latency as the worker measured it.", samples)
    return out.text()


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    if settings().server.metrics_require_token:
        refused = refusal()
        if refused is not None:
            return refused
    age, _fresh = worker_heartbeat_age(settings(), store(), now())
    return Response(render(store(), age), content_type=CONTENT_TYPE)
