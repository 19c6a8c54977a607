"""The package's import graph reads top-down: no module imports a layer above its own.

cli -> ray -> client -> engine -> rundir -> providers -> http / pacing -> config -> errors /
records (DESIGN.md). The mock server is a separate program: it imports nothing of llmbatch
outside itself, so it never shares the code it checks.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import llmbatch

PACKAGE = Path(llmbatch.__file__).parent

# Lower number = lower layer. A module may import its own layer or any lower one.
RANK = {
    "errors": 0,
    "redaction": 0,
    "records": 0,
    "notices": 0,
    "clock": 0,
    "metrics": 1,
    "config": 2,
    "http": 3,
    "pacing": 3,
    "pricing": 3,
    "providers": 4,
    "rundir": 5,
    "engine": 6,
    "result": 7,
    "progress": 7,
    "batch": 8,
    "client": 8,
    "mockserver": 8,  # a program of its own, started by the client for the embedded mock
    "ray": 9,
    "cli": 10,
    "__init__": 11,
    "__main__": 12,
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> list[tuple[str, str]]:
    """(importing module, imported module) for every llmbatch import in the package."""
    pairs = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.level:  # relative imports would hide the layer: there are none
                    pairs.append((module, "." * node.level + node.module))
                elif node.module.startswith("llmbatch"):
                    pairs.append((module, node.module))
            elif isinstance(node, ast.Import):
                pairs += [(module, a.name) for a in node.names if a.name.startswith("llmbatch")]
    return pairs


def test_every_layer_is_known() -> None:
    layers = {
        _layer(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts))
        for p in PACKAGE.rglob("*.py")
    }
    assert layers - RANK.keys() == set()


def test_no_import_runs_up_a_layer() -> None:
    upward = []
    for module, imported in _imports():
        assert not imported.startswith("."), f"{module}: relative import {imported}"
        if RANK[_layer(imported)] > RANK[_layer(module)]:
            upward.append(f"{module} -> {imported}")
    assert upward == []


def test_the_mock_shares_no_code_with_what_it_checks() -> None:
    shared = [
        f"{module} -> {imported}"
        for module, imported in _imports()
        if _layer(module) == "mockserver" and _layer(imported) != "mockserver"
    ]
    assert shared == []


def test_the_architecture_page_names_every_module() -> None:
    """docs/architecture.md's module table keeps up with the tree (every module named)."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.endswith("/__init__.py"):
            continue  # a folder's __init__ is described by its folder's row
        parts = rel.split("/")
        folders = ["/".join(parts[:i]) + "/" for i in range(1, len(parts))]
        if f"`{rel}`" not in page and not any(f"`{f}`" in page for f in folders):
            missing.append(rel)
    assert missing == []


def test_the_architecture_page_names_no_module_that_is_gone() -> None:
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`([\w/]+/[\w]+\.py)`", page)) - {"tests/test_layers.py"}
    assert sorted(p for p in named if not (PACKAGE / p).is_file()) == []
