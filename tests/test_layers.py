"""The package's layers (ARCHITECTURE.md): no module imports a layer above its own."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "detres"

# lowest first; a module may import its own layer and any layer listed before it
LAYERS = ["utils", "config", "data", "backbones", "modeling", "evaluation", "engine", "tasks", "benchmarks"]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "detres" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> list[str]:
    package = list(path.relative_to(PKG.parent).parts[:-1])  # e.g. ["detres", "modeling"]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            out.append(".".join(base + ([node.module] if node.module else [])))
    return out


MODULES = sorted(p for p in PKG.rglob("*.py"))


def test_every_module_is_in_a_layer():
    for path in MODULES:
        rel = path.relative_to(PKG)
        if rel.parts == ("__init__.py",):
            continue
        name = rel.parts[0].removesuffix(".py")
        assert name in LAYERS, f"{rel}: not in a layer of {LAYERS} (update ARCHITECTURE.md and this test)"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_upward_import(path):
    rel = path.relative_to(PKG)
    if rel.parts == ("__init__.py",):
        return
    own = LAYERS.index(rel.parts[0].removesuffix(".py"))
    for target in _imports(path):
        layer = _layer(target)
        if layer is None or layer not in LAYERS:
            continue
        assert LAYERS.index(layer) <= own, f"{rel} imports {target}: layer {layer!r} is above {LAYERS[own]!r}"
