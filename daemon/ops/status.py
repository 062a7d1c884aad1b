"""What operators see, computed once for the admin API, the dashboard and the admin CLI.

Owns: the status snapshot (per-project and total counters, queue, plans, webhook health, the workers and
their heartbeats, what is wrong with a project's setup, stuck pipelines, events set aside as unusable), the JSON
shape of plans, untags, operator and reconcile requests, time formatting, and reading a ``since`` filter. Reads
storage and settings only: no requests, no registry, no GitLab.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from daemon.config import Settings
from daemon.domain.model import IGNORED_REASONS, PLAN_STATES, Plan
from daemon.domain.patterns import format_duration, parse_duration
from daemon.domain.policy import (
    BUDGET_WINDOW,
    HEARTBEAT_KEY,
    WORKER_FORGET_SECONDS,
    budget_spent,
    heartbeat_fresh,
    next_hour,
)
from daemon.store import OperatorRequest, ProjectProblem, ReconcileRequest, Store, UntagView, WorkerRow

QUIET_AFTER = 24 * 3600.0
#: A project entry configured more recently than this is never called quiet (its webhook may be new).
QUIET_GRACE = 24 * 3600.0
STUCK_LISTED = 50
UNUSABLE_LISTED = 20
COUNTERS = ("created", "untagged", "scheduled", "held", "failed", "dry_run", "restored")
HOOK_KINDS = ("pipeline", "merge_request", "push", "tag_push")


def iso(ts: float | None) -> str | None:
    """UTC ISO 8601 with a ``Z`` (``2026-11-28T01:02:03Z``), or None."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_since(text: str, now: float) -> float:
    """A ``since`` filter: a duration back from now (``2h``, ``7d``), an ISO date or date-time (UTC
    unless it names a zone), or Unix seconds. ValueError with what to write otherwise."""
    text = text.strip()
    for read in (lambda: now - parse_duration(text), lambda: float(text), lambda: _iso_time(text)):
        try:
            moment = read()
        except (ValueError, OverflowError):
            continue
        if math.isfinite(moment):
            return moment
    raise ValueError(f"{text[:80]!r} is not a duration (2h, 7d), an ISO date (2026-11-01) or "
                     "date-time (2026-11-01T12:00:00Z)")


def _iso_time(text: str) -> float:
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def ago(seconds: float | None) -> str:
    """``45s``, ``12m``, ``3h``, ``2d`` (or ``never``)."""
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def plan_json(plan: Plan) -> dict[str, Any]:
    return {"id": plan.id, "project": plan.project_path, "trigger": plan.trigger_kind,
            "trigger_key": plan.trigger_key, "state": plan.state, "untag_count": plan.untag_count,
            "note": plan.note or None, "created_at": iso(plan.created_at), "due_at": iso(plan.due_at)}


def request_json(req: OperatorRequest | None) -> dict[str, Any] | None:
    if req is None:
        return None
    return {"id": req.id, "kind": req.kind, "untag_id": req.untag_id, "state": req.state,
            "reason": req.reason, "requested_by": req.requested_by, "requested_at": iso(req.requested_at),
            "finished_at": iso(req.finished_at)}


def reconcile_request_json(req: ReconcileRequest, store: Store) -> dict[str, Any]:
    """A reconcile request; once it ran, per project what it found and the plans it made (as they are now)."""
    result = req.result or {}
    projects = None
    if isinstance(result.get("projects"), list):
        projects = []
        for found in result["projects"]:
            plans = [store.get_plan(plan_id) for plan_id in found.get("plan_ids", [])]
            projects.append({"project": found.get("project"), "ok": bool(found.get("ok")),
                             "summary": found.get("summary", ""), "skipped": found.get("skipped"),
                             "error": found.get("error"), "more": bool(found.get("more")),
                             "plans": [plan_json(p) for p in plans if p is not None]})
    return {"id": req.id, "project": req.project_path, "state": req.state, "requested_by": req.requested_by,
            "requested_at": iso(req.requested_at), "finished_at": iso(req.finished_at), "projects": projects,
            "error": result.get("error")}


def untag_json(view: UntagView, requests: dict[tuple[int, str], OperatorRequest]) -> dict[str, Any]:
    u = view.untag
    saved = None
    if view.manifest_size is not None:
        saved = {"digest": view.manifest_digest, "media_type": view.manifest_media_type,
                 "size": view.manifest_size}
    return {"id": u.id, "plan_id": u.plan_id, "project": u.project_path, "repository": u.repository,
            "tag": u.tag, "image": f"{u.repository}:{u.tag}", "expected_digest": u.expected_digest or None,
            "outcome": u.outcome, "reason": u.reason, "method": u.method, "trigger": u.trigger_kind,
            "pipeline_id": u.pipeline_id or None, "attempts": view.attempts, "created_at": iso(u.created_at),
            "finished_at": iso(u.finished_at), "restored_at": iso(view.restored_at),
            "restorable": view.restorable, "saved_manifest": saved,
            "restore": request_json(requests.get((u.id, "restore"))),
            "retry": request_json(requests.get((u.id, "retry")))}


