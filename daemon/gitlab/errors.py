"""How a failed GitLab call becomes one of the janitor's errors: the only place that reads python-gitlab's and
requests' exceptions.

Every call to GitLab runs inside :func:`gitlab_errors` (or :func:`job_token_errors` for a CI job token, or
:func:`translated` with a caller's own factory, as the tag deleter does for registry errors). Each failure is
first sorted by :func:`classify` into one :class:`Failure`, so a 401, a 403, a 404 and an unreachable GitLab
read the same whichever call failed: what was being done, what GitLab answered, and what to do about it.

    401                          token refused (expired, revoked, or not a token): set a working token
    403                          token lacks the permission or scope for the call
    404                          the thing asked about is not visible to this token (or does not exist)
    5xx, 429, connection errors  GitLab could not be reached: check gitlab.url, retry later
    anything else                GitLab's own status and message

Owns: :class:`GitLabAPIError` and the wording of those messages.
Must not: call GitLab, decide what a failure means to a caller (``branch_exists`` turning a refusal into
"unknown" is the caller's rule), or drop the original exception (every error is raised ``from`` it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Literal

import gitlab.exceptions
import requests

from daemon.errors import GitLabError, JobTokenError
from daemon.registry.failures import connection_problem

Kind = Literal["refused", "forbidden", "not_found", "unreachable", "other"]

TOO_MANY_REQUESTS = 429  # GitLab rate limiting (after python-gitlab's own waits): as good as unreachable


class GitLabAPIError(GitLabError):
    """GitLab answered an API call with an error; ``status`` is its HTTP code (None: not reached) and
    ``detail`` GitLab's own message (``404 Branch Not Found``), empty when there was none."""

    def __init__(self, message: str, status: int | None = None, *, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Failure:
    """One failed GitLab call, sorted: ``kind`` says which rule applies, ``reason`` is GitLab's answer (or
    the connection error) as a person reads it."""

    kind: Kind
    status: int | None
    detail: str
    reason: str

    @property
    def transient(self) -> bool:
        """Worth retrying later unchanged (GitLab down, overloaded or rate limiting)."""
        return self.kind == "unreachable"


def classify(exc: requests.RequestException | gitlab.exceptions.GitlabError) -> Failure:
    """Sort python-gitlab's and requests' exceptions by what they mean for the janitor."""
    if isinstance(exc, requests.ConnectionError | requests.Timeout):  # in words, not the library's repr
        return Failure("unreachable", None, "", connection_problem(exc)[1])
    if isinstance(exc, requests.RequestException | gitlab.exceptions.GitlabConnectionError):
        return Failure("unreachable", None, "", str(exc) or type(exc).__name__)
    status = exc.response_code
    detail = str(exc.error_message or "")
    if status is None or not detail:
        reason = str(status or detail or "error")
    else:  # GitLab's messages often start with the status already ("404 Project Not Found")
        reason = detail if detail.startswith(str(status)) else f"{status}: {detail}"
    if status == 401:
        kind: Kind = "refused"
    elif status == 403:
        kind = "forbidden"
    elif status == 404:
        kind = "not_found"
    elif status is not None and (status >= 500 or status == TOO_MANY_REQUESTS):
        kind = "unreachable"
    else:
        kind = "other"
    return Failure(kind, status, detail, reason)


def describe(failure: Failure, what: str, *, subject: str | None = None, url: str | None = None) -> str:
    """The message for ``failure`` of the call that was to ``what`` (``list the merge requests of g/app``);
    ``subject`` is what a 404 hides (a project path, ``group g``), ``url`` the GitLab asked."""
    at = f" at {url}" if url else ""
    if failure.kind == "refused":
        return (f"GitLab{at} refused the token used to {what} (401: expired, revoked, or not a token): set"
                " gitlab.api_token or the project's registry_token to a valid token")
    if failure.kind == "forbidden":
        return (f"GitLab{at} forbids the token to {what} (403: the token lacks the permission or scope for"
                " it): use a token with the api scope and a role that allows it")
    if failure.kind == "not_found":
        hidden = subject or "what it asked for"
        return (f"GitLab{at} could not {what}: {hidden} is not visible to this token (404: wrong path, or the"
                " token has no access to it); check the path and the token's access")
    if failure.kind == "unreachable":
        return (f"GitLab{at} could not be reached to {what} ({failure.reason}): check gitlab.url and that"
                " GitLab is up; retry later")
    return f"GitLab{at} could not {what} ({failure.reason})"


@contextmanager
def translated(make: Callable[[Failure], Exception]) -> Iterator[None]:
    """Run a GitLab call; a python-gitlab or requests exception leaves as ``make(classify(exc))``,
    raised from the original."""
    try:
        yield
    except (requests.RequestException, gitlab.exceptions.GitlabError) as exc:
        raise make(classify(exc)) from exc


def api_error(failure: Failure, what: str, *, subject: str | None = None,
              url: str | None = None) -> GitLabAPIError:
    """The janitor's error for ``failure``: :class:`GitLabAPIError` with GitLab's status and message."""
    return GitLabAPIError(describe(failure, what, subject=subject, url=url), failure.status, detail=failure.detail)


def gitlab_errors(what: str, *, subject: str | None = None,
                  url: str | None = None) -> AbstractContextManager[None]:
    """``with gitlab_errors("list the merge requests of g/app", subject="g/app"):`` runs a GitLab call and
    raises :class:`GitLabAPIError` (see :func:`describe`) if it fails."""
    return translated(lambda failure: api_error(failure, what, subject=subject, url=url))


def _job_token_error(failure: Failure, url: str | None) -> GitLabError:
    if failure.kind == "refused":
        return JobTokenError("GitLab does not accept this job token (401: expired, or its job finished): send"
                             " $CI_JOB_TOKEN from a job that is still running")
    if failure.kind in ("forbidden", "not_found"):
        return JobTokenError(f"GitLab refused the job token ({failure.status}): send $CI_JOB_TOKEN from a job"
                             " that is still running")
    return api_error(failure, "verify the job token", url=url)


def job_token_errors(url: str | None = None) -> AbstractContextManager[None]:
    """Like :func:`gitlab_errors` for ``GET /job`` with a CI job token: a token GitLab will not take
    (401, 403, 404) is :class:`JobTokenError`; GitLab failing to answer stays :class:`GitLabAPIError`."""
    return translated(lambda failure: _job_token_error(failure, url))
