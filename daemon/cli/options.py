"""What every command module shares: the ``--config`` option, loading settings (exit 2 on errors) and
logging set-up. Command modules import this, never the package root (``daemon.cli``)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from daemon.config import Settings, load_settings
from daemon.errors import ConfigError

CONFIG_HELP = "config file (default: $JANITOR_CONFIG, else config/janitor.yaml)"


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")
#: The fields a log call may pass with ``extra=``, in the order they are written; a field is written only
#: when the record has it (and it is not None).
LOG_FIELDS = ("project", "plan", "untag", "delivery", "request_id", "method", "path", "status", "duration_ms",
              "remote", "agent")
# Line breaks (those str.splitlines knows too), the other C0 and C1 controls (ESC of ANSI sequences, CSI),
# and DEL: what could end a log line early or rewrite what a terminal shows.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), m.group().encode("unicode_escape").decode()), text)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``LOG_FIELDS`` a record carries, in their order."""
    fields = {}
    for name in LOG_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = value
    return fields


_NEEDS_QUOTES = re.compile(r'[\s="]')


def _text_value(value: Any) -> str:
    """A field's value in the text format: as is, or JSON-quoted when it holds a space, ``=`` or quote."""
    if type(value) is int:  # ids and statuses: most fields of most lines
        return str(value)
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text or _NEEDS_QUOTES.search(text) else text


class OneLineFormatter(logging.Formatter):
    """Every record is one line, whatever its values hold: a project path, ref, tag or repository that
    came with a payload can neither start a line of its own (a forged ``CRITICAL``) nor send terminal
    escapes. A traceback keeps its lines, each indented, none of them able to pass for a record. The
    record's ``LOG_FIELDS`` follow the message as ``key=value``."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = record_fields(record)
        if fields:
            line += " " + " ".join(f"{name}={_text_value(value)}" for name, value in fields.items())
        return escape_controls(line)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + escape_controls(line) for line in text.splitlines())


# In JSON, what json.dumps leaves raw but a terminal or a line-splitting reader would act on: DEL, the C1
# controls and the Unicode line and paragraph separators (the C0 controls are escaped by json.dumps).
_JSON_RAW_CONTROL = re.compile("[\x7f-\x9f\u2028\u2029]")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, the record's
    ``LOG_FIELDS``, and ``exc`` (the traceback) or ``stack`` when it has one. No value can end the line or
    send terminal escapes: control characters are written as JSON escapes."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record_fields(record).items():
            line[name] = value if isinstance(value, (int, float, bool)) else str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        text = json.dumps(line, ensure_ascii=False, default=str)
        return _JSON_RAW_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def log_formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``--log-format`` (``text`` or ``json``)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    return JsonFormatter() if log_format == "json" else OneLineFormatter(LOG_FORMAT)


def log_format_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--log-format", "log_format", type=click.Choice(LOG_FORMATS, case_sensitive=False),
                        envvar="JANITOR_LOG_FORMAT", default="text", show_default=True, show_envvar=True,
                        help="one log line per record: text, or one JSON object")(fn)


def setup_logging(log_format: str = "text") -> None:
    """Log to stderr in ``log_format`` at ``$JANITOR_LOG_LEVEL`` (default INFO); exit 2 on a level that
    is not one."""
    level = os.environ.get("JANITOR_LOG_LEVEL", "INFO").strip().upper()
    if not isinstance(logging.getLevelName(level), int):
        click.echo(f"registry-janitor: JANITOR_LOG_LEVEL={level[:40]!r} is not a log level; use DEBUG, INFO, "
                   "WARNING, ERROR or CRITICAL", err=True)
        sys.exit(2)
    logging.basicConfig(level=level, format=LOG_FORMAT)
    formatter = log_formatter(log_format.lower())
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def settings_or_exit(path: str | None) -> Settings:
    """Load the config, or print every problem and exit 2 (no traceback)."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        click.echo(f"registry-janitor: {exc}", err=True)
        sys.exit(2)


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                        help=CONFIG_HELP)(fn)
