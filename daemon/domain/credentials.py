"""Which GitLab credential each feature needs, and what a token's grants and scopes let it serve (SPEC 14,
Credentials). Pure: the granted actions and the scopes come from callers that asked GitLab.

GitLab's rules behind them:

- ``lib/gitlab/auth.rb`` (``abilities_for_scopes``): the ``api`` scope gives every ability
  (``admin_container_image`` included), ``read_api`` read-only ones (registry pull), ``read_registry``
  pull only, ``write_registry`` push only.
- ``app/services/auth/container_registry_authentication_service.rb``: the registry ``delete`` action
  needs ``admin_container_image``; an action the token may not have is silently left out of the token
  ``/jwt/auth`` issues, never refused.
- ``app/policies/project_policy.rb``: ``admin_container_image`` comes with the Maintainer role.

So untagging through the registry needs a project access token with the ``api`` scope and the
Maintainer role; ``read_registry`` or ``write_registry`` tokens get a token without ``delete``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from daemon.domain.model import UntagMethod

#: The registry actions, in the order GitLab lists them.
REGISTRY_ACTIONS = ("pull", "push", "delete")
#: What a project token needs for the janitor to untag through the registry.
REGISTRY_FIX = "give it the api scope and the Maintainer role"
#: GitLab API scopes: ``api`` reads and writes, ``read_api`` only reads.
WRITE_SCOPE = "api"
READ_SCOPE = "read_api"


def actions_needed(method: UntagMethod) -> tuple[str, ...]:
    """The registry actions an untag by ``method`` needs from the project's token: every method reads the
    tag first (``pull``); ``oci`` deletes the tag; ``placeholder`` (and ``auto``, which falls back to it)
    also pushes the placeholder; ``gitlab-api`` leaves the write to GitLab."""
    if method == "gitlab-api":
        return ("pull",)
    if method == "oci":
        return ("pull", "delete")
    return REGISTRY_ACTIONS


def missing_actions(granted: Collection[str], method: UntagMethod) -> tuple[str, ...]:
    """The actions ``method`` needs that ``granted`` lacks (a ``*`` grant holds every action)."""
    if "*" in granted:
        return ()
    return tuple(action for action in actions_needed(method) if action not in granted)


def describe_actions(granted: Collection[str]) -> str:
    """``pull,push``: the granted actions in GitLab's order, ``nothing`` when none."""
    known = [a for a in REGISTRY_ACTIONS if a in granted]
    return ",".join(known + sorted(set(granted) - set(REGISTRY_ACTIONS))) or "nothing"


def registry_fix(project_path: str, repository: str, granted: Collection[str]) -> str:
    """What is wrong with a project's registry token and how to fix it, e.g. ``token for group/app gets
    pull,push on group/app; give it the api scope and the Maintainer role``."""
    text = f"token for {project_path} gets {describe_actions(granted)} on {repository}; {REGISTRY_FIX}"
    if not granted:
        text += f" (and make it a token of {project_path}: a token of another project gets nothing here)"
    return text


@dataclass(frozen=True)
class ApiVerdict:
    """What a GitLab token's scopes mean for the features that use it: ``ok`` False when a feature the
    configuration relies on cannot work with it."""

    ok: bool
    text: str


def api_verdict(scopes: Collection[str] | None, *, reads: bool, writes: bool) -> ApiVerdict:
    """Judge a token by its scopes (None: GitLab answered ``403 insufficient_scope``, the token cannot call
    the API at all). ``reads``: the configuration uses it for reconcile and branch lookups; ``writes``:
    for the ``gitlab-api`` untag method."""
    held = set(scopes or ())
    named = (",".join(sorted(held)) or "no scope") if scopes is not None else "no API scope (403 insufficient_scope)"
    if WRITE_SCOPE in held:
        return ApiVerdict(True, f"{named}: reconcile, branch lookups, the gitlab-api method, and hooks install"
                                " with the Maintainer role")
    if READ_SCOPE in held:
        text = f"{named}: reconcile and branch lookups only; hooks install and the gitlab-api method need api"
        if writes:
            return ApiVerdict(False, f"{text}, and registry.untag_method is gitlab-api: give it the api scope")
        return ApiVerdict(True, text)
    text = (f"{named}: cannot call the GitLab API, so reconcile, branch lookups, hooks and the gitlab-api"
            " method fail (a branch that cannot be looked up counts as live: its tags are never cleaned)")
    if writes:
        return ApiVerdict(False, f"{text}; registry.untag_method is gitlab-api: give it the api scope")
    if reads:
        return ApiVerdict(False, f"{text}; give it the api scope, or set gitlab.api_token (read_api is enough)")
    return ApiVerdict(True, f"{named}: no GitLab API access, and none needed from it (gitlab.api_token serves"
                            " the API)")
