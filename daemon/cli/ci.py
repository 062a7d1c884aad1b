"""``registry-janitor ci record|untag IMAGE``: thin wrappers a CI job runs instead of curl.

They read ``CI_JOB_TOKEN`` (GitLab sets it in every job) and ``JANITOR_URL`` from the environment and
call the janitor's CI routes; the janitor asks GitLab who the job is, so nothing here is trusted. A
``503`` (GitLab or the registry could not be asked just now; nothing was stored) is asked again after its
``Retry-After``, a few times, before the command fails.
"""

from __future__ import annotations

import os
import sys
from time import sleep
from typing import Any

import click
import requests

#: How many times a 503 is asked again, and the longest ``Retry-After`` honoured between two tries.
RETRIES_ON_503 = 5
LONGEST_WAIT = 60


def _wait_after(response: requests.Response) -> int:
    """Seconds to wait before asking again: the answer's ``Retry-After`` (whole seconds), else 5."""
    value = response.headers.get("Retry-After", "").strip()
    seconds = int(value) if value.isdigit() else 5
    return max(1, min(seconds, LONGEST_WAIT))


def _post(url: str, payload: dict[str, Any], token: str) -> requests.Response:
    """POST, asking again after ``Retry-After`` while the janitor answers 503."""
    for attempt in range(RETRIES_ON_503 + 1):
        response = requests.post(url, json=payload, timeout=30, headers={"JOB-TOKEN": token})
        if response.status_code != 503 or attempt == RETRIES_ON_503:
            return response
        wait = _wait_after(response)
        click.echo(f"503 {_text(response)}; asking again in {wait}s "
                   f"({attempt + 1} of {RETRIES_ON_503})", err=True)
        sleep(wait)
    raise AssertionError("unreachable: the last attempt always returns")


def _body(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {"message": response.text[:200]}


def _text(response: requests.Response) -> str:
    body = _body(response)
    return str(body.get("message") or body.get("status") or response.reason)


def _call(route: str, payload: dict[str, Any]) -> None:
    token, base = os.environ.get("CI_JOB_TOKEN"), os.environ.get("JANITOR_URL")
    missing = [name for name, value in (("CI_JOB_TOKEN", token), ("JANITOR_URL", base)) if not value]
    if missing:
        click.echo(f"registry-janitor: set {' and '.join(missing)} (GitLab sets CI_JOB_TOKEN in jobs; "
                   "JANITOR_URL is the janitor's base URL, e.g. a CI/CD variable)", err=True)
        sys.exit(2)
    try:
        response = _post(f"{str(base).rstrip('/')}{route}", payload, str(token))
    except requests.RequestException as exc:
        click.echo(f"registry-janitor: could not reach {base}: {exc}", err=True)
        sys.exit(1)
    body = _body(response)
    extra = f" (untag {body['untag_id']}: {body.get('outcome')})" if "untag_id" in body else ""
    click.echo(f"{response.status_code} {_text(response)}{extra}", err=not response.ok)
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
