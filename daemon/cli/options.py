"""What every command module shares: the ``--config`` option, loading settings (exit 2 on errors) and
logging set-up. Command modules import this, never the package root (``daemon.cli``)."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import click

from daemon.config import Settings, load_settings
from daemon.errors import ConfigError

CONFIG_HELP = "config file (default: $JANITOR_CONFIG, else config/janitor.yaml)"


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Line breaks (those str.splitlines knows too), the other C0 and C1 controls (ESC of ANSI sequences, CSI),
# and DEL: what could end a log line early or rewrite what a terminal shows.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), m.group().encode("unicode_escape").decode()), text)


class OneLineFormatter(logging.Formatter):
    """Every record is one line, whatever its values hold: a project path, ref, tag or repository that
    came with a payload can neither start a line of its own (a forged ``CRITICAL``) nor send terminal
    escapes. A traceback keeps its lines, each indented, none of them able to pass for a record."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + escape_controls(line) for line in text.splitlines())


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("JANITOR_LOG_LEVEL", "INFO"), format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(OneLineFormatter(LOG_FORMAT))
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
