# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The package's import structure: no import circle and every arrow pointing down the layers the README's layout
section describes (the package facades, which load names on first use, excepted)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "peft_nsp"
#: Bottom to top: a module may import its own layer and the layers below it.
LAYERS = (
    ("_io", "_lazy", "_torch_utils", "_registration", "losses", "nullspace", "offline", "timm_vit"),
    ("tuner",),
    ("continual",),
    ("trainer",),
    ("hub",),
    ("loop",),
    ("scripts",),
    ("classify", "demo"),
)
LAYER_OF = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The peft_nsp modules ``path`` imports (relative imports resolved), anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            found.add(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("peft_nsp"):
            found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    if part not in LAYER_OF:
        pytest.fail(f"`{module}` belongs to no layer of LAYERS: add `{part}` where it sits.")
    return LAYER_OF[part]


def test_every_import_points_down_or_within_its_layer():
    upward = [
        f"{module} → {target}"
        for module, targets in import_graph().items()
        if module != "peft_nsp" and not module.endswith("__init__")
        for target in targets
        if target != "peft_nsp" and layer(target) > layer(module)
    ]
    assert upward == []


def test_there_is_no_import_circle():
    graph = import_graph()
    visiting, done, circles = [], set(), []

    def visit(module: str) -> None:
        if module in done or module not in graph:
            return
        if module in visiting:
            circles.append(" → ".join([*visiting[visiting.index(module) :], module]))
            return
        visiting.append(module)
        for target in sorted(graph[module]):
            if module != "peft_nsp" and target != "peft_nsp":  # the root facade loads its names lazily
                visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert circles == []


def test_the_checker_sees_an_upward_arrow_and_a_circle(tmp_path, monkeypatch):
    """The two checks above can fail: a planted upward import and a planted circle are found."""
    package = tmp_path / "peft_nsp"
    (package / "tuner").mkdir(parents=True)
    (package / "trainer").mkdir()
    (package / "tuner" / "a.py").write_text("from ..trainer.b import helper\n")
    (package / "trainer" / "b.py").write_text("from ..tuner.a import helper\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert import_graph() == {"peft_nsp.tuner.a": {"peft_nsp.trainer.b"}, "peft_nsp.trainer.b": {"peft_nsp.tuner.a"}}
    with pytest.raises(AssertionError, match="peft_nsp.tuner.a → peft_nsp.trainer.b"):
        test_every_import_points_down_or_within_its_layer()
    with pytest.raises(AssertionError, match="→ peft_nsp.tuner.a"):
        test_there_is_no_import_circle()
