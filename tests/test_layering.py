"""The package layering of docs/ARCHITECTURE.md, enforced on the source (``ast``; nothing is imported). A
module's layer is its folder: ``reid/core/``, ``reid/runtime/``, ``reid/stages/`` (each stage one module or
package there); nothing else lives in ``reid/`` but its ``__init__``.

- *core* (Ray-free: the math, models, formats, contracts, the one embedding path) imports neither ray nor
  mlflow nor any runtime or stage module;
- *runtime* (shared Ray/MLflow plumbing: cluster connection, tracking, Ray Data readers, fault injection, the
  local cluster's process control) imports core and never a stage;
- a *stage* (crop, train, label, report, sweeps, pipeline) imports core and runtime, never another stage; the
  one allowed edge is sweeps → train (a sweep is many training runs of the train stage's loops);
- and no two modules of ``reid`` import each other, directly or through others, even inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "reid"
LAYERS = {"core": "core", "runtime": "runtime", "stages": "stage"}
ALLOWED_STAGE_EDGES = {("reid.stages.sweeps", "reid.stages.train")}
FOREIGN_RUNTIME = ("ray", "mlflow")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """The statements a module runs when imported: not function bodies, not ``if TYPE_CHECKING:`` blocks."""
    out: list[ast.stmt] = []
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        out.append(node)
        if isinstance(node, ast.If):  # an `if TYPE_CHECKING:` body never runs; its `else:` does
            todo[:0] = [*([] if "TYPE_CHECKING" in ast.unparse(node.test) else node.body), *node.orelse]
        elif isinstance(node, ast.Try):
            todo[:0] = [*node.body, *(s for h in node.handlers for s in h.body), *node.orelse, *node.finalbody]
    return out


def imports_of(path: Path, package: str | None = None, module_level: bool = False) -> set[str]:
    """Every module ``path`` imports (top-level or inside functions; with ``module_level``, only what importing
    it runs), absolute names."""
    found: set[str] = set()
    if package is None:
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), str(path))
    for node in _module_level(tree) if module_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from reid.core import io` imports reid.core.io
    return found


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
GRAPH = {name: {i for i in imports_of(path) if i in MODULES and i != name} for name, path in MODULES.items()}


def layer(name: str) -> str:
    """core | runtime | stage, from the module's folder; the bare package (``reid``) is "root"."""
    parts = name.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else "root"


def stage_of(name: str) -> str:
    """The stage a stage module belongs to: ``reid.stages.<stage>``."""
    return ".".join(name.split(".")[:3])


def test_every_module_lives_in_a_layer_folder() -> None:
    stray = sorted(m for m in MODULES if m != "reid" and m.split(".")[1] not in LAYERS)
    assert not stray, f"modules outside reid/core, reid/runtime and reid/stages: {stray}"
    assert {layer(m) for m in MODULES} == {"root", "core", "runtime", "stage"}
    assert not GRAPH["reid"], "reid/__init__.py imports nothing: a stage must not load with the package"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if layer(m) == "core"))
def test_core_is_ray_free(name: str) -> None:
    imported = imports_of(MODULES[name])
    foreign = sorted(i for i in imported if i.split(".")[0] in FOREIGN_RUNTIME)
    upward = sorted(i for i in GRAPH[name] if layer(i) != "core")
    assert not foreign, f"{name} (core) imports {foreign}"
    assert not upward, f"{name} (core) imports runtime or stage modules {upward}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if layer(m) == "runtime"))
def test_runtime_imports_no_stage(name: str) -> None:
    stages = sorted(i for i in GRAPH[name] if layer(i) == "stage")
    assert not stages, f"{name} (runtime) imports stages {stages}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if layer(m) == "stage"))
def test_stages_never_reach_into_each_other(name: str) -> None:
    own = stage_of(name)
    others = sorted(i for i in GRAPH[name] if layer(i) == "stage" and stage_of(i) not in (own, "reid.stages")
                    and (own, stage_of(i)) not in ALLOWED_STAGE_EDGES)
    assert not others, f"{name} ({own}) imports another stage: {others}"


def test_no_import_cycles() -> None:
    # strongly connected components (Tarjan) over module-level and function-level imports alike;
    # a package's __init__ re-exporting its own modules is no cycle
    def edges(name: str) -> set[str]:
        return {i for i in GRAPH[name] if not (MODULES[name].name == "__init__.py" and i.startswith(name + "."))
                and not (MODULES.get(i) and MODULES[i].name == "__init__.py" and name.startswith(i + "."))}

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def imported_on_import(name: str) -> set[str]:
    """Every module importing ``name`` loads (its package ``__init__`` files included), through module-level
    imports only."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        parts = current.split(".")
        parents = {".".join(parts[:k]) for k in range(1, len(parts))}
        if current in MODULES:
            todo.extend(imports_of(MODULES[current], module_level=True) | parents)
        else:
            todo.extend(p for p in parents if p in MODULES)
    return seen


HEAVY = ("torch", "torchvision", "pytorch_metric_learning", "sklearn", "matplotlib")  # seconds of CPU to import


@pytest.mark.parametrize("name", ["reid.runtime.ray_datasets", "reid.stages.label.windows",
                                  "reid.stages.label.series", "reid.stages.label.corrected"])
def test_ray_data_row_tasks_do_not_import_torch(name: str) -> None:
    # Ray Data imports a task function's module in every worker process it starts; the reading, pairing,
    # filtering and per-series linking tasks must not pay torch's import there (the decoding UDFs and the
    # embedding actors import it when built, the scores when they score)
    heavy = sorted(m for m in imported_on_import(name) if m.split(".")[0] in HEAVY)
    assert not heavy, f"importing {name} imports {heavy}"


def test_the_checker_sees_violations(tmp_path: Path) -> None:
    # the test can fail: a Ray import in a core-looking module and a stage-to-stage import are both found
    bad = tmp_path / "bad.py"
    bad.write_text("import ray\nfrom reid.stages.label import run_label\n\ndef f():\n    from reid.stages import crop\n")
    found = imports_of(bad, package="reid")
    assert "ray" in found and "reid.stages.label" in found and "reid.stages.crop" in found
    assert imports_of(bad, package="reid", module_level=True) == {"ray", "reid.stages.label",
                                                                    "reid.stages.label.run_label"}
    typed = tmp_path / "typed.py"
    typed.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\nelse:\n    import numpy\n")
    assert imports_of(typed, package="reid", module_level=True) == {"typing", "typing.TYPE_CHECKING", "numpy"}
    assert "torch" in imported_on_import("reid.core.embedding"), "the import closure follows module-level imports"
