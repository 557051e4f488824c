"""The project's import graph: no cycles (imports under TYPE_CHECKING included), and the layers of services/."""

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "contracts", "training", "services", "bench", "loadtests", "harness", "deploy")
# The layers of services/, top first, each with what it may import (docs/architecture.md has the same table): a
# package's modules may import each other and the layers named here, nothing else of services/.
BASE = {"services.errors", "services.settings"}
RUNTIME = {"services.ops"} | BASE
DATAPLANE = {"services.runtime"} | RUNTIME
EDGE = {"services.dataplane", "services.compat"} | DATAPLANE
LAYERS = {
    "services.platform": {"*"},
    "services.runner_service": {"services.families", "services.edge", "services.runtime", "services.ops"} | BASE,
    "services.frontends": {"services.edge"} | EDGE,  # never a family
    "services.families": {"services.edge"} | EDGE,  # never a front-end
    "services.edge": EDGE,
    "services.dataplane": DATAPLANE,
    "services.runtime": RUNTIME,
    "services.ops": {"services.compat", "services.settings"},
    "services.compat": {"services.errors"},
    "services.errors": set(),
    "services.settings": set(),
}
WEB_FRAMEWORKS = {"fastapi", "starlette", "grpc", "grpc_health", "uvicorn", "python_multipart"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file (functions and TYPE_CHECKING blocks too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and not name.startswith(f"{candidate}."):
                targets.add(candidate)
    return targets


GRAPH = {name: imports_of(name, path, modules()) for name, path in modules().items()}


def test_the_project_has_no_import_cycle():
    try:
        graphlib.TopologicalSorter(GRAPH).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_import_check_finds_a_cycle_when_there_is_one():
    circular = {**GRAPH, "services.runtime.runner": GRAPH["services.runtime.runner"] | {"services.families.image"}}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(circular).prepare()


def layer_of(module: str) -> str:
    """The layer a services/ module belongs to: its package, or the top-level module itself."""
    return ".".join(module.split(".")[:2])


def test_every_services_module_is_in_a_layer():
    assert {layer_of(m) for m in GRAPH if m.startswith("services.") and m != "services"} <= set(LAYERS)


@pytest.mark.parametrize("layer", [layer for layer, allowed in LAYERS.items() if "*" not in allowed])
def test_a_layer_imports_only_the_layers_below_it(layer):
    wrong = {
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if layer_of(module) == layer
        for target in targets
        if target.startswith("services.") and layer_of(target) not in {layer, *LAYERS[layer]}
    }
    assert not wrong


def test_the_layer_check_finds_an_import_upward():
    GRAPH["services.runtime.runner"].add("services.families.image")
    try:
        with pytest.raises(AssertionError):
            test_a_layer_imports_only_the_layers_below_it("services.runtime")
    finally:
        GRAPH["services.runtime.runner"].discard("services.families.image")


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level]
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("layer", ["services.dataplane", "services.runtime", "services.ops", "services.errors"])
def test_the_data_plane_and_below_import_no_web_framework(layer):
    for module, path in modules().items():
        if layer_of(module) == layer:
            assert not imported_roots(path) & WEB_FRAMEWORKS, module


def test_services_never_import_torch():
    for module, path in modules().items():
        if module.startswith("services."):
            assert "torch" not in imported_roots(path), module
