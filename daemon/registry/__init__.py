"""The registry client: challenge auth, token cache, rate limit, retries and the untag methods (S3, S5, S6).

Import from here. Submodules, each importing only those after it: ``client`` (RegistryClient, builds the
site and hands out views), ``project`` (ProjectRegistry, one project's requests), ``untag`` (methods,
guards, restore, written against ``types.ProjectView``), ``site`` (RegistrySite: what every view of one
registry shares), ``auth`` (tokens), ``realms`` (which token services may be sent a credential),
``transport`` (limiter, retries), ``names`` (well-formed names, S6 scope), ``placeholder`` (the empty
image tags are parked on), ``ratelimit``, ``stats``, ``types`` and ``errors``. Nothing in this package
reads config or storage: the worker wires it.
"""

from daemon.registry.client import RegistryClient, new_session
from daemon.registry.errors import (
    NoDeletePermissionError,
    OutOfScopeError,
    PermanentRegistryError,
    RegistryAuthError,
    RegistryError,
    RestoreConflictError,
    RestoreError,
    TagNotFoundError,
    TokenRealmRefusedError,
    TransientRegistryError,
)
from daemon.registry.names import in_project_path
from daemon.registry.project import ProjectRegistry
from daemon.registry.ratelimit import RateLimiter
from daemon.registry.types import Manifest, TagDeleter, UntagRequest, UntagResult

__all__ = [
    "Manifest",
    "NoDeletePermissionError",
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
    "TokenRealmRefusedError",
    "TransientRegistryError",
    "UntagRequest",
    "UntagResult",
    "in_project_path",
    "new_session",
]
