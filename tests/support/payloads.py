"""GitLab's and the registry's documented payloads, kept in `tests/fixtures/gitlab-payloads/` (see its
SOURCES.md). Tests vary fields on a copy; the files stay as their sources give them."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

PAYLOADS = Path(__file__).resolve().parent.parent / "fixtures" / "gitlab-payloads"


@cache
def _load_payload(name: str) -> Any:
    path = PAYLOADS / (name if name.endswith(".json") else f"{name}.json")
    if not path.exists():
        available = sorted(p.stem for p in PAYLOADS.glob("*.json")) if PAYLOADS.is_dir() else []
        raise FileNotFoundError(f"no payload {path}; available: {available}")
    return json.loads(path.read_text())


def load_payload(name: str) -> Any:
    """A fresh deep copy of a reference payload (`pipeline_event` or `pipeline_event.json`)."""
    return copy.deepcopy(_load_payload(name))
