"""The ``gitlab-api`` untag method's write: GitLab's own registry tag delete
(``DELETE /projects/:id/registry/repositories/:repository_id/tags/:tag``) with one project's token.

Its failures are the registry's (it stands in for the registry's tag delete, see
``daemon.registry.types.TagDeleter``), mapped through ``daemon.gitlab.errors`` like every other GitLab call:
the tag already gone (404) is :class:`TagNotFoundError`, GitLab unreachable or failing (5xx, 429,
connection errors) :class:`TransientRegistryError`, the token refused (401) :class:`RegistryAuthError`,
the token forbidden to do it (403: ``insufficient_scope`` for a token without the ``api`` scope, or a role
too low) :class:`NoDeletePermissionError`, anything else :class:`PermanentRegistryError`.

Owns: :class:`GitLabTagDeleter` and its cache of registry repositories (looked up once each).
Must not: decide whether a tag may be deleted (the executor did), or retry (the worker does).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import requests

from daemon.gitlab.client import connect
from daemon.gitlab.errors import Failure, describe, translated
from daemon.registry.errors import (
    NoDeletePermissionError,
    PermanentRegistryError,
    RegistryAuthError,
    RegistryError,
    TagNotFoundError,
    TransientRegistryError,
)


def _registry_error(what: str, subject: str, url: str, gone: str | None) -> Callable[[Failure], RegistryError]:
    """Failure -> the registry's error for it; ``gone`` is the message for a 404 that means the tag is
    already absent (None: a 404 means the token cannot see ``subject``, a permanent failure)."""

    def make(failure: Failure) -> RegistryError:
        if failure.kind == "not_found" and gone is not None:
            return TagNotFoundError(gone, status=failure.status)
        if failure.kind == "forbidden":
            return NoDeletePermissionError(
                f"GitLab at {url} refused the token to {what} ({failure.reason}): the gitlab-api method "
                f"deletes the tags of {subject} with the project's registry_token, and "
                "that token needs the api scope and at least the Developer role there; nothing was deleted. "
                "Retry the failed untags once the token is fixed",
                status=failure.status,
            )
        error: type[RegistryError] = PermanentRegistryError
        if failure.transient:
            error = TransientRegistryError
        elif failure.kind == "refused":
            error = RegistryAuthError
        return error(describe(failure, what, subject=subject, url=url), status=failure.status)

    return make


class GitLabTagDeleter:
    """Deletes tags through GitLab's API with one token (``daemon.registry.types.TagDeleter``)."""

    def __init__(self, gitlab_url: str, token: str, *, timeout: float = 10.0,
                 session: requests.Session | None = None) -> None:
        self.url = gitlab_url.rstrip("/")
        self._client = connect(gitlab_url, private_token=token, timeout=timeout, session=session)
        self._repositories: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def delete_tag(self, project_path: str, repository: str, tag: str) -> None:
        repo = self._repository(project_path, repository)
        what = f"delete tag {repository}:{tag}"
        with translated(_registry_error(what, project_path, self.url, f"GitLab has no tag {repository}:{tag}")):
            repo.tags.delete(tag)

    def _repository(self, project_path: str, repository: str) -> Any:
        key = (project_path, repository)
        with self._lock:
            if key in self._repositories:
                return self._repositories[key]
        what = f"list the registry repositories of {project_path}"
        with translated(_registry_error(what, project_path, self.url, None)):
            project = self._client.projects.get(project_path, lazy=True)
            for repo in project.repositories.list(iterator=True):
                if repo.path == repository:
                    with self._lock:
                        self._repositories[key] = repo
                    return repo
        raise TagNotFoundError(f"GitLab lists no registry repository {repository} in {project_path}")
