"""The package's layout rules (docs/ARCHITECTURE.md, DESIGN.md), read off the source with ``ast``.

Imports run one way: core ← data ← training ← deploy ← explain ← cli. The core is every module directly under
``src/densenet`` (config, meta, model, registry, weights, analysis, fileio, …) with ``nn/`` and ``tutorial/``;
``import densenet`` loads the core alone. No module is longer than 400 lines unless its docstring says why.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import densenet

SOURCE = Path(densenet.__file__).parent
# Rank of each room: a module may import from rooms of its own rank or lower, never higher.
ROOMS = {"core": 0, "nn": 0, "tutorial": 0, "data": 1, "training": 2, "deploy": 3, "explain": 4, "cli": 5}
UPPER_ROOMS = ("data", "training", "deploy", "explain", "cli")
ENTRY_POINTS = {"densenet", "densenet.__main__"}  # the public API (lazy attributes) and `python -m densenet`
HEAVY = ("onnx", "onnxruntime", "matplotlib", "torchvision", "pytorch_grad_cam", "monai")
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = ("densenet", *path.relative_to(SOURCE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def _room(module: str) -> str:
    """``densenet.deploy.bench`` → ``deploy``; a module directly under the package (``densenet.model``, or a name
    in it such as ``densenet.model.DenseNet``) → core."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (SOURCE / parts[1]).is_dir() else "core"


def imported_modules(module: str, path: Path) -> set[str]:
    """Every ``densenet`` module ``path`` imports, at module level or inside functions: ``import a.b``,
    ``from a import b`` (``b`` counted as ``a.b`` too, it may be a submodule), relative imports, and
    ``importlib.import_module("…")`` with a literal name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return {name for name in found if name == "densenet" or name.startswith("densenet.")}


def test_the_parser_sees_every_kind_of_import(tmp_path):
    """The checker itself: absolute, from-, relative, function-level and importlib imports are all found."""
    path = tmp_path / "probe.py"
    path.write_text("import densenet.cli\nfrom densenet import training\nfrom ..deploy.bench import x\n"
                    "def f():\n    from .. import data\n    import importlib\n"
                    "    return importlib.import_module('densenet.deploy.export')\nimport torch\n")
    found = imported_modules("densenet.nn.probe", path)
    assert {"densenet.cli", "densenet.training", "densenet.deploy.bench", "densenet.data",
            "densenet.deploy.export"} <= found
    assert all(name.startswith("densenet") for name in found)


def test_every_subpackage_is_a_known_room():
    unknown = {_room(name) for name in _modules()} - set(ROOMS)
    assert not unknown, f"place the new room(s) {unknown} in ROOMS (and in the import order)"


def test_imports_run_one_way():
    """core ← data ← training ← deploy ← explain ← cli: no module imports from a room above its own."""
    violations = []
    for module, path in _modules().items():
        if module in ENTRY_POINTS:
            continue
        rank = ROOMS[_room(module)]
        for target in imported_modules(module, path):
            target_room = _room(target)
            if target_room in UPPER_ROOMS and ROOMS[target_room] > rank:
                violations.append(f"{module} ({_room(module)}) imports {target} ({target_room})")
    assert not violations, "\n".join(violations)


def test_import_densenet_loads_the_core_alone():
    """``import densenet`` loads no data, training, deploy or cli module, nor onnx, onnxruntime, matplotlib or
    torchvision, nor pytorch-grad-cam (checked in a fresh interpreter)."""
    code = ("import sys, json; import densenet; "
            "print(json.dumps(sorted(name for name in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "densenet.model" in loaded  # the probe sees the package's own modules
    forbidden = [name for name in loaded
                 if any(name == f"densenet.{room}" or name.startswith(f"densenet.{room}.") for room in UPPER_ROOMS)
                 or name.split(".")[0] in HEAVY]
    assert not forbidden, forbidden


@pytest.mark.parametrize("module", sorted(_modules()))
def test_module_length(module):
    """No module over 400 lines unless its docstring says why ("longer than …")."""
    path = _modules()[module]
    text = path.read_text(encoding="utf-8")
    lines = text.count("\n")
    if lines > MAX_LINES:
        docstring = ast.get_docstring(ast.parse(text)) or ""
        assert "longer than" in docstring, f"{path.relative_to(SOURCE)} has {lines} lines and no reason"
