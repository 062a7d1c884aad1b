"""JSON error bodies (``{"error": code, "message": what to do}``) and request-context accessors."""

from __future__ import annotations

from typing import Any

from flask import current_app, jsonify
from flask.typing import ResponseReturnValue

from daemon.config import Settings
from daemon.store import Store


def json_error(status: int, code: str, message: str, **headers: str) -> ResponseReturnValue:
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def janitor() -> dict[str, Any]:
    return current_app.extensions["janitor"]


def settings() -> Settings:
    return janitor()["settings"]


def store() -> Store:
    return janitor()["store"]


def now() -> float:
    return float(janitor()["clock"]())
