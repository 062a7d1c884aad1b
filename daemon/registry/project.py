"""One project's view of the registry: the requests themselves, every one scoped to the project (S6).

Owns: manifest reads and writes, blob upload, tag listing, and the auth dance per request (cached token
upfront; on 401 learn the challenge, refresh once, then ``RegistryAuthError``). ``_request`` checks
that the repository is the project's path or below it before anything is sent. Must not: decide what to
untag, touch storage, or delete a manifest by digest except the janitor's own placeholder (``untag`` is
the only caller of ``_delete_manifest``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import requests

from daemon.registry import untag as _untag
from daemon.registry.auth import fetch_token, parse_challenge
from daemon.registry.errors import OutOfScopeError, PermanentRegistryError, RegistryAuthError
from daemon.registry.names import checked_ref, in_project_path, is_digest
from daemon.registry.transport import raise_for_status
from daemon.registry.types import (
    MANIFEST_MEDIA_TYPES,
    Manifest,
    TagDeleter,
    UntagRequest,
    UntagResult,
    sha256_digest,
)

if TYPE_CHECKING:
    from daemon.registry.client import RegistryClient

_ACCEPT = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
#: Tags per page when listing; distribution accepts up to 1000.
TAG_PAGE = 1000


class ProjectRegistry:
    """The registry as one project sees it. Every request it makes is scoped to ``project_path`` (S6)."""

    def __init__(
        self,
        client: RegistryClient,
        project_path: str,
        registry_token: str,
        tag_deleter: TagDeleter | None,
    ) -> None:
        self.client = client
        self.project_path = project_path
        self.tag_deleter = tag_deleter
        self._registry_token = registry_token

    def __repr__(self) -> str:  # never show the token
        return f"ProjectRegistry({self.client.base_url!r}, {self.project_path!r})"

    def check_scope(self, repository: str) -> None:
        """Raise ``OutOfScopeError`` unless the repository is the project's path or below it."""
        if not in_project_path(self.project_path, repository):
            raise OutOfScopeError(
                f"repository {repository!r} is outside project {self.project_path!r}; "
                "the janitor only touches the project's own path and the repositories below it"
            )

    def head(self, repository: str, ref: str) -> str | None:
        """The digest ``ref`` (a tag or digest) points at, or None when absent."""
        resp = self._request("HEAD", repository, f"manifests/{checked_ref(ref)}", headers=_ACCEPT)
        if resp.status_code == 404:
            return None
        raise_for_status(resp, f"HEAD {repository}:{ref}")
        digest = resp.headers.get("Docker-Content-Digest")
        if digest:
            return digest
        found = self.get_manifest(repository, ref)
        return found.digest if found else None

    def get_manifest(self, repository: str, ref: str) -> Manifest | None:
        """The manifest exactly as stored (any of the four media types), or None when absent."""
        resp = self._request("GET", repository, f"manifests/{checked_ref(ref)}", headers=_ACCEPT)
        if resp.status_code == 404:
            return None
        raise_for_status(resp, f"GET {repository}:{ref}")
        body = resp.content
        computed = sha256_digest(body)
        claimed = resp.headers.get("Docker-Content-Digest") or computed
        expected = ref if is_digest(ref) else claimed
        if expected.startswith("sha256:") and expected != computed:
            raise PermanentRegistryError(
                f"GET {repository}:{ref}: manifest bytes hash to {computed}, not {expected}; "
                "a proxy between the janitor and the registry may be rewriting them"
            )
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        return Manifest(expected, _media_type(media_type, body), body)

    def put_manifest(self, repository: str, ref: str, manifest: Manifest) -> str:
        """Store ``manifest`` under ``ref``; returns the digest the registry computed."""
        resp = self._request(
            "PUT",
            repository,
            f"manifests/{checked_ref(ref)}",
            headers={"Content-Type": manifest.media_type},
            data=manifest.body,
        )
        raise_for_status(resp, f"PUT {repository}:{ref}")
        return resp.headers.get("Docker-Content-Digest") or manifest.digest

    def list_tags(self, repository: str) -> list[str]:
        """Every tag of the repository (following ``Link`` pages); empty when the repository is unknown."""
        tags: list[str] = []
        url: str | None = None
        while True:
            if url is None:
                resp = self._request("GET", repository, "tags/list", params={"n": str(TAG_PAGE)})
            else:
                resp = self._request("GET", repository, url=url)
            if resp.status_code == 404:
                return tags
            raise_for_status(resp, f"list tags of {repository}")
            tags.extend(resp.json().get("tags") or [])
            following = resp.links.get("next", {}).get("url")
            if not following:
                return tags
            url = urljoin(f"{self.client.base_url}/v2/{repository}/tags/list", following)

    def tag_count(self, repository: str) -> int | None:
        """How many tags the repository holds now (for the bulk guard's fraction rule, S7)."""
        return len(self.list_tags(repository))

    def restore(self, repository: str, tag: str, manifest: Manifest) -> None:
        """Put ``tag`` back at the saved manifest. ``RestoreError`` when the registry lost its blobs."""
        _untag.restore(self, repository, tag, manifest)

    def untag(
        self, requests_: Sequence[UntagRequest], *, method: str = "auto", dry_run: bool = False
    ) -> list[UntagResult]:
        """Untag each request's tag, guarded by S3/S5/S6; one result per request, in order."""
        return _untag.untag(self, requests_, method=method, dry_run=dry_run)

    # Internal: used by daemon.registry.untag only.

    def _delete_manifest(self, repository: str, ref: str) -> None:
        resp = self._request("DELETE", repository, f"manifests/{checked_ref(ref)}")
        raise_for_status(resp, f"DELETE {repository}:{ref}")

    def _get_blob(self, repository: str, digest: str) -> bytes | None:
        resp = self._request("GET", repository, f"blobs/{checked_ref(digest)}")
        if resp.status_code == 404:
            return None
        raise_for_status(resp, f"GET blob {repository}@{digest}")
        return resp.content

    def _upload_blob(self, repository: str, data: bytes, digest: str) -> None:
        """Monolithic upload in two steps (POST, then PUT with the digest): distribution 2.8 needs both."""
        resp = self._request("POST", repository, "blobs/uploads/")
        raise_for_status(resp, f"start blob upload to {repository}")
        location = resp.headers.get("Location")
        if resp.status_code != 202 or not location:
            raise PermanentRegistryError(f"start blob upload to {repository}: no upload location")
        url = urljoin(f"{self.client.base_url}/v2/{repository}/blobs/uploads/", location)
        resp = self._request(
            "PUT",
            repository,
            url=url,
            params={"digest": digest},
            headers={"Content-Type": "application/octet-stream"},
            data=data,
        )
        raise_for_status(resp, f"finish blob upload to {repository}")

    def _request(
        self,
        method: str,
        repository: str,
        path: str = "",
        *,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send with the cached token; on 401 learn the challenge, refresh once, then give up."""
        self.check_scope(repository)
        client = self.client
        if url is None:
            url = f"{client.base_url}/v2/{repository}/{path}"
        elif _origin(url) != _origin(client.base_url):
            raise PermanentRegistryError(f"registry sent the janitor to another host: {url}")
        key = (self.project_path, repository)
        token, fresh = self._token(repository)
        for refreshed in (False, True):
            resp = client.transport.send(method, url, headers=_auth(headers, token), data=data, params=params)
            if resp.status_code != 401:
                return resp
            client.learn_challenge(resp)
            if token is not None:
                client.tokens.invalidate(key, token)
            if refreshed or fresh:
                break
            token, fresh = self._token(repository)
        refused = parse_challenge(resp.headers.get("WWW-Authenticate"))
        error = refused.params.get("error") if refused else None
        raise RegistryAuthError(
            f"registry refused access to {repository} for project {self.project_path}"
            f"{f' ({error})' if error else ''}; check the project's registry_token (it needs pull, push "
            f"and delete on {self.project_path})",
            status=401,
        )

    def _token(self, repository: str) -> tuple[str | None, bool]:
        challenge = self.client.challenge
        if challenge is None:
            return None, False
        return self.client.tokens.get(
            (self.project_path, repository),
            lambda: fetch_token(self.client.transport, challenge, self.project_path, repository, self._registry_token),
        )


def _auth(headers: Mapping[str, str] | None, token: str | None) -> dict[str, str]:
    out = dict(headers or {})
    if token is not None:
        out["Authorization"] = f"Bearer {token}"
    return out


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _media_type(header: str, body: bytes) -> str:
    if header in MANIFEST_MEDIA_TYPES:
        return header
    try:
        declared = json.loads(body).get("mediaType")
    except (ValueError, AttributeError):
        declared = None
    return declared if isinstance(declared, str) and declared else header
