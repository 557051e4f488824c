"""The project's import graph: no cycles (imports under TYPE_CHECKING included), and the layers of services/."""

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "contracts", "training", "services", "bench", "loadtests", "harness", "deploy")
FAMILY_MODULES = {"services.family", "services.image", "services.text", "services.forecast"}
# The data plane and what it stands on: nothing here may know a family (or call back into one).
BELOW_FAMILIES = (
    "services.inference",
    "services.runner",
    "services.batching",
    "services.remote",
    "services.oip",
    "services.oip_grpc",
    "services.classification",
    "services.shared_memory",
    "services.gate",
    "services.repository",
    "services.desired",
    "services.app",
    "services.edge",
    "services.errors",
)


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
    circular = {**GRAPH, "services.runner": GRAPH["services.runner"] | {"services.image"}}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(circular).prepare()


@pytest.mark.parametrize("module", BELOW_FAMILIES)
def test_nothing_below_a_family_module_imports_one(module):
    assert not GRAPH[module] & FAMILY_MODULES


def test_family_modules_never_import_the_edge_and_services_never_import_torch():
    for module in FAMILY_MODULES:
        assert "services.edge" not in GRAPH[module]
    for module, path in modules().items():
        if module.startswith("services."):
            tree = ast.parse(path.read_text())
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert not [n for n in names if n.split(".")[0] == "torch"], module
