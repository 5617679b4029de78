"""The layering of ``fedjax_room`` (declared in :mod:`fedjax_room._layers`, explained in docs/architecture.md).

Every import in the package is found with :mod:`ast` — at module level, inside functions, under
``if TYPE_CHECKING``, relative and absolute, and module names given to :func:`importlib.import_module` as
string constants — without importing anything. A unit (subpackage or top-level module) may import only the
units its layer lists, all declared below it; no two modules import each other, directly or around a circle.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from fedjax_room._layers import LAYERS, ROOT, allowed_imports

PACKAGE = Path(__file__).resolve().parents[1] / "fedjax_room"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"

# Edges waiting for another change of the same issue to land (module -> imported module). Empty when done.
PENDING: frozenset[tuple[str, str]] = frozenset()


def module_paths(package: Path = PACKAGE) -> dict[str, Path]:
    """``{dotted module name: path}`` for every ``.py`` file under ``package``."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _known(name: str, modules: Mapping[str, Path]) -> str:
    """The longest prefix of ``name`` that is a module of ours (``fedjax_room.x.NAME`` -> ``fedjax_room.x``)."""
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str, source: str, modules: Mapping[str, Path], *, is_package: bool) -> Iterator[tuple[str, int]]:
    """``(imported module of ours, line)`` for every import in ``source``, wherever it is in the file."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    dynamic = False
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                targets.append(sub if sub in modules else origin)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    targets = [arg.value]
                else:
                    dynamic = True
        for target in targets:
            if target == ROOT or target.startswith(ROOT + "."):
                yield _known(target, modules), node.lineno
    if dynamic:  # import_module(name): every module name written in this file as a string is a candidate
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
                yield node.value, node.lineno


def unit_of(module: str) -> str:
    """``fedjax_room.site.agent`` -> ``site``; ``fedjax_room.errors`` -> ``errors``; ``fedjax_room`` -> root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


