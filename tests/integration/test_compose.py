"""docker-compose.yaml: the several-nodes example (two web processes, two workers, one PostgreSQL).

No Docker engine runs it here: the file is read as Compose reads it (YAML with merge keys), and each
promise it makes is checked against the product itself: every process runs a command `registry-janitor
--help` lists, the config it mounts is one the janitor accepts and names the compose file's PostgreSQL,
and every variable that config needs is passed in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from click.testing import CliRunner

from daemon.cli import main
from daemon.config import settings_from_dict

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SECRETS_DIR = "/run/secrets"
# Compose's own interpolation: ${VAR}, ${VAR:?message}, ${VAR:-default} and friends.
COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict) and isinstance(loaded.get("services"), dict), "a Compose file with services"
    return loaded


def image_setting(keyword: str) -> str:
    """An instruction's argument in the Dockerfile's last (runtime) stage."""
    runtime = DOCKERFILE.read_text().rsplit("\nFROM ", 1)[1]
    [value] = re.findall(rf"^{keyword}\s+(.+)$", runtime, flags=re.M)
    return value.strip()


def cli_commands() -> set[str]:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listing = result.output.split("Commands:", 1)[1]
    return set(re.findall(r"^\s{2}([a-z][a-z-]*)\s", listing, flags=re.M))


def janitors(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the janitor's image (the ones built from this repository)."""
    return {name: s for name, s in services.items() if "build" in s}


def argv(service: dict[str, Any]) -> list[str]:
    entrypoint = service.get("entrypoint", json.loads(image_setting("ENTRYPOINT")))
    command = service["command"]
    assert isinstance(command, list), "the exec form: no shell between Compose and the process"
    return [*entrypoint, *command]


def replicas(service: dict[str, Any]) -> int:
    return int(service.get("deploy", {}).get("replicas", 1))


def test_compose_runs_two_webs_and_two_workers_with_real_commands() -> None:
    services = compose()["services"]
    known = cli_commands()
    assert {"web", "worker", "worker-health"} <= known, known
    runs: dict[str, int] = {}
    for name, service in janitors(services).items():
        args = argv(service)
        assert args[0] == "registry-janitor" and args[1] in known, f"{name} runs {args}: not a registry-janitor command"
        runs[args[1]] = runs.get(args[1], 0) + replicas(service)
        check = service.get("healthcheck", {}).get("test")
        if check is not None:
            assert check[0] == "CMD" and check[1] == "registry-janitor" and check[2] in known, (name, check)
    assert runs == {"web": 2, "worker": 2}, "the several-nodes example: two webs and two workers, nothing else"

    workers = [s for s in janitors(services).values() if argv(s)[1] == "worker"]
    for worker in workers:
        # The image's HEALTHCHECK asks /healthz: a worker serves no HTTP, so it must be replaced.
        assert worker["healthcheck"]["test"] == ["CMD", "registry-janitor", "worker-health"]
    webs = [s for s in janitors(services).values() if argv(s)[1] == "web"]
    published = [port.split(":") for web in webs for port in web["ports"]]
    assert len({host for host, _ in published}) == len(published) == 2, "each web on a port of its own"
    assert {target for _, target in published} == {image_setting("EXPOSE")}


def test_compose_config_is_one_the_janitor_accepts_on_its_postgresql(tmp_path: Path) -> None:
    document = compose()
    services = document["services"]
    [db_name] = [n for n, s in services.items() if str(s.get("image", "")).startswith("postgres:")]
    db = services[db_name]
    [config_path] = re.findall(r"\bJANITOR_CONFIG=(\S+)", DOCKERFILE.read_text().rsplit("\nFROM ", 1)[1])

    for name, service in janitors(services).items():
        assert service["depends_on"][db_name] == {"condition": "service_healthy"}, name
        assert db["healthcheck"]["test"][1] == "pg_isready"
        [mount] = [v for v in service["volumes"] if v.split(":")[1] == config_path]
        source, _, mode = mount.split(":")
        assert mode == "ro", name
        config = yaml.safe_load((ROOT / source).read_text())

        storage = config["storage"]
        url = urlsplit(storage["url"])
        assert url.scheme == "postgresql", "several processes share PostgreSQL, never one SQLite file"
        assert url.hostname == db_name and url.port == 5432
        assert url.username == db["environment"]["POSTGRES_USER"]
        assert url.path.lstrip("/") == db["environment"]["POSTGRES_DB"]
        # The password: the same Compose secret PostgreSQL is initialised with, as a file.
        secret = Path(storage["password_file"]).name
        assert storage["password_file"] == f"{SECRETS_DIR}/{secret}"
        assert secret in service["secrets"] and secret in db["secrets"]
        assert db["environment"]["POSTGRES_PASSWORD_FILE"] == f"{SECRETS_DIR}/{secret}"
        assert set(document["secrets"][secret]) == {"environment"}

        # Every ${VAR} the config reads is passed in, each refused by Compose when unset.
        needed = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", (ROOT / source).read_text()))
        given = service["environment"]
        assert needed <= set(given), f"{name} lacks {needed - set(given)}"
        for var in needed:
            assert COMPOSE_VAR.fullmatch(given[var]) and ":?" in given[var], (name, var, given[var])

        secret_file = tmp_path / secret
        secret_file.write_text("compose-db-password\n")
        storage["password_file"] = str(secret_file)
        environ = {var: f"value-of-{var}" for var in needed} | {
            "GITLAB_URL": "https://gitlab.example.com", "REGISTRY_URL": "https://registry.example.com",
            "APP_PROJECT": "group/app"}
        settings = settings_from_dict(config, environ=environ)
        assert settings.storage.is_postgres and settings.storage.password_value == "compose-db-password"
        assert settings.server.bind.endswith(":" + image_setting("EXPOSE"))
        assert not [p for p in settings.projects if p.dry_run is False], "the example untags nothing until asked"


@pytest.mark.parametrize("text", ["${A}", "${A:?set A}", "${A:-x}"])
def test_compose_var_reads_compose_interpolation(text: str) -> None:
    match = COMPOSE_VAR.fullmatch(text)
    assert match is not None and match.group(1) == "A"
