"""The package's layers (docs/architecture.md): no upward import, no import cycle (within a layer as
across layers), light imports.

Every ``import`` and ``from ... import`` in ``src/vilt`` is read with ``ast`` (function-level imports
included: a lazy import is still a dependency), and so is every import by name: the module named by a
literal ``importlib.import_module(...)`` or ``__import__(...)``, and, in a module that imports a name it
computes (a table of lazy names or of commands), every vilt module its strings name. Each is resolved
to the vilt module it names and checked against the layer table below. The last tests plant violations
in made-up sources and check that they are caught.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

import vilt

PACKAGE = Path(vilt.__file__).parent

# layer -> modules (a name ending in ".*" stands for a package and everything in it)
LAYERS = {
    0: ("vilt", "vilt.errors", "vilt.hub", "vilt.files", "vilt.devices", "vilt.images", "vilt.feature", "vilt.tasks",
        "vilt.arguments"),
    1: ("vilt.configuration", "vilt.inputs"),
    2: ("vilt.image_processing", "vilt.tokenization", "vilt.processing"),
    3: ("vilt.modeling", "vilt.layers", "vilt.tuning", "vilt.checkpoint", "vilt.alignment"),
    4: ("vilt.heads",),
    5: ("vilt.pipelines.*", "vilt.train.*", "vilt.export.*", "vilt.convert", "vilt.explain",
        "vilt.scale", "vilt.scale.parts", "vilt.scale.cluster", "vilt.scale.batch", "vilt.scale.ranking"),
    6: ("vilt.cli", "vilt.commands", "vilt.serve.*", "vilt.scale.replicas", "vilt.scale.cli"),
}  # fmt: skip

# modules whose imports by a computed name are not dependencies but their purpose: the package's public
# names (``from vilt import ViltModel``), each imported from its module when first used
FACADES = ("vilt",)


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


def imports_in(
    source: str, name: str, is_package: bool, modules: Iterable[str], computed: bool = True
) -> set[str]:
    """The modules of ``modules`` that the source of the module ``name`` imports, anywhere in it
    (with ``computed``, also those its strings name where it imports a computed name)."""
    package = name if is_package else name.rpartition(".")[0]
    known = set(modules)

    def absolute(module: str, level: int) -> str:
        base = package.split(".")[: len(package.split(".")) - level + 1] if level else []
        return ".".join(base + ([module] if module else []))

    tree = ast.parse(source)
    strings = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = absolute(node.module or "", node.level)
            submodules = [
                f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in known
            ]
            targets = submodules if submodules and not node.module else [module, *submodules]
        elif isinstance(node, ast.Call) and _imports_by_name(node):
            argument = node.args[0] if node.args else None
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                text = argument.value
                targets = [
                    absolute(text.lstrip("."), len(text) - len(text.lstrip(".")))
                    if text.startswith(".")
                    else text
                ]
            else:  # a computed name: any vilt module the module's strings name may be the one
                targets = strings if computed else []
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def _imports_by_name(call: ast.Call) -> bool:
    """Whether ``call`` is ``importlib.import_module(...)``, ``import_module(...)`` or ``__import__(...)``."""
    function = call.func
    called = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
    return called in ("import_module", "__import__")


def imports_of(name: str) -> set[str]:
    """The vilt modules ``name`` imports, anywhere in its file."""
    path = MODULES[name]
    source = path.read_text(encoding="utf-8")
    return imports_in(source, name, path.name == "__init__.py", MODULES, computed=name not in FACADES)


def upward_imports(name: str, graph: dict[str, set[str]]) -> list[str]:
    """The modules ``name`` imports from layers above its own."""
    return sorted(dep for dep in graph[name] if layer_of(dep) > layer_of(name))


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every import (a, b) from which a's imports lead back to a."""

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), list(graph[start])
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(graph.get(node, ()))
        return False

    return sorted((a, b) for a in graph for b in graph[a] if reaches(b, a))


