"""Every error the web answers has one JSON shape: ``{"error": code, "message": what to do}``."""

from __future__ import annotations

from flask import jsonify
from flask.typing import ResponseReturnValue


def json_error(status: int, code: str, message: str, **headers: str) -> ResponseReturnValue:
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response
