"""Repository, tag and digest names: what is well formed, and which repositories a project owns (S6).

Pure functions, no I/O, shared by the planner, the CI gate and the registry client, so the scope rule
is one rule: a name like ``group/app/../other`` can never pass it, and a tag can never smuggle ``/`` or
``..`` into a URL path.
"""

from __future__ import annotations

import re

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
# The OCI distribution spec's tag grammar.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")


def is_digest(ref: str) -> bool:
    return _DIGEST.fullmatch(ref) is not None


def is_tag(ref: str) -> bool:
    return _TAG.fullmatch(ref) is not None


def is_repository(name: str) -> bool:
    return len(name) <= 255 and _REPOSITORY.fullmatch(name) is not None


def in_project_path(project_path: str, repository: str) -> bool:
    """S6's path rule: a well-formed repository name equal to the project path or below it (``path/...``).

    GitLab registry paths are the project's full path in lower case, so the project path is compared
    lower-cased; the repository itself must already be lower case, as the registry requires.
    """
    path = project_path.strip("/").lower()
    if not path or not is_repository(repository):
        return False
    return repository == path or repository.startswith(path + "/")
