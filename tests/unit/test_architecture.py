"""The house rules of ``daemon/``, read from its source: imports run one way and form no cycle (lazy and
``TYPE_CHECKING`` imports included), the pure core does no I/O, and the parts are built in one place.

docs/ARCHITECTURE.md states the same rules for people; ``ALLOWED`` below is the one written form of them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

DAEMON = Path(__file__).resolve().parents[2] / "daemon"

# What each part of the package may import from the others (a part is a subpackage of daemon/ or a
# top-level module). Anything not listed is against the rule.
CORE = {"domain", "errors"}
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "errors": set(),
    "config": CORE,
    "store": CORE | {"config"},
    "registry": CORE,
    "gitlab": CORE | {"config", "registry"},
    "plan": CORE | {"config", "store"},
    "ingest": CORE | {"config", "store", "gitlab", "plan"},
    "execute": CORE | {"config", "store", "registry", "plan"},
    "ops": CORE | {"config", "store"},
    "worker": CORE | {"config", "store", "registry", "ingest", "plan", "execute"},
    "web": CORE | {"config", "store", "ingest", "ops"},
    "wiring": CORE | {"config", "store", "registry", "gitlab", "ingest", "plan", "execute", "worker", "web"},
    "server": CORE | {"config", "wiring"},
    "wsgi": CORE | {"config", "wiring"},
    "demo": CORE | {"config", "store", "wiring"},
    "cli": CORE | {"config", "store", "registry", "gitlab", "ops", "wiring", "server", "demo"},
    "__main__": {"cli"},
    "__init__": set(),
}
# The web serves; of the ingest stage it uses only the CI gate (it never applies events or untags).
WEB_MAY_IMPORT_FROM_INGEST = {"daemon.ingest.ci_gate"}
# The pure core: values in, values out. No clock, no files, no network, no database (a lock is none of
# these: the request tally several threads add to holds one).
PURE_STDLIB = {"__future__", "collections", "dataclasses", "datetime", "enum", "functools", "ipaddress",
               "itertools", "math", "re", "threading", "typing"}
# Only the composition root (and the store's own opener inside it) constructs these.
BUILT_ONLY_IN_WIRING = {"Worker", "create_app", "open_store", "RegistryClient", "Ingest", "Planner", "CiGate",
                        "Executor", "Reconciler", "RaceRepair", "MrNotes"}


def module_name(path: Path) -> str:
    parts = path.relative_to(DAEMON.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(DAEMON.rglob("*.py"))}


KNOWN = set(modules())


def part_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, name: str) -> Iterator[tuple[str, int]]:
    """Every module ``path`` imports (absolute names, relative ones resolved), wherever it stands: top
    level, inside a function, or under ``if TYPE_CHECKING``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:  # ``from daemon.x import y`` may name a submodule y
                yield (sub if (sub := f"{target}.{alias.name}") in KNOWN else target), node.lineno


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, _ in imports_of(path, name):
            if target in known and target != name:
                edges[name].add(target)
    return edges


def test_the_package_has_the_parts_the_rule_names() -> None:
    found = {part_of(name) for name in modules()}
    assert found == set(ALLOWED), f"parts without a rule: {found - set(ALLOWED)}; rules without a part: " \
                                  f"{set(ALLOWED) - found}"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_lazy_ones_included() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_follow_the_dependency_rule() -> None:
    wrong = []
    for name, path in modules().items():
        part = part_of(name)
        for target, line in imports_of(path, name):
            if not target.startswith("daemon.") or target not in modules():
                continue
            other = part_of(target)
            if other == part or other == "__init__":
                continue
            if other not in ALLOWED[part]:
                wrong.append(f"{path.relative_to(DAEMON.parent)}:{line} ({part}) imports {target} ({other})")
            elif part == "web" and other == "ingest" and target not in WEB_MAY_IMPORT_FROM_INGEST:
                wrong.append(f"{path.relative_to(DAEMON.parent)}:{line}: the web imports {target}")
    assert not wrong, "imports against the rule in docs/ARCHITECTURE.md:\n" + "\n".join(sorted(set(wrong)))


def test_the_pure_core_imports_no_io() -> None:
    wrong = []
    for name, path in modules().items():
        if part_of(name) != "domain":
            continue
        for target, line in imports_of(path, name):
            top = target.split(".")[0]
            if top == "daemon":
                if target in modules() and part_of(target) != "domain":
                    wrong.append(f"{path.name}:{line} imports {target}")
            elif top not in PURE_STDLIB:
                wrong.append(f"{path.name}:{line} imports {target}")
    assert not wrong, "daemon/domain must take values and return values:\n" + "\n".join(wrong)


def test_command_modules_never_import_the_cli_package_root() -> None:
    wrong = [f"{path.name}:{line}" for name, path in modules().items()
             if name.startswith("daemon.cli.") for target, line in imports_of(path, name)
             if target == "daemon.cli"]
    assert not wrong, f"daemon/cli modules import daemon.cli back: {wrong}"


def test_only_the_gitlab_package_imports_python_gitlab() -> None:
    wrong = [f"{name}:{line}" for name, path in modules().items() if part_of(name) != "gitlab"
             for target, line in imports_of(path, name) if target.split(".")[0] == "gitlab"]
    assert not wrong, f"python-gitlab imported outside daemon/gitlab: {wrong}"


#: The database drivers, SQLite's and PostgreSQL's: imported only inside daemon/store.
DATABASE_DRIVERS = ("sqlite3", "sqlite_utils", "psycopg", "psycopg_pool")


def test_only_the_store_touches_the_database() -> None:
    wrong = [f"{name}:{line} imports {target}" for name, path in modules().items() if part_of(name) != "store"
             for target, line in imports_of(path, name) if target.split(".")[0] in DATABASE_DRIVERS]
    assert not wrong, f"database drivers used outside daemon/store: {wrong}"


def constructions(path: Path) -> Iterator[tuple[str, int]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if called in BUILT_ONLY_IN_WIRING:
                yield called, node.lineno


@pytest.mark.parametrize("where", ["daemon", "benchmarks"])
def test_long_lived_parts_are_built_only_in_the_composition_root(where: str) -> None:
    root = DAEMON.parent / where
    allowed_in = {DAEMON / "wiring.py", DAEMON / "store" / "__init__.py"}
    wrong = [f"{path.relative_to(DAEMON.parent)}:{line} builds {called}"
             for path in sorted(root.rglob("*.py")) if path not in allowed_in
             for called, line in constructions(path)]
    assert not wrong, "build these through daemon/wiring.py:\n" + "\n".join(wrong)


def test_nothing_outside_the_store_reaches_for_its_database() -> None:
    """``Store.db`` exists for tests and benchmarks that inspect the file; the janitor itself asks the
    store's methods (a second storage engine must be able to stand in)."""
    wrong = [f"{name}:{node.lineno}" for name, path in modules().items() if part_of(name) != "store"
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)
             and node.attr in ("db", "_db", "_pool", "conn")]
    assert not wrong, f"database handles used outside daemon/store: {wrong}"
