"""The registry client: challenge auth, token cache, rate limit, retries and the untag methods (S3, S5, S6).

Import from here. Submodules: ``client`` (RegistryClient), ``project`` (ProjectRegistry), ``untag``
(methods, guards, restore), ``auth`` (tokens), ``transport`` (limiter, retries), ``names`` (well-formed
names, S6 scope), ``placeholder`` (the empty image tags are parked on), ``ratelimit``, ``types`` and
``errors``. Nothing in this package reads config or storage: the worker wires it.
"""

from daemon.registry.client import ProjectRegistry, RegistryClient, new_session
from daemon.registry.errors import (
    OutOfScopeError,
    PermanentRegistryError,
    RegistryAuthError,
    RegistryError,
    RestoreConflictError,
    RestoreError,
    TagNotFoundError,
    TransientRegistryError,
)
from daemon.registry.names import in_project_path
from daemon.registry.ratelimit import RateLimiter
from daemon.registry.types import Manifest, TagDeleter, UntagRequest, UntagResult

__all__ = [
    "Manifest",
    "OutOfScopeError",
    "PermanentRegistryError",
    "ProjectRegistry",
    "RateLimiter",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryError",
    "RestoreConflictError",
    "RestoreError",
    "TagDeleter",
    "TagNotFoundError",
    "TransientRegistryError",
    "UntagRequest",
    "UntagResult",
    "in_project_path",
    "new_session",
]
