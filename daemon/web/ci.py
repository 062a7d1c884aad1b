"""``POST /api/v1/ci/pushes`` and ``POST /api/v1/ci/untag``: CI jobs authenticated by GitLab.

HTTP only: the ``JOB-TOKEN`` header (401 when missing or refused, 503 when GitLab cannot be asked, 429 when
GitLab refused too many tokens from the client's address lately: :class:`RefusalBudget`), then
the CI gate (:class:`daemon.ingest.ci_gate.CiGate`) decides and its ``Answer`` (status, JSON body,
headers such as ``Retry-After``) becomes the response. The web process calls GitLab only to verify job
tokens (cached for a bounded time) and, through the gate, to read a tag's ``created_at`` when nothing
else shows a record's push was the job's; and the registry only through the gate, for read-only manifest
HEADs (the digest of a record sent without one, or whether the tag now points at the digest sent).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from daemon.domain.model import Job
from daemon.errors import GitLabError, JobTokenError
from daemon.ingest.ci_gate import Answer, CiGate
from daemon.web.bodies import BadJson, load_json
from daemon.web.context import janitor, now
from daemon.web.errors import json_error

bp = Blueprint("ci", __name__)

#: Job tokens GitLab may refuse per client address before it waits: this many at once, then one more
#: every ``1 / REFUSALS_PER_SECOND`` seconds. A token GitLab accepts costs nothing.
REFUSALS_BURST = 10
REFUSALS_PER_SECOND = 1 / 6
#: Addresses remembered per process; the least recently refused are forgotten first.
REFUSAL_ADDRESSES = 4096
_BUDGET_KEY = "ci_job_token_refusals"


class RefusalBudget:
    """Per client address, a token bucket of job tokens GitLab may refuse: an address that sends token
    after token GitLab refuses (guessing, or a misconfigured job) waits before GitLab is asked again.
    Per process, in memory, at most ``size`` addresses."""

    def __init__(self, burst: float = REFUSALS_BURST, per_second: float = REFUSALS_PER_SECOND,
                 size: int = REFUSAL_ADDRESSES) -> None:
        self.burst, self.per_second, self.size = burst, per_second, size
        self._left: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (refusals left, at)
        self._lock = threading.Lock()

    def _left_at(self, address: str, at: float) -> float:
        left, since = self._left.get(address, (self.burst, at))
        return min(self.burst, left + max(0.0, at - since) * self.per_second)

    def wait(self, address: str, at: float) -> float:
        """Seconds before a token from ``address`` may be sent to GitLab; 0 when it may be now."""
        with self._lock:
            left = self._left_at(address, at)
        return 0.0 if left >= 1 else (1 - left) / self.per_second

    def refused(self, address: str, at: float) -> None:
        with self._lock:
            self._left[address] = (self._left_at(address, at) - 1, at)
            self._left.move_to_end(address)
            while len(self._left) > self.size:
                self._left.popitem(last=False)


def _gate() -> CiGate:
    gate: CiGate = janitor()["ci_gate"]
    return gate


def _refusals() -> RefusalBudget:
    """The app's budget, made on its first CI request."""
    budget: RefusalBudget | None = current_app.extensions.get(_BUDGET_KEY)
    if budget is None:
        budget = current_app.extensions.setdefault(_BUDGET_KEY, RefusalBudget())
    return budget


def _job() -> Job | ResponseReturnValue:
    token = request.headers.get("JOB-TOKEN")
    if not token:
        return json_error(401, "job_token_missing", "send the job's token: -H \"JOB-TOKEN: $CI_JOB_TOKEN\"")
    address, budget = request.remote_addr or "", _refusals()
    wait = budget.wait(address, now())
    if wait > 0:
        seconds = str(max(1, math.ceil(wait)))
        return json_error(429, "too_many_refused_tokens",
                          f"GitLab refused too many job tokens from this address lately; retry after {seconds} s"
                          " with $CI_JOB_TOKEN of a running job", Retry_After=seconds)
    try:
        return _gate().verify(token)
    except JobTokenError as exc:
        budget.refused(address, now())
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
        return load_json(request.get_data(cache=True) or b"null")
    except BadJson:
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
