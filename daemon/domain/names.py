"""GitLab paths, repository, tag and digest names: what is well formed, and which repositories a project
owns (S6).

Pure functions, no I/O, shared by the planner, the CI gate and the registry client, so the scope rule
is one rule: a name like ``group/app/../other`` can never pass it, and a tag can never smuggle ``/`` or
``..`` into a URL path.
"""

from __future__ import annotations

import ipaddress
import re

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
# The OCI distribution spec's tag grammar.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
# GitLab's path rules (lib/gitlab/path_regex.rb, app/models/namespace.rb): each segment of a full path is
# letters, digits, '_', '-' and '.', at most 255 characters, never ending in '.git' or '.atom'; a group
# has at most 20 ancestors. Stricter where GitLab's older rule was loose and its registry never was (the
# container registry's path rule, GitLab issue 27483): no segment starts or ends with '-' or '.', none
# holds '..'.
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,253}[A-Za-z0-9_])?")
MAX_NAMESPACE_DEPTH = 21
_MAX_PROJECT_PATH = (MAX_NAMESPACE_DEPTH + 1) * 256


def is_digest(ref: str) -> bool:
    return _DIGEST.fullmatch(ref) is not None


def is_tag(ref: str) -> bool:
    return _TAG.fullmatch(ref) is not None


def is_repository(name: str) -> bool:
    return len(name) <= 255 and _REPOSITORY.fullmatch(name) is not None


def _is_path_segment(segment: str) -> bool:
    return (_PATH_SEGMENT.fullmatch(segment) is not None and ".." not in segment
            and not segment.endswith((".git", ".atom")))


def is_namespace_path(path: str) -> bool:
    """A GitLab group's full path (``group`` or ``group/sub``), as GitLab accepts it."""
    segments = path.split("/")
    return len(segments) <= MAX_NAMESPACE_DEPTH and all(_is_path_segment(s) for s in segments)


def is_project_path(path: str) -> bool:
    """A GitLab project's full path (``group/app``, ``group/sub/app``): a group's full path, then the
    project's own path. Nothing else, so no ``..``, ``//``, newline or ``*`` ever passes."""
    if len(path) > _MAX_PROJECT_PATH:
        return False
    namespace, sep, name = path.rpartition("/")
    return bool(sep) and is_namespace_path(namespace) and _is_path_segment(name)


def in_project_path(project_path: str, repository: str) -> bool:
    """S6's path rule: a well-formed repository name equal to the project path or below it (``path/...``).

    GitLab registry paths are the project's full path in lower case, so the project path is compared
    lower-cased; the repository itself must already be lower case, as the registry requires.
    """
    path = project_path.strip("/").lower()
    if not path or not is_repository(repository):
        return False
    return repository == path or repository.startswith(path + "/")


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (with or without the brackets of a URL's host)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