@functools.lru_cache(maxsize=4)
def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` over the package (self-imports left out)."""
    modules = module_paths(package)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in imports_of(module, path.read_text(), modules, is_package=path.name == "__init__.py"):
            if target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def find_cycles(graph: Mapping[str, Mapping[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected tangle met by a depth-first search (``[a, b, a]``); [] if none."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def layer_violations(graph: Mapping[str, Mapping[str, int]]) -> list[str]:
    """``module:line -> imported`` for each import a unit may not make."""
    out = []
    for module, edges in sorted(graph.items()):
        unit = unit_of(module)
        allowed = allowed_imports(unit)
        for target, line in sorted(edges.items()):
            other = unit_of(target)
            if other != unit and other not in allowed and (module, target) not in PENDING:
                out.append(f"{module}:{line} -> {target} ({unit} may not import {other})")
    return out


# -- the declaration itself -----------------------------------------------------------------------------------


def test_every_unit_of_the_package_is_declared_once() -> None:
    names = [layer.name for layer in LAYERS]
    assert len(names) == len(set(names))
    units = {unit_of(module) for module in module_paths()}
    assert units - set(names) == set(), "add these to fedjax_room/_layers.py and docs/architecture.md"
    assert set(names) - units == set(), "declared units that do not exist"


def test_each_layer_may_import_only_layers_below_it() -> None:
    seen: set[str] = set()
    for layer in LAYERS:
        assert allowed_imports(layer.name) <= seen, f"{layer.name} may import a unit declared after it"
        seen.add(layer.name)


def test_docs_architecture_lists_the_same_layers() -> None:
    rows = re.findall(r"^\| `([\w.]+)` \|[^|]*\| ([^|]*) \|$", ARCHITECTURE.read_text(), flags=re.M)
    assert [name for name, _ in rows] == [layer.name for layer in LAYERS]
    for (name, may), layer in zip(rows, LAYERS, strict=True):
        listed = set(re.findall(r"`([\w.*]+)`", may))
        expected = set(layer.may_import) if layer.may_import != ("*",) else {"*"}
        assert listed == expected, f"docs/architecture.md: {name} may import {sorted(expected)}"


# -- the package against it -----------------------------------------------------------------------------------


def test_no_unit_imports_above_its_layer() -> None:
    violations = layer_violations(import_graph())
    assert violations == [], "\n".join(violations)


def test_no_import_cycles_between_modules() -> None:
    cycles = find_cycles(import_graph())
    assert cycles == [], "\n".join(" -> ".join(cycle) for cycle in cycles)


# What a unit must not reach through any chain of imports: units, or single modules (full names).
NEVER_REACHED: dict[str, frozenset[str]] = {
    # the analyst package is a pure client of the protocol
    "analyst": frozenset({"site", "coordinator", "local", "data", "sim", "jupyter", "commands"}),
    # the trusted parties carry no attack code: attack models and simulated attackers are sim's
    "site": frozenset({"sim", "fedjax_room.robust.attacks"}),
    "coordinator": frozenset({"sim", "site", "fedjax_room.robust.attacks"}),
    "protocol": frozenset({"sim", "fedjax_room.robust.attacks"}),
}


def reached_from(unit: str, graph: Mapping[str, Mapping[str, int]]) -> set[str]:
    """Every module imported, directly or through others, by the modules of ``unit``."""
    reached: set[str] = set()
    todo = [module for module in graph if unit_of(module) == unit]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph.get(module, {}))
    return reached


@pytest.mark.parametrize("unit", sorted(NEVER_REACHED))
def test_what_a_unit_never_reaches(unit: str) -> None:
    reached = reached_from(unit, import_graph())
    bad = sorted(m for m in reached if unit_of(m) in NEVER_REACHED[unit] or m in NEVER_REACHED[unit])
    assert bad == [], f"{unit} reaches {bad}"


def test_no_pending_exceptions_are_left() -> None:
    graph = import_graph()
    stale = {edge for edge in PENDING if edge[1] not in graph.get(edge[0], {})}
    assert stale == set(), f"remove from PENDING: {sorted(stale)}"


# -- the walker sees what it must (so the tests above can fail) -----------------------------------------------


def _toy(tmp_path: Path, files: Mapping[str, str]) -> dict[str, dict[str, int]]:
    for name, text in files.items():
        path = tmp_path / "fedjax_room" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(tmp_path / "fedjax_room")


def test_walker_finds_lazy_relative_type_checking_and_import_module_imports(tmp_path: Path) -> None:
    graph = _toy(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "",
            "site/__init__.py": "",
            "site/agent.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from fedjax_room.analyst.client import Room\n"
                "def f():\n    from ..coordinator import store\n"
                "def g():\n    import fedjax_room.errors as e\n"
                "def h():\n    import importlib\n    return importlib.import_module('fedjax_room.sim.demo')\n"
                "from . import policy\n"
            ),
            "site/policy.py": "from fedjax_room.site.agent import X\n",
            "analyst/__init__.py": "",
            "analyst/client.py": "",
            "coordinator/__init__.py": "",
            "coordinator/store.py": "",
            "sim/__init__.py": "",
            "sim/demo.py": "",
        },
    )
    assert graph["fedjax_room.site.agent"] == {
        "fedjax_room.analyst.client": 3,
        "fedjax_room.coordinator.store": 5,
        "fedjax_room.errors": 7,
        "fedjax_room.sim.demo": 10,
        "fedjax_room.site.policy": 11,
    }
    violations = layer_violations(graph)
    assert [v.split(" ")[0] for v in violations] == [
        "fedjax_room.site.agent:3",
        "fedjax_room.site.agent:5",
        "fedjax_room.site.agent:10",
    ]
    assert find_cycles(graph) == [["fedjax_room.site.agent", "fedjax_room.site.policy", "fedjax_room.site.agent"]]


def test_walker_follows_import_module_of_a_name_table(tmp_path: Path) -> None:
    graph = _toy(
        tmp_path,
        {
            "__init__.py": "",
            "cli.py": "import importlib\nMODS = ['fedjax_room.commands.room']\n"
            "def f(n):\n    return importlib.import_module(n)\n",
            "commands/__init__.py": "",
            "commands/room.py": "",
        },
    )
    assert graph["fedjax_room.cli"] == {"fedjax_room.commands.room": 2}
