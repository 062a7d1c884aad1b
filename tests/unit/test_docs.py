"""Docs that cannot rot: every config key and every CLI command appears in the README."""

from pathlib import Path

import click
import pytest

from daemon.cli import main
from daemon.config import Policy, ProjectSettings, Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
EXAMPLE = (Path(__file__).resolve().parents[2] / "config" / "janitor.example.yaml").read_text()


def _keys():
    for section, field in Settings.model_fields.items():
        if section in ("defaults", "projects"):
            continue
        for key in field.annotation.model_fields:
            yield f"{section}.{key}"
    for key in Policy.model_fields:
        yield key
    for key in ProjectSettings.model_fields:
        if key not in Policy.model_fields:
            yield f"projects[].{key}"


@pytest.mark.parametrize("key", sorted(_keys()))
def test_every_config_key_is_in_the_readme_and_the_example(key):
    assert f"`{key}`" in README, f"README.md does not document `{key}`"
    assert f"{key.rsplit('.', 1)[-1]}:" in EXAMPLE, f"config/janitor.example.yaml lacks {key}"


def _commands(group: click.Group, prefix: str = ""):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}"


@pytest.mark.parametrize("command", sorted(_commands(main)))
def test_every_cli_command_is_in_the_readme(command):
    assert f"registry-janitor {command}" in README, f"README.md does not show `registry-janitor {command}`"


def test_readme_opens_with_the_install_and_test_commands():
    head = README.split("\n## ", 1)[0]
    assert "pip install . && registry-janitor" in head and "bash .ci/run" in head
