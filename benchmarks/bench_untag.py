"""Untag throughput on a real local distribution registry: the janitor vs a hand loop vs ``skopeo delete``.

SPEC 13: with the rate limit off, the janitor's client must reach >= 0.8x a minimal hand-written loop
doing the same tag-only work (one session, one token, placeholder technique, the same requests) and
>= 5x ``skopeo delete`` run once per tag. Every tag gets its own image, so skopeo's delete by digest
removes exactly one tag and the three contenders do comparable work. Prints throughputs and ratios;
exits 1 when a target is missed. Not part of pytest.

    python benchmarks/bench_untag.py [--tags 200] [--rounds 3] [--skopeo-tags 40]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support import GitLabStandin, Registry
from support.gitlab_json import Project
from support.images import push_image, tags

from daemon.config import Settings, settings_from_dict
from daemon.registry import UntagRequest
from daemon.registry.placeholder import new_placeholder
from daemon.registry.types import MANIFEST_MEDIA_TYPES
from daemon.wiring import build_registry_client

ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)


def seed_images(registry: Registry, repo: str, count: int) -> list[UntagRequest]:
    """`count` tags, each on its own tiny image."""
    return [UntagRequest(repo, f"t-{n}", push_image(registry, repo, [f"t-{n}"], size=64)) for n in range(count)]


def registry_settings(registry: Registry) -> Settings:
    """The registry as the janitor is configured for it here: rate limit off, its token service (the
    GitLab stand-in's) trusted."""
    return settings_from_dict({"registry": {"url": registry.url, "requests_per_second": 0,
                                            "token_realms": [registry.realm]}}, environ={})


def janitor_untag(registry: Registry, project: Project, items: list[UntagRequest]) -> None:
    client = build_registry_client(registry_settings(registry))  # fresh: learns challenge, token, method itself
    results = client.for_project(project.path, project.token).untag(items, method="auto")
    bad = [r for r in results if r.outcome != "done"]
    assert not bad, bad[:3]


def hand_loop_untag(
    registry: Registry, gitlab: GitLabStandin, project: Project, items: list[UntagRequest], batch: int
) -> None:
    """The minimal loop doing the janitor's tag-only work: guard GET, PUT placeholder, one DELETE per batch."""
    repo = items[0].repository
    session = requests.Session()
    token = session.get(
        gitlab.realm,
        params={"service": "container_registry", "scope": f"repository:{repo}:pull,push,delete"},
        auth=("bench", project.token),
    ).json()["token"]
    session.headers["Authorization"] = f"Bearer {token}"
    base = f"{registry.url}/v2/{repo}"
    for start in range(0, len(items), batch):
        placeholder = new_placeholder()
        started = session.post(f"{base}/blobs/uploads/")
        location = urljoin(f"{base}/blobs/uploads/", started.headers["Location"])
        session.put(
            location,
            params={"digest": placeholder.config_digest},
            data=placeholder.config,
            headers={"Content-Type": "application/octet-stream"},
        ).raise_for_status()
        for item in items[start : start + batch]:
            current = session.get(f"{base}/manifests/{item.tag}", headers={"Accept": ACCEPT})
            if current.headers.get("Docker-Content-Digest") != item.expected_digest:
                continue
            session.put(
                f"{base}/manifests/{item.tag}",
                data=placeholder.manifest.body,
                headers={"Content-Type": placeholder.manifest.media_type},
            ).raise_for_status()
        session.delete(f"{base}/manifests/{placeholder.manifest.digest}").raise_for_status()


def skopeo_untag(registry: Registry, project: Project, items: list[UntagRequest]) -> None:
    for item in items:
        subprocess.run(
            [
                "skopeo",
                "delete",
                "--tls-verify=false",
                "--creds",
                f"bench:{project.token}",
                f"docker://{registry.host}/{item.repository}:{item.tag}",
            ],
            check=True,
            capture_output=True,
        )


def timed(registry: Registry, repo: str, count: int, run: Callable[[list[UntagRequest]], None]) -> float:
    """Tags per second for one run over `count` fresh tags in `repo`; checks every tag is gone."""
    items = seed_images(registry, repo, count)
    started = time.perf_counter()
    run(items)
    elapsed = time.perf_counter() - started
    left = tags(registry, repo)
    assert not left, f"{repo} still has {len(left)} tags"
    return count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=200, help="tags per janitor / hand-loop run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating janitor/hand-loop rounds")
    parser.add_argument("--skopeo-tags", type=int, default=40, help="tags for the (slow) skopeo run")
    args = parser.parse_args()
    if shutil.which("skopeo") is None:
        print("skopeo is not installed (apt-get install -y skopeo)", file=sys.stderr)
        return 2

    gitlab = GitLabStandin().start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-untag-"))
    registry = Registry(workdir, realm=gitlab.realm, issuer=gitlab.issuer, notification_url=None)
    try:
        registry.start()
        gitlab.attach_registry(registry.url)
        project = gitlab.add_project("bench/app")
        batch = build_registry_client(registry_settings(registry), requests.Session()).site.placeholder_batch
        # one discarded round of each warms the registry's storage paths and both code paths
        timed(registry, "bench/app/warm-janitor", 20, lambda items: janitor_untag(registry, project, items))
        timed(
            registry, "bench/app/warm-hand", 20, lambda items: hand_loop_untag(registry, gitlab, project, items, batch)
        )
        janitor_rates, hand_rates = [], []
        for n in range(args.rounds):
            janitor_rates.append(
                timed(
                    registry, f"bench/app/janitor-{n}", args.tags, lambda items: janitor_untag(registry, project, items)
                )
            )
            hand_rates.append(
                timed(
                    registry,
                    f"bench/app/hand-{n}",
                    args.tags,
                    lambda items: hand_loop_untag(registry, gitlab, project, items, batch),
                )
            )
        skopeo_rate = timed(
            registry, "bench/app/skopeo", args.skopeo_tags, lambda items: skopeo_untag(registry, project, items)
        )
    finally:
        registry.stop()
        gitlab.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    janitor, hand = statistics.median(janitor_rates), statistics.median(hand_rates)
    vs_hand, vs_skopeo = janitor / hand, janitor / skopeo_rate
    print(
        f"janitor    {janitor:8.1f} tags/s  (median of {args.rounds} x {args.tags}: "
        + ", ".join(f"{r:.0f}" for r in janitor_rates)
        + ")"
    )
    print(f"hand loop  {hand:8.1f} tags/s  (" + ", ".join(f"{r:.0f}" for r in hand_rates) + ")")
    print(f"skopeo     {skopeo_rate:8.1f} tags/s  ({args.skopeo_tags} tags, one `skopeo delete` each)")
    print(f"janitor / hand loop = {vs_hand:.2f}x (target >= 0.8x)")
    print(f"janitor / skopeo    = {vs_skopeo:.1f}x (target >= 5x)")
    return 0 if vs_hand >= 0.8 and vs_skopeo >= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
