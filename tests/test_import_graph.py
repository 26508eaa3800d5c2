"""The import graph of the toolkit: no circles, no import from a lower layer to a higher one, no private names.

Layers, top to bottom: cli and bench -> losh -> pipeline -> schemas (installed as losh.cli, losh.pipeline and
losh.schemas: `losh` is the toolkit's one top-level name). Inside losh: training, evaluation and
inference -> the models (one folder each, and the registry that builds them) and data -> the models' shared parts
-> losh.errors; the package itself (`losh.load_model`) sits above them all. A model's folder never imports
another model's; only the registry knows them all. Every import
counts, also one inside a function.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the repository's folders and the names they import as
PACKAGES = {"cli": "losh.cli", "bench": "bench", "losh": "losh", "pipeline": "losh.pipeline", "schemas": "losh.schemas"}
LAYERS = {"losh.cli": 3, "bench": 3, "losh": 2, "losh.pipeline": 1, "losh.schemas": 0}
# rooms inside losh, by prefix (the longest prefix that matches decides), and their rank
LOSH_ROOMS = {
    "losh.training": 3, "losh.evaluation": 3, "losh.inference": 3,
    "losh.models.registry": 2, "losh.models.losh_m": 2, "losh.models.losh_s": 2, "losh.data": 2,
    "losh.models.shared": 1, "losh.models": 1,
    "losh.errors": 0,
}
PUBLIC_FACE = "losh"     # the package itself: `losh.load_model`, above every room (it imports lazily)
MODEL_FOLDERS = ("losh.models.losh_m", "losh.models.losh_s")


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, name in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts and parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([name, *parts])] = path
    return modules


def _layer(module: str) -> tuple[str, int]:
    """(the layer's package, its rank) of a module: losh.cli, bench, losh (the core), losh.pipeline, losh.schemas."""
    for package in sorted(LAYERS, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package, LAYERS[package]
    raise AssertionError(f"{module} is in no layer")


def _imports(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) of every import in the file that names a project module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in modules:               # `from package import module`
                    found.append((target, [], node.lineno))
                else:
                    found.append((base, [alias.name], node.lineno))
    return [(target, names, line) for target, names, line in found if target.split(".")[0] in ("losh", "bench")]


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str, list[str], int]]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    edges = []
    for name, path in modules.items():
        for target, names, line in _imports(path, name, modules):
            while target not in modules and "." in target:    # an attribute path: its module
                target = target.rpartition(".")[0]
            if target in modules and target != name:
                graph[name].add(target)
                edges.append((name, target, names, line))
    return graph, edges


def _room(module: str) -> tuple[str, int]:
    if module == PUBLIC_FACE:
        return PUBLIC_FACE, 4
    for prefix in sorted(LOSH_ROOMS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, LOSH_ROOMS[prefix]
    raise AssertionError(f"{module} is in no room of losh: add it to LOSH_ROOMS")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles():
    assert _cycles(_graph()[0]) == []


def test_no_import_from_a_lower_layer_to_a_higher_one():
    wrong = []
    for source, target, _, line in _graph()[1]:
        (top_s, layer_s), (top_t, layer_t) = _layer(source), _layer(target)
        if layer_t > layer_s:
            wrong.append(f"{source}:{line} imports {target}")
        elif top_s == top_t == "losh":
            (room_s, rank_s), (room_t, rank_t) = _room(source), _room(target)
            if rank_t > rank_s:
                wrong.append(f"{source}:{line} ({room_s}) imports {target} ({room_t}), a higher room")
            folder_s = next((f for f in MODEL_FOLDERS if source.startswith(f + ".")), None)
            folder_t = next((f for f in MODEL_FOLDERS if target.startswith(f + ".")), None)
            if folder_s and folder_t and folder_s != folder_t:
                wrong.append(f"{source}:{line} imports another model's {target}")
    assert wrong == []


def test_only_the_registry_imports_a_model_folder_from_outside_it():
    outside = [f"{s}:{line} imports {t}" for s, t, _, line in _graph()[1]
               if s.startswith("losh.") and any(t.startswith(f + ".") for f in MODEL_FOLDERS)
               and not any(s.startswith(f + ".") for f in MODEL_FOLDERS) and s != "losh.models.registry"]
    assert outside == []


def test_no_module_imports_a_private_name_of_another():
    private = [f"{s}:{line} takes {n} from {t}" for s, t, names, line in _graph()[1] for n in names
               if n.startswith("_") and not n.startswith("__")]
    assert private == []


def test_the_graph_reader_sees_the_real_imports():
    graph, edges = _graph()
    assert "losh.models.shared.long_short" in graph["losh.models.losh_m.model"]
    assert {"losh.models.losh_m.model", "losh.models.losh_s.model"} <= graph["losh.models.registry"]
    assert "losh.evaluation.evaluate" in graph["losh.training.loop"]           # an import inside a function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _room("losh.models.shared.losses") == ("losh.models.shared", 1)


def test_losh_is_the_only_top_level_name_and_every_package_is_installed():
    """pyproject.toml installs cli/, pipeline/ and schemas/ under losh; its package list names every folder with
    an __init__.py (a package left out would be missing from a wheel)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = project["tool"]["setuptools"]
    assert all(name.split(".")[0] == "losh" for name in setuptools["packages"])
    assert setuptools["package-dir"] == {"losh.cli": "cli", "losh.pipeline": "pipeline", "losh.schemas": "schemas"}
    packages = {name for name, path in _modules().items() if path.name == "__init__.py" and not name.startswith("bench")}
    data_only = {"losh.pipeline.datasets.protocols"}   # a folder of data files, installed as package data
    assert packages == set(setuptools["packages"]) - data_only
    assert project["project"]["scripts"]["losh"] == "losh.cli.main:app"
    from losh.pipeline.datasets.jhmdb import MTTR_PROTOCOL  # shipped data: installed with its package
    assert MTTR_PROTOCOL.is_file() and "*.json" in setuptools["package-data"]["losh.pipeline.datasets.protocols"]