GRAPH = {name: imports_of(name) for name in MODULES}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_from_a_layer_above(name: str) -> None:
    upward = upward_imports(name, GRAPH)
    assert not upward, f"{name} (layer {layer_of(name)}) imports from layers above it: {upward}"


def test_no_import_cycles() -> None:
    found = cycles(GRAPH)
    assert not found, f"import cycles: {found}"


@pytest.mark.parametrize(
    "statement",
    ["import vilt", "import vilt.tasks, vilt.hub, vilt.images, vilt.errors, vilt.files, vilt.arguments"],
)
def test_the_plumbing_imports_no_torch(statement: str) -> None:
    code = f"import sys; {statement}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# ----------------------------------------------------------------------------- the checks catch what they should

PLANTED = {
    # a cycle within layer 0, one side a lazy import
    "cycle": {
        "vilt.errors": "def f():\n    from .devices import parse_dtype\n",
        "vilt.devices": "from .errors import ViltInputError\n",
    },
    # the plumbing importing the server by a literal name
    "literal": {
        "vilt.hub": "import importlib\n\ndef f():\n    return importlib.import_module('vilt.serve.app')\n"
    },
    # a relative name, from inside the training package, to a layer above
    "relative": {
        "vilt.train.loop": "from importlib import import_module\nimport_module('..serve.app', 'vilt.train')\n"
    },
    # a table of names imported by a computed name
    "table": {
        "vilt.images": "import importlib\nNAMES = {'x': 'vilt.pipelines.vqa'}\n\n"
        "def load(key):\n    return importlib.import_module(NAMES[key])\n"
    },
}


@pytest.mark.parametrize("plant", sorted(PLANTED))
def test_planted_violations_are_caught(plant: str) -> None:
    sources = PLANTED[plant]
    graph = {
        name: imports_in(source, name, MODULES[name].name == "__init__.py", MODULES)
        for name, source in sources.items()
    }
    if plant == "cycle":
        assert cycles(graph) == [("vilt.devices", "vilt.errors"), ("vilt.errors", "vilt.devices")]
    else:
        [(name, _)] = sources.items()
        assert upward_imports(name, graph), graph


# ----------------------------------------------------------------------------- tasks are objects, not names


def _names_a_task(node: ast.expr) -> bool:
    """``task``, ``args.task``, ``self.task``...: an expression that holds a task name."""
    return (isinstance(node, ast.Name) and node.id == "task") or (
        isinstance(node, ast.Attribute) and node.attr == "task"
    )


def _literal_strings(node: ast.expr) -> bool:
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_literal_strings(element) for element in node.elts)
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def task_name_branches(source: str) -> list[int]:
    """Lines that compare a task name with string literals (``task == "vqa"``, ``task in ("a", "b")``)
    or ``match`` on it."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(map(_names_a_task, operands)) and any(map(_literal_strings, operands)):
                lines.append(node.lineno)
        elif isinstance(node, ast.Match) and _names_a_task(node.subject):
            lines.append(node.lineno)
    return sorted(lines)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("vilt.train.")))
def test_training_asks_its_task_object_instead_of_comparing_task_names(name: str) -> None:
    lines = task_name_branches(MODULES[name].read_text(encoding="utf-8"))
    assert not lines, (
        f"{name} branches on task names at lines {lines}: give the task's TrainingTask "
        "(vilt/train/tasks/) a member instead"
    )


def test_task_name_branches_are_found() -> None:
    source = 'if args.task == "vqa":\n    pass\nok = task in ("nlvr2", "retrieval")\nmatch self.task:\n    case _:\n        pass\n'
    assert task_name_branches(source) == [1, 3, 4]


def test_every_trainable_task_has_its_object() -> None:
    from vilt.tasks import task_names
    from vilt.train.tasks import TRAINING_TASKS

    assert set(TRAINING_TASKS) == set(task_names("train"))
    for name, task in TRAINING_TASKS.items():
        assert task.model_class.__name__ == task.spec.architectures[0], name
