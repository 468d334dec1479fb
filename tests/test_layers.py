"""The package layout is the architecture: each layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "voxloop"

# Bottom to top. A module may import its own layer and any layer listed before it.
LAYERS = [
    {"config", "models", "audio"},
    {"backends"},
    {"service"},  # keys, limits, metrics, the stores: below the engine and every protocol
    {"engine"},
    {"protocols"},
    {"server", "cli"},  # the app composes everything
]


def layer_of(name: str) -> int:
    return next(index for index, layer in enumerate(LAYERS) if name in layer)


def imported_packages(path: Path) -> set[str]:
    """The top-level voxloop packages a module imports (``voxloop.engine.session`` -> ``engine``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name.split(".")[1] for name in names if name.startswith("voxloop.")}


def test_no_module_imports_from_a_layer_above_it() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if parts == ("__init__.py",):
            continue
        own = layer_of(parts[0].removesuffix(".py"))
        upward += [f"{path.relative_to(PACKAGE)} imports voxloop.{name}" for name in imported_packages(path)
                   if layer_of(name) > own]  # fmt: skip
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "limits.py"
    module.write_text("from voxloop.protocols.soca.voice import SocaVoice\nimport voxloop.engine.events\n")
    assert imported_packages(module) == {"protocols", "engine"}
    assert layer_of("protocols") > layer_of("service") and layer_of("engine") > layer_of("service")
