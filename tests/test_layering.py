"""The package layering of docs/ARCHITECTURE.md, enforced on the source (``ast``; nothing is imported).

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
STAGES = ("reid.crop", "reid.train", "reid.label", "reid.report", "reid.sweeps", "reid.pipeline", "reid.import_checkpoint",
          "reid.review")
RUNTIME = ("reid.raycluster", "reid.tracking", "reid.registry", "reid.faults", "reid.datasets", "reid.localcluster",
           "reid.run_inputs")
ALLOWED_STAGE_EDGES = {("reid.sweeps", "reid.train")}
FOREIGN_RUNTIME = ("ray", "mlflow")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, package: str | None = None) -> set[str]:
    """Every module ``path`` imports (top-level or inside functions), absolute names."""
    found: set[str] = set()
    if package is None:
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from reid import io` imports reid.io
    return found


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
GRAPH = {name: {i for i in imports_of(path) if i in MODULES and i != name} for name, path in MODULES.items()}


def group(name: str, groups: tuple[str, ...]) -> str | None:
    return next((g for g in groups if name == g or name.startswith(g + ".")), None)


def layer(name: str) -> str:
    if group(name, STAGES):
        return "stage"
    if group(name, RUNTIME):
        return "runtime"
    return "core"


def test_the_layers_cover_the_package() -> None:
    assert {layer(m) for m in MODULES} == {"core", "runtime", "stage"}
    for stage in STAGES:
        assert any(group(m, (stage,)) for m in MODULES), f"{stage} is listed but does not exist"


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
    own = group(name, STAGES)
    others = sorted(i for i in GRAPH[name] if layer(i) == "stage" and group(i, STAGES) != own
                    and (own, group(i, STAGES)) not in ALLOWED_STAGE_EDGES)
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


def test_the_checker_sees_violations(tmp_path: Path) -> None:
    # the test can fail: a Ray import in a core-looking module and a stage-to-stage import are both found
    bad = tmp_path / "bad.py"
    bad.write_text("import ray\nfrom reid.label import run_label\n\ndef f():\n    from reid import crop\n")
    found = imports_of(bad, package="reid")
    assert "ray" in found and "reid.label" in found and "reid.crop" in found
