"""What dist_al imports is what pyproject.toml declares, so every documented command runs in a clean install."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import dist_al

ROOT = Path(__file__).resolve().parents[1]


def imported_names(path: Path) -> set[str]:
    """Top-level names of the absolute imports anywhere in a file (inside functions too: lazy imports count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def declared_distributions() -> set[str]:
    """The distributions the package's own code may import: its dependencies and every extra but the tooling's
    (`test`, `dev`)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for name, reqs in project["optional-dependencies"].items() if name not in ("test", "dev") for r in reqs]
    return {canonicalize_name(Requirement(r).name) for r in project["dependencies"] + extras}


def test_every_module_of_the_package_imports():
    names = [m.name for m in pkgutil.walk_packages(dist_al.__path__, "dist_al.")]
    assert {"dist_al.cli", "dist_al.core.badge", "dist_al.bench.distributed"} <= set(names)  # it walks subpackages
    for name in names:
        importlib.import_module(name)


def test_every_third_party_import_is_declared():
    assert "psutil" in imported_names(ROOT / "dist_al" / "bench" / "distributed.py")  # a lazy import is seen
    declared, providers = declared_distributions(), packages_distributions()
    undeclared = {}
    for path in sorted((ROOT / "dist_al").rglob("*.py")):
        for name in imported_names(path) - set(sys.stdlib_module_names) - {"dist_al"}:
            if not {canonicalize_name(d) for d in providers.get(name, [])} & declared:
                undeclared.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert not undeclared, (
        f"imported but not declared in pyproject.toml (dependencies or a non-test extra): {undeclared}"
    )
