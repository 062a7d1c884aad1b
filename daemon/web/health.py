"""Liveness and readiness probes.

Ready means this web can store events (SPEC 14): GitLab does not resend a webhook that found no one to
take it, so readiness must not depend on anything else. The newest heartbeat and every live worker (each
with its last beat) are reported in the answer and judged by each worker's own probe
(``registry-janitor worker-health``), never here.
"""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from daemon.ops.status import worker_heartbeat_age, workers_json
from daemon.web.context import now, settings, store
from daemon.web.errors import json_error

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

#: How long ``/readyz`` waits for the database's write lock: under the chart's probe timeout (3 s) and
#: far above the time any write of the janitor holds it.
READY_WRITE_WAIT = 2.0


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    problem = store().writable(now(), READY_WRITE_WAIT)
    if problem is not None:
        log.warning("not ready: events cannot be stored: %s", problem)
        return json_error(503, "storage_unavailable",
                          "events cannot be stored: the database is not writable (read-only, full, locked, "
                          "or its file was removed or replaced); check the data volume and the web's log")
    age, fresh = worker_heartbeat_age(settings(), store(), now())
    return jsonify({"status": "ready",
                    "worker": {"heartbeat_age_seconds": None if age is None else round(age, 1), "fresh": fresh},
                    "workers": workers_json(settings(), store(), now())})
