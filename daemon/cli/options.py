"""What every command module shares: the ``--config`` option, loading settings (exit 2 on errors) and
logging set-up. Command modules import this, never the package root (``daemon.cli``)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from daemon.config import Settings, load_settings
from daemon.errors import ConfigError

CONFIG_HELP = "config file (default: $JANITOR_CONFIG, else config/janitor.yaml)"


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("JANITOR_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