def problem_json(problem: ProjectProblem) -> dict[str, Any]:
    return {"kind": problem.kind, "message": problem.message, "since": iso(problem.since),
            "last_seen_at": iso(problem.updated_at)}


def stuck_pipelines(settings: Settings, store: Store, now: float) -> dict[str, Any]:
    """Pipelines left unfinished (``manual``, ``created``, ``pending``, ``running``, ...) for longer than
    ``worker.stuck_pipeline_after`` since the janitor last heard of them: their ``pipeline``-lifetime tags
    wait for a finish that may never come. How many, and the longest waiting first."""
    after = settings.worker.stuck_pipeline_after
    count, found = store.unfinished_pipelines(now - after, STUCK_LISTED)
    return {"after_seconds": after, "after": format_duration(after), "count": count,
            "pipelines": [{"project": p.project_path, "pipeline_id": p.pipeline_id, "ref": p.ref,
                           "status": p.status, "since": iso(since), "age_seconds": round(now - since, 1)}
                          for p, since in found]}


def ignored_deliveries(store: Store) -> dict[str, dict[str, Any]]:
    """Per reason (every known one, 0 when none yet): how many authentic GitLab deliveries were answered
    ``200 ignored``, and the last one's time, project and kind."""
    out: dict[str, dict[str, Any]] = {reason: {"count": 0, "last_at": None, "last_project": None,
                                               "last_kind": None} for reason in IGNORED_REASONS}
    for row in store.ignored_counts():
        out[row.reason] = {"count": row.count, "last_at": iso(row.last_at), "last_project": row.last_project,
                           "last_kind": row.last_kind or None}
    return out


def unusable_events(store: Store, limit: int = UNUSABLE_LISTED) -> dict[str, Any]:
    """Events the worker set aside because applying them failed (SPEC 14: no event blocks the queue): how
    many ever were, and the newest with the error each raised."""
    return {"count": store.unusable_event_count(),
            "events": [{"id": e.id, "source": e.source, "kind": e.kind, "project": e.project_path,
                        "received_at": iso(e.received_at), "set_aside_at": iso(e.set_aside_at), "error": e.error}
                       for e in store.unusable_events(limit)]}


def worker_heartbeat_age(settings: Settings, store: Store, now: float) -> tuple[float | None, bool]:
    """(seconds since the worker's last heartbeat or None, fresh?) as ``registry-janitor worker-health``
    (the worker's probe) judges it."""
    age = store.value_age(HEARTBEAT_KEY, now)
    return age, heartbeat_fresh(age, settings.worker.poll_interval)


def workers_json(settings: Settings, store: Store, now: float) -> list[dict[str, Any]]:
    """Every worker heard from in the last ``WORKER_FORGET_SECONDS``, the latest started first: its id,
    host, pid, when it started, its last beat (and whether that is fresh) and the plan it runs."""
    return [{"id": w.id, "host": w.host, "pid": w.pid, "started_at": iso(w.started_at),
             "heartbeat_age_seconds": round(now - w.beat_at, 1),
             "fresh": heartbeat_fresh(now - w.beat_at, settings.worker.poll_interval), "plan": w.plan_id}
            for w in store.live_workers(now - WORKER_FORGET_SECONDS)]


def probed_worker(settings: Settings, store: Store, now: float, host: str,
                  worker_id: str | None = None) -> tuple[float | None, bool, str]:
    """What the worker's probe (``registry-janitor worker-health``, run in the worker's own container)
    judges: (seconds since the heartbeat or None, fresh?, which worker that is, for its message). That is
    the worker ``worker_id`` when given; else the latest started worker on ``host`` (a container's hostname
    is its pod's: the worker of this container); else, where no worker ever wrote a row of its own, the
    newest heartbeat of any worker ("" names it)."""
    found: WorkerRow | None
    if worker_id is not None:
        found = store.get_worker(worker_id)
        missing = f"worker {worker_id}"
    elif store.any_worker_row():
        mine = store.workers_of_host(host)
        found = mine[0] if mine else None
        missing = f"any worker on host {host}"
    else:
        age, fresh = worker_heartbeat_age(settings, store, now)
        return age, fresh, ""
    if found is None:
        return None, False, missing
    age = now - found.beat_at
    return age, heartbeat_fresh(age, settings.worker.poll_interval), f"worker {found.id}"


def quiet(configured: bool, newest_event: float | None, configured_since: float | None, now: float) -> bool:
    """A configured project with no event for over ``QUIET_AFTER`` (or none ever), whose entry a worker
    has run with for at least ``QUIET_GRACE`` (an entry never noted, from before the worker noted them,
    counts as old)."""
    if not configured or (newest_event is not None and now - newest_event <= QUIET_AFTER):
        return False
    return configured_since is None or now - configured_since >= QUIET_GRACE


