"""The janitor's placeholder image: a unique, empty schema2 manifest that tags are parked on, then deleted.

Pure: builds the config blob and manifest bytes, and recognises a placeholder the janitor left behind
(a run killed between parking tags and deleting the placeholder, S9). Must not send requests.

Why a placeholder: distribution 2.x cannot delete a tag, only a manifest by digest, which removes every
tag on that digest (S5). Pointing the tags to remove at a manifest no one else uses and deleting that
one digest removes exactly those tags; the image they pointed at keeps its other tags.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from daemon.registry.types import DOCKER_CONFIG, DOCKER_MANIFEST, OCI_MANIFEST, Manifest, sha256_digest

#: Label in the placeholder's image config; its value is the nonce that makes every placeholder unique.
PLACEHOLDER_LABEL = "org.gitlab.registry-janitor.placeholder"
#: Configs larger than this are never fetched to look for the label.
MAX_CONFIG_SIZE = 2048


@dataclass(frozen=True)
class Placeholder:
    config: bytes
    config_digest: str
    manifest: Manifest


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def new_placeholder(nonce: str | None = None) -> Placeholder:
    """A fresh placeholder: a tiny image config carrying a random nonce, and a manifest with no layers."""
    config = _compact(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {PLACEHOLDER_LABEL: nonce or secrets.token_hex(16)}},
            "rootfs": {"type": "layers", "diff_ids": []},
        }
    )
    config_digest = sha256_digest(config)
    body = _compact(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": config_digest},
            "layers": [],
        }
    )
    return Placeholder(config, config_digest, Manifest(sha256_digest(body), DOCKER_MANIFEST, body))


def candidate_config(manifest: Manifest) -> str | None:
    """The config digest to inspect if ``manifest`` could be a janitor placeholder, else None (no request)."""
    if manifest.media_type not in (DOCKER_MANIFEST, OCI_MANIFEST):
        return None
    try:
        doc = json.loads(manifest.body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("layers") != []:
        return None
    config = doc.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
        return None
    size = config.get("size")
    if not isinstance(size, int) or size > MAX_CONFIG_SIZE:
        return None
    return str(config["digest"])


def is_placeholder_config(config: bytes) -> bool:
    """True when an image config carries the janitor's placeholder label."""
    try:
        doc = json.loads(config)
    except ValueError:
        return False
    labels = (doc.get("config") or {}).get("Labels") if isinstance(doc, dict) else None
    return isinstance(labels, dict) and PLACEHOLDER_LABEL in labels
