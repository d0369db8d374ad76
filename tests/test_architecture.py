"""The package's layers (docs/architecture.md): no upward import, no import cycle, light imports.

Every ``import`` and ``from ... import`` in ``src/vilt`` is read with ``ast`` (function-level imports
included: a lazy import is still a dependency), resolved to the vilt module it names, and checked
against the layer table below.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import vilt

PACKAGE = Path(vilt.__file__).parent

# layer -> modules (a name ending in ".*" stands for a package and everything in it)
LAYERS = {
    0: ("vilt", "vilt.errors", "vilt.hub", "vilt.files", "vilt.devices", "vilt.images", "vilt.feature", "vilt.tasks"),
    1: ("vilt.configuration", "vilt.inputs"),
    2: ("vilt.image_processing", "vilt.tokenization", "vilt.processing"),
    3: ("vilt.modeling", "vilt.layers", "vilt.tuning", "vilt.checkpoint", "vilt.alignment"),
    4: ("vilt.heads",),
    5: ("vilt.pipelines.*", "vilt.train.*", "vilt.export.*", "vilt.convert", "vilt.explain",
        "vilt.scale", "vilt.scale.parts", "vilt.scale.cluster", "vilt.scale.batch", "vilt.scale.ranking"),
    6: ("vilt.cli", "vilt.commands", "vilt.serve.*", "vilt.scale.replicas", "vilt.scale.cli"),
}  # fmt: skip


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = module_names()


def layer_of(name: str) -> int:
    for layer, members in LAYERS.items():
        for member in members:
            if name == member or (member.endswith(".*") and (name + ".").startswith(member[:-1])):
                return layer
    raise AssertionError(f"{name} is in no layer of tests/test_architecture.py: add it (and to the docs)")


def imports_of(name: str) -> set[str]:
    """The vilt modules ``name`` imports, anywhere in its file."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = [
                f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in MODULES
            ]
            targets = submodules if submodules and not node.module else [module, *submodules]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_from_a_layer_above(name: str) -> None:
    upward = sorted(dep for dep in GRAPH[name] if layer_of(dep) > layer_of(name))
    assert not upward, f"{name} (layer {layer_of(name)}) imports from layers above it: {upward}"


def test_no_import_cycles() -> None:
    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), list(GRAPH[start])
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(GRAPH[node])
        return False

    cycles = sorted((a, b) for a in GRAPH for b in GRAPH[a] if reaches(b, a))
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize(
    "statement", ["import vilt", "import vilt.tasks, vilt.hub, vilt.images, vilt.errors"]
)
def test_the_plumbing_imports_no_torch(statement: str) -> None:
    code = f"import sys; {statement}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