def plan_waits(settings: Settings, store: Store, plans: Sequence[Plan], now: float) -> dict[int, dict[str, Any]]:
    """What each plan not yet carried out waits for, as the executor will judge it (read here, nothing
    run): ``approval`` (held), ``grace`` (scheduled, until its due time), ``budget`` (the project's
    ``max_untags_per_hour`` reached: until the hour the executor moved it to, or the next one), ``worker``
    (due: the worker's next tick) or ``running``. Per plan id: kind, until (ISO time or None) and a short
    text (``grace until 14:05 UTC``)."""
    spent: dict[str, bool] = {}

    def budget_gone(project_path: str) -> bool:
        if project_path not in spent:
            config = settings.project_for(project_path)
            spent[project_path] = config is not None and budget_spent(
                config.max_untags_per_hour, store.untags_done_since(project_path, now - BUDGET_WINDOW))
        return spent[project_path]

    out: dict[int, dict[str, Any]] = {}
    for plan in plans:
        until: float | None = None
        if plan.state == "held":
            kind = "approval"
        elif plan.state == "running":
            kind = "running"
        elif plan.state == "scheduled" and plan.due_at > now:
            kind, until = "grace", plan.due_at
        elif plan.state == "ready" and plan.due_at > now:  # only the hourly budget moves a ready plan on
            kind, until = "budget", plan.due_at
        elif plan.state in ("scheduled", "ready") and budget_gone(plan.project_path):
            kind, until = "budget", next_hour(now)
        elif plan.state in ("scheduled", "ready"):
            kind = "worker"
        else:
            continue
        out[plan.id] = {"kind": kind, "until": iso(until), "text": _wait_text(kind, until, now)}
    return out


def _wait_text(kind: str, until: float | None, now: float) -> str:
    when = ""
    if until is not None:
        moment = dt.datetime.fromtimestamp(until, dt.UTC)
        same_day = moment.date() == dt.datetime.fromtimestamp(now, dt.UTC).date()
        when = moment.strftime("%H:%M UTC" if same_day else "%Y-%m-%d %H:%M UTC")
    return {"approval": "approval", "running": "running now", "worker": "the worker's next tick",
            "grace": f"grace until {when}", "budget": f"hourly budget (until {when})"}[kind]


def status_snapshot(settings: Settings, store: Store, now: float) -> dict[str, Any]:
    """Per-project and total counters, queue, plans, webhook health and the worker's heartbeat."""
    counters = store.project_counters()
    restored = store.restored_counts()
    reclaim = store.untagged_image_bytes()
    last: dict[str, dict[str, float]] = {}
    for project, kind, at in store.last_events():
        last.setdefault(project, {})[kind] = at
    problems: dict[str, list[ProjectProblem]] = {}
    for problem in store.project_problems():
        problems.setdefault(problem.project_path, []).append(problem)
    names = (set(counters) | set(last) | set(problems)
             | {p.path for p in settings.projects if "*" not in p.path})
    configured_since = store.configured_since()
    projects: dict[str, dict[str, Any]] = {}
    for name in sorted(names):
        config = settings.project_for(name)
        row: dict[str, float | int] = {key: int(counters.get(name, {}).get(key, 0)) for key in COUNTERS
                                       if key != "restored"}
        row["restored"] = int(restored.get(name, 0))
        row["ratio"] = round(row["untagged"] / row["created"], 4) if row["created"] else 0.0
        events = last.get(name, {})
        newest = max(events.values()) if events else None
        since = configured_since.get(config.path) if config is not None else None
        projects[name] = {
            **row,
            "untagged_image_bytes": reclaim.get(name),
            "configured": config is not None,
            "dry_run_mode": bool(config.dry_run) if config is not None else None,
            "last_events": {kind: iso(at) for kind, at in sorted(events.items())},
            "last_event_at": iso(newest),
            "configured_since": iso(since),
            "quiet": quiet(config is not None, newest, since, now),
            "misconfigured": bool(problems.get(name)),
            "problems": [problem_json(p) for p in problems.get(name, [])],
        }
    total: dict[str, float | int] = {key: sum(p[key] for p in projects.values()) for key in COUNTERS}
    total["ratio"] = round(total["untagged"] / total["created"], 4) if total["created"] else 0.0
    total["untagged_image_bytes"] = sum(v for v in reclaim.values())
    oldest = store.oldest_pending_event()
    age, fresh = worker_heartbeat_age(settings, store, now)
    plans = store.plan_state_counts()
    return {
        "generated_at": iso(now),
        "projects": projects,
        "total": total,
        "queue": {"depth": store.queue_depth(),
                  "oldest_pending_age_seconds": None if oldest is None else round(now - oldest, 1)},
        "plans": {state: int(plans.get(state, 0)) for state in PLAN_STATES},
        "operator_requests_open": store.open_request_count(),
        "registry_notifications": {"last_event_at": iso(store.last_registry_event())},
        "ignored_deliveries": ignored_deliveries(store),
        "worker": {"heartbeat_age_seconds": None if age is None else round(age, 1), "fresh": fresh},
        "workers": workers_json(settings, store, now),
        "dry_run_projects": sorted(n for n, p in projects.items() if p["dry_run_mode"]),
        "misconfigured_projects": sorted(n for n, p in projects.items() if p["misconfigured"]),
        "stuck_pipelines": stuck_pipelines(settings, store, now),
        "unusable_events": unusable_events(store),
    }
