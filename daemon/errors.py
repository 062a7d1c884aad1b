"""The janitor's error tree (registry errors live in ``daemon.registry.errors`` and join it there).

``RegistryUnavailable`` and ``RegistryRefused`` say why a registry read failed to a part that may not import
the registry client (the CI gate): the registry's transient errors are ``RegistryUnavailable``, its
permanent ones ``RegistryRefused``.

    JanitorError
    ├── ConfigError          config invalid: every problem with its key path; the CLI exits 2
    ├── GitLabError          GitLab answered unexpectedly or could not be reached
    │   └── JobTokenError    a CI job token GitLab does not accept (HTTP 401 to the job)
    ├── RegistryUnavailable  the registry cannot be asked now (unreachable, 5xx, 429): ask again later
    ├── RegistryRefused      the registry refused to answer, and asking again will not change that
    └── registry.errors.RegistryError  (transient vs permanent, auth, out of scope, restore)

Messages say what failed and what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence


class JanitorError(Exception):
    """Base of every error the janitor raises on purpose."""


class ConfigError(JanitorError):
    """The configuration is invalid; ``problems`` lists each one with its key path."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in self.problems))


class GitLabError(JanitorError):
    """GitLab could not be reached or answered something the janitor cannot use."""


class JobTokenError(GitLabError):
    """GitLab did not accept a CI job token (expired, job finished, or not a token at all)."""


class RegistryUnavailable(JanitorError):
    """The registry could not be asked now (unreachable, timed out, 5xx, rate limited): ask again later."""


class RegistryRefused(JanitorError):
    """The registry refused to answer (credential refused, a 4xx); asking again will not change that."""
