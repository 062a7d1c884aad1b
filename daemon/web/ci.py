"""``POST /api/v1/ci/pushes`` and ``POST /api/v1/ci/untag``: CI jobs authenticated by GitLab.

HTTP only: the ``JOB-TOKEN`` check (401), then :class:`daemon.broker.Broker` decides. GitLab is the
one outside service the web process calls, and only to verify job tokens (cached for a bounded time).
"""

from __future__ import annotations

import json

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from daemon.broker import Answer, Broker
from daemon.errors import GitLabError, JobTokenError
from daemon.gitlab import GitLab, Job
from daemon.web.errors import janitor, json_error, now, settings, store

bp = Blueprint("ci", __name__)


def _gitlab() -> GitLab:
    client = janitor().get("gitlab")
    if client is None:
        client = GitLab.from_settings(settings().gitlab)
        janitor()["gitlab"] = client
    return client


def _job() -> Job | ResponseReturnValue:
    token = request.headers.get("JOB-TOKEN")
    if not token:
        return json_error(401, "job_token_missing", "send the job's token: -H \"JOB-TOKEN: $CI_JOB_TOKEN\"")
    try:
        return _gitlab().verify_job(token)
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


def _broker() -> Broker:
    return Broker(settings(), store(), lambda: now())


@bp.post("/api/v1/ci/pushes")
def record_push() -> ResponseReturnValue:
    job = _job()
    if not isinstance(job, Job):
        return job
    return _answer(_broker().record_push(job, _body()))


@bp.post("/api/v1/ci/untag")
def untag() -> ResponseReturnValue:
    job = _job()
    if not isinstance(job, Job):
        return job
    return _answer(_broker().request_untag(job, _body()))
