"""The ``registry-janitor`` command: a click group assembled from one module per command group.

The modules share their options through ``daemon.cli.options`` and never import this package root back.
No business rule lives in any of them: they load settings, get their parts from ``daemon.wiring``, and
print.
"""

from __future__ import annotations

import click

from daemon.cli import admin, backup, ci, hooks, migrate, process
from daemon.demo.story import demo


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="registry-janitor")
def main() -> None:
    """Untag exactly the image tags a GitLab pipeline pushed, once their reason to exist ends."""


for command in (*process.COMMANDS, ci.ci, *admin.COMMANDS, hooks.hooks, hooks.reconcile, *backup.COMMANDS,
                *migrate.COMMANDS, demo):
    main.add_command(command)
