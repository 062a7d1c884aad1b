"""``registry-janitor ci record|untag IMAGE``: thin wrappers a CI job runs instead of curl.

They read ``CI_JOB_TOKEN`` (GitLab sets it in every job) and ``JANITOR_URL`` from the environment and
call the janitor's CI routes; the janitor asks GitLab who the job is, so nothing here is trusted.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
import requests


def _call(route: str, payload: dict[str, Any]) -> None:
    token, base = os.environ.get("CI_JOB_TOKEN"), os.environ.get("JANITOR_URL")
    missing = [name for name, value in (("CI_JOB_TOKEN", token), ("JANITOR_URL", base)) if not value]
    if missing:
        click.echo(f"registry-janitor: set {' and '.join(missing)} (GitLab sets CI_JOB_TOKEN in jobs; "
                   "JANITOR_URL is the janitor's base URL, e.g. a CI/CD variable)", err=True)
        sys.exit(2)
    try:
        response = requests.post(f"{str(base).rstrip('/')}{route}", json=payload, timeout=30,
                                 headers={"JOB-TOKEN": str(token)})
    except requests.RequestException as exc:
        click.echo(f"registry-janitor: could not reach {base}: {exc}", err=True)
        sys.exit(1)
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text[:200]}
    text = body.get("message") or body.get("status") or response.reason
    extra = f" (untag {body['untag_id']}: {body.get('outcome')})" if "untag_id" in body else ""
    click.echo(f"{response.status_code} {text}{extra}", err=not response.ok)
    sys.exit(0 if response.ok else 1)


@click.group()
def ci() -> None:
    """For CI jobs: record a pushed image, or untag one your ref pushed."""


@ci.command("record")
@click.argument("image")
@click.option("--digest", default=None, help="the pushed manifest's digest, if known (sha256:...)")
def record(image: str, digest: str | None) -> None:
    """Record that this job's pipeline pushed IMAGE (<registry host>/<repository>:<tag>)."""
    _call("/api/v1/ci/pushes", {"image": image, **({"digest": digest} if digest else {})})


@ci.command("untag")
@click.argument("image")
def untag(image: str) -> None:
    """Ask the janitor to untag IMAGE; only a tag a pipeline of this project and ref pushed."""
    _call("/api/v1/ci/untag", {"image": image})
