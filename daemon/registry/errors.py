"""Every error the registry client raises, as one tree under the janitor's ``JanitorError``.

    JanitorError                              (daemon.errors)
    └── RegistryError                         anything the registry client raises on purpose
        ├── TransientRegistryError            5xx, connection errors, 429 after retries: try again later
        │                                     (also a daemon.errors.RegistryUnavailable)
        ├── PermanentRegistryError            4xx other than 404/429, bad manifests: retrying will not help
        │                                     (also a daemon.errors.RegistryRefused, as OutOfScopeError)
        │   ├── RegistryAuthError             token refused, or a 401 even after one token refresh
        │   │   └── TokenRealmRefusedError    the challenge names a token service the credential may not go to
        │   └── NoDeletePermissionError       the token may not delete (registry grant or GitLab 403)
        ├── OutOfScopeError                   repository outside the project path; raised before any request
        ├── TagNotFoundError                  a tag deleter (gitlab-api method) found the tag already gone
        └── RestoreError                      a tag cannot be put back (blobs gone, or the tag was reused)
            └── RestoreConflictError          the tag now points at another image; nothing was overwritten

``status`` is the HTTP status that caused the error (None when no answer came) and ``codes`` the
registry's error codes (``MANIFEST_UNKNOWN``, ``DIGEST_INVALID`` ...). ``code`` is the janitor's own short
code for it (``registry_unreachable``, ``registry_timeout``, ``auth_refused`` ...), which a stored reason
starts with (``daemon.registry.failures``). Messages say what failed and what to do, in words a person
reads: never a library's repr. This module owns the tree only: no HTTP, no decisions about which error to raise.
"""

from __future__ import annotations

from collections.abc import Iterable

from daemon.domain.model import NO_DELETE_PERMISSION
from daemon.errors import JanitorError, RegistryRefused, RegistryUnavailable


class RegistryError(JanitorError):
    """Base of every error raised by ``daemon.registry``."""

    #: The short code of a stored reason, unless the raiser names a more precise one.
    default_code = "registry_error"

    def __init__(self, message: str, *, status: int | None = None, codes: Iterable[str] = (),
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.codes: tuple[str, ...] = tuple(codes)
        self.code = code or self.default_code


class TransientRegistryError(RegistryError, RegistryUnavailable):
    """The registry was unreachable, overloaded (5xx) or kept rate limiting (429): retry later."""


class PermanentRegistryError(RegistryError, RegistryRefused):
    """The registry refused the request for a reason retrying will not change."""


class RegistryAuthError(PermanentRegistryError):
    """The token service refused the project's credential, or the registry refused the token it gave."""

    default_code = "auth_refused"


class TokenRealmRefusedError(RegistryAuthError):
    """The registry's challenge names a token service (realm) that is neither on ``gitlab.url``'s host nor
    in ``registry.token_realms``, or is plain http to a host that is not loopback. Raised before the
    project's credential is sent anywhere; the realm is not remembered. ``realm``: the refused one."""

    default_code = "token_realm_refused"

    def __init__(self, message: str, *, realm: str, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.realm = realm


class NoDeletePermissionError(PermanentRegistryError):
    """The project's token may not untag: the registry's token service granted it no ``delete`` (or not
    every action the method needs), or GitLab's API forbade the tag delete (403). Raised before any write;
    the message names what was granted and the fix. Untags failing with it end ``no_delete_permission``.
    ``granted``: the registry actions the token holds (empty when GitLab's API refused)."""

    default_code = NO_DELETE_PERMISSION

    def __init__(self, message: str, *, status: int | None = None, codes: Iterable[str] = (),
                 granted: Iterable[str] = ()) -> None:
        super().__init__(message, status=status, codes=codes)
        self.granted: frozenset[str] = frozenset(granted)


class OutOfScopeError(RegistryError, RegistryRefused):
    """A repository outside the project's path (S6). Raised before any request is sent."""

    default_code = "out_of_scope"


class TagNotFoundError(RegistryError):
    """Raised by a ``TagDeleter`` when the tag it was asked to delete is already gone (S8: not a failure)."""

    default_code = "missing"


class RestoreError(RegistryError):
    """A saved manifest cannot be put back; the message says why and what to do instead."""

    default_code = "restore_failed"


class RestoreConflictError(RestoreError):
    """The tag was pushed again since it was untagged; restoring would overwrite that newer image."""

    default_code = "restore_conflict"
