"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from daemon.domain.policy import HEARTBEAT_KEY, heartbeat_fresh
from daemon.web.context import now, settings, store
from daemon.web.errors import json_error

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    if not store().writable():
        return json_error(503, "storage_unavailable", "the database is not writable; check the volume")
    age = store().value_age(HEARTBEAT_KEY, now())
    if age is None or not heartbeat_fresh(age, settings().worker.poll_interval):
        return json_error(503, "worker_stale",
                          "no fresh worker heartbeat; start `registry-janitor worker` (or `run`)")
    return jsonify({"status": "ready", "worker_heartbeat_age": round(age, 1)})
