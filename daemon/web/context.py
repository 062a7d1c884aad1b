"""What the app was built with, read from the request's app: settings, store, clock and the CI gate.

``create_app`` puts them in ``app.extensions["janitor"]``; routes read them through these accessors
and never reach for globals.
"""

from __future__ import annotations

from typing import Any

from flask import current_app

from daemon.config import Settings
from daemon.store import Store


def janitor() -> dict[str, Any]:
    parts: dict[str, Any] = current_app.extensions["janitor"]
    return parts


def settings() -> Settings:
    value: Settings = janitor()["settings"]
    return value


def store() -> Store:
    value: Store = janitor()["store"]
    return value


def now() -> float:
    return float(janitor()["clock"]())
