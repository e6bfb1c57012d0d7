"""The package graph follows the data flow: imports only point down (docs/architecture.md).

Every import in every module, deferred ones included, is checked against the allowed
edges, so a back-edge (the pipeline reaching up into signaling, say) fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("parley", "storage", "personas", "pipeline", "media_server", "signaling")
#: ``parley`` is both the bottom (config, metrics) and the top (CLI, headless client);
#: its entry points are their own unit, allowed to use everything.
ENTRY_POINTS = ("parley.cli", "parley.doctor", "parley.call", "parley.__main__")
ALLOWED = {
    "parley": set(),
    "storage": {"parley"},
    "personas": {"parley"},
    "pipeline": {"parley", "personas", "storage"},
    "media_server": {"parley", "pipeline"},
    "signaling": {"parley", "storage", "personas", "pipeline", "media_server"},
    "entry": {"parley", "storage", "personas", "pipeline", "media_server", "signaling", "bench"},
}


def unit_of(module: str) -> str | None:
    if module.startswith(ENTRY_POINTS):
        return "entry"
    top = module.split(".")[0]
    return top if top in PACKAGES else None


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_package_edges_point_down() -> None:
    bad = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            source = unit_of(module)
            assert source is not None
            for target in imports(path):
                dest = unit_of(target)
                if dest is not None and dest != source and dest not in ALLOWED[source]:
                    bad.append(f"{module} imports {target} ({source} -> {dest})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_alone(package: str) -> None:
    """No package needs another to be imported first (no hidden import-order cycle)."""
    subprocess.run([sys.executable, "-c", f"import {package}"], cwd=ROOT, check=True, timeout=120)
