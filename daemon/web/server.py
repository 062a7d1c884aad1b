"""Running the Flask app under gunicorn from the CLI (``registry-janitor web``)."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from daemon.config import Settings


def build_app(settings: Settings) -> Flask:
    """What each gunicorn worker process runs once: its own store connection, its own app."""
    from daemon.store import open_store
    from daemon.web import create_app

    return create_app(settings, open_store(settings.storage.url))


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return build_app(self.settings)


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """Defaults that suit the webhook path; ``GUNICORN_CMD_ARGS`` overrides any of them."""
    return {
        "bind": settings.server.bind,
        "workers": int(os.environ.get("JANITOR_WEB_WORKERS", "2")),
        "worker_class": "gthread",
        "threads": int(os.environ.get("JANITOR_WEB_THREADS", "4")),
        "timeout": 30,
        "graceful_timeout": 10,
        "accesslog": "-" if os.environ.get("JANITOR_ACCESS_LOG") else None,
        "errorlog": "-",
    }


def serve(settings: Settings, config_path: str | None) -> None:
    if config_path:
        os.environ["JANITOR_CONFIG"] = config_path
    _Gunicorn(settings, gunicorn_options(settings)).run()
