"""The package's structure: layers import downwards only, and no import cycle.

`WSApp` (extension.py) is the top of the library: it builds the app's `Service` and hands
that (never itself) to the layers below. Only the modules that are users of the
extension (the HTTP blueprint, the pytest plugin, the package's own `__init__`) may
import it (`WSApp.test_client` reaches `wsapp.testing`, which is below it). Every
import between wsapp's modules counts, those inside functions and under
`TYPE_CHECKING` too: a cycle is one whatever the timing.
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "wsapp"
ABOVE_THE_EXTENSION = {"wsapp", "wsapp.site", "wsapp.pytest_plugin"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """wsapp module -> the wsapp modules it imports."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                for alias in node.names:
                    if f"{target}.{alias.name}" in modules:
                        found.add(f"{target}.{alias.name}")  # `from . import chat`
                    elif target in modules:
                        found.add(target)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name in modules}
        graph[name] = found - {name}
    return graph


def test_the_graph_is_read_from_the_source() -> None:
    graph = imports()
    assert "wsapp.handshake.upgrade" in graph["wsapp.extension"]
    assert "wsapp.session" in graph["wsapp.chat.builtins"]
    assert "wsapp.handshake.head" in graph["wsapp.handshake.early"]  # `from . import head as httphead`


def test_only_the_extensions_users_import_it() -> None:
    importers = {name for name, targets in imports().items() if "wsapp.extension" in targets}
    assert importers <= ABOVE_THE_EXTENSION, importers - ABOVE_THE_EXTENSION


def test_no_import_cycle() -> None:
    graph = imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_test_helpers_import_neither_redis_nor_websocket_client() -> None:
    """The pure tier (docs/testing.md) runs on a machine without the `redis` and
    `websocket-client` packages: the shared helpers import them only where used."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['redis'] = None; sys.modules['websocket'] = None; "
        "sys.path[:0] = ['tests', '.']; import helpers, conftest, inprocess"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# `X.backplane.<attribute>` outside the hub: the life-cycle only (the extension starts the
# backplane once the worker serves and stops it with the app)
BACKPLANE_LIFE_CYCLE = {("wsapp.extension", "start"), ("wsapp.extension", "stop")}


def backplane_uses() -> set[tuple[str, str, int]]:
    """(module, the attribute used on it or "" when it is handed on, line) of every
    `<something>.backplane` in wsapp outside wsapp/hub.py."""
    found: set[tuple[str, str, int]] = set()
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if name == "wsapp.hub":
            continue
        tree = ast.parse(path.read_text(), str(path))
        used_on: set[int] = set()  # ids of the `.backplane` nodes an attribute is read from
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "backplane"
            ):
                used_on.add(id(node.value))
                found.add((name, node.attr, node.lineno))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "backplane" and id(node) not in used_on:
                found.add((name, "", node.lineno))
    return found


def test_the_backplane_scan_reads_the_source() -> None:
    assert ("wsapp.extension", "stop") in {(m, a) for m, a, _line in backplane_uses()}


def test_only_the_hub_talks_to_the_backplane() -> None:
    """Sessions, resume, the HTTP API and the extension ask the hub (`hub.history_on`,
    `hub.replay`, `hub.healthy`, `hub.disconnect_client`, ...); `service.backplane` is
    the hub's, and the life-cycle's (start and stop)."""
    stray = sorted(use for use in backplane_uses() if use[:2] not in BACKPLANE_LIFE_CYCLE)
    assert not stray, stray
