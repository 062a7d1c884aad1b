"""``POST /api/v1/ci/pushes`` and ``POST /api/v1/ci/untag``: CI jobs authenticated by GitLab.

HTTP only: the ``JOB-TOKEN`` header (401 when missing or refused, 503 when GitLab cannot be asked), then
the CI gate (:class:`daemon.ingest.ci_gate.CiGate`) decides and its ``Answer`` (status, JSON body,
headers such as ``Retry-After``) becomes the response. The web process calls GitLab only to verify job
tokens (cached for a bounded time), and the registry only through the gate, for the one read-only
manifest HEAD that resolves a record sent without its digest.
"""

from __future__ import annotations

import json

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from daemon.domain.model import Job
from daemon.errors import GitLabError, JobTokenError
from daemon.ingest.ci_gate import Answer, CiGate
from daemon.web.context import janitor
from daemon.web.errors import json_error

bp = Blueprint("ci", __name__)


def _gate() -> CiGate:
    gate: CiGate = janitor()["ci_gate"]
    return gate


def _job() -> Job | ResponseReturnValue:
    token = request.headers.get("JOB-TOKEN")
    if not token:
        return json_error(401, "job_token_missing", "send the job's token: -H \"JOB-TOKEN: $CI_JOB_TOKEN\"")
    try:
        return _gate().verify(token)
    except JobTokenError as exc:
        return json_error(401, "job_token_invalid", str(exc))
    except GitLabError as exc:
        return json_error(503, "gitlab_unavailable", f"{exc}; retry shortly", Retry_After="10")


def _answer(answer: Answer) -> ResponseReturnValue:
    response = jsonify(answer.body)
    response.status_code = answer.status
    for name, value in answer.headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def _body() -> object:
    try:
        return json.loads(request.get_data(cache=True) or b"null")
    except (ValueError, UnicodeDecodeError):
        return None


@bp.post("/api/v1/ci/pushes")
def record_push() -> ResponseReturnValue:
    job = _job()
    if not isinstance(job, Job):
        return job
    return _answer(_gate().record_push(job, _body()))


@bp.post("/api/v1/ci/untag")
def untag() -> ResponseReturnValue:
    job = _job()
    if not isinstance(job, Job):
        return job
    return _answer(_gate().request_untag(job, _body()))
