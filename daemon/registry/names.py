"""References checked before they reach a URL path. The naming rules themselves live in ``daemon.domain.names``
(shared with the planner and the CI gate); this adds the registry's error for a bad reference."""

from __future__ import annotations

from daemon.domain.names import in_project_path, is_digest, is_repository, is_tag
from daemon.registry.errors import PermanentRegistryError

__all__ = ["checked_ref", "in_project_path", "is_digest", "is_repository"]


def checked_ref(ref: str) -> str:
    """A tag or digest, validated so nothing but a reference can reach the URL path."""
    if not is_tag(ref) and not is_digest(ref):
        raise PermanentRegistryError(f"{ref!r} is neither a valid tag nor a digest")
    return ref
