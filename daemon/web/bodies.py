"""Reading request bodies as JSON, strictly: what GitLab, the registry and CI jobs send, and nothing else.

``NaN``, ``Infinity`` and numbers too large for a float (``1e400``) are refused, as are integers of more
digits than Python reads (4300) and nesting deeper than the parser can follow: every such body is a
:class:`BadJson` (the routes answer 400), never an error of the janitor's. How deep GitLab's payloads may
nest is the parser's (``daemon.domain.events``) to say; this only keeps reading them from failing.
"""

from __future__ import annotations

import json
import math
from typing import Any


class BadJson(ValueError):
    """The body is not JSON the janitor reads; the message says why."""


def _refuse_constant(name: str) -> Any:
    raise BadJson(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJson(f"the number {text[:40]} is too large")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_float)


def load_json(data: bytes) -> Any:
    """The JSON value in ``data`` (UTF-8, -16 or -32, as ``json.loads`` reads bytes); raises :class:`BadJson`."""
    try:
        text = data.decode(json.detect_encoding(data), "surrogatepass")
        if text.startswith("\ufeff"):
            raise BadJson("the body starts with a byte order mark")
        return _DECODER.decode(text)
    except RecursionError:
        raise BadJson("the body nests objects and lists too deeply") from None
    except BadJson:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadJson(f"the body is not valid JSON ({exc})") from None
