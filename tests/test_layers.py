"""The package's layers: imports point only from outer layers to inner ones (README, "Layout").

Every import of ours is counted, the ones inside functions too, so a lazy import cannot hide an arrow that points
outwards (the core importing Ray through the runtime, `dist-al status` importing Ray, a layer importing the CLI).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dist_al"

# Inner to outer. A module may import its own layer and the layers of lower rank, nothing else.
RANK = {
    "core": 0,  # numerics: plain torch
    "credentials": 1,
    "faults": 1,
    "importing": 1,
    "config": 2,
    "data": 3,
    "inputs": 4,
    "models": 4,
    "runtime": 5,
    "testing": 5,
    "campaign": 6,
    "experiments": 7,
    "bench": 8,
    "commands": 9,
    "__init__": 9,  # the package's public names (dist_al.select, __version__), which the CLI prints
    "cli": 10,
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Every dist_al module ``path`` imports, absolute or relative, at any depth of its code."""
    module, package = _module(path), _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.append(".".join(base + ([node.module] if node.module else [])))
            else:
                out.append(node.module or "")
    assert module.startswith("dist_al")
    return [m for m in out if m == "dist_al" or m.startswith("dist_al.")]


def _arrows() -> set[tuple[str, str, str]]:
    """(importing module, its layer, the imported layer) for every import between two layers."""
    arrows = set()
    for path in PACKAGE.rglob("*.py"):
        here = _layer(_module(path))
        for target in _imports(path):
            there = _layer(target)
            if there != here:
                arrows.add((_module(path), here, there))
    return arrows


def test_every_layer_is_ranked():
    layers = {_layer(_module(p)) for p in PACKAGE.rglob("*.py")}
    assert layers <= set(RANK), f"a new layer needs its place in RANK: {sorted(layers - set(RANK))}"


def test_imports_point_inwards_only():
    outward = sorted(
        f"{module} ({layer}) imports dist_al.{target}"
        for module, layer, target in _arrows()
        if RANK[target] >= RANK[layer]
    )
    assert not outward, "imports that point outwards:\n" + "\n".join(outward)


def test_the_core_imports_nothing_of_ours_and_nothing_imports_the_cli():
    arrows = _arrows()
    assert not [a for a in arrows if a[1] == "core"]
    assert not [a for a in arrows if a[2] in ("cli", "commands") and a[1] not in ("cli", "commands")]


def test_the_check_sees_an_outward_import(tmp_path, monkeypatch):
    """The check itself: a core module that imports the runtime inside a function is caught."""
    fake = tmp_path / "dist_al"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "leak.py").write_text("def f():\n    from ..runtime import cluster\n")
    (fake / "runtime").mkdir()
    (fake / "runtime" / "cluster.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert ("dist_al.core.leak", "core", "runtime") in _arrows()


@pytest.mark.subprocess
def test_a_bad_config_fails_before_torch_and_ray_are_imported(tmp_path):
    """The config and its checks import neither torch nor Ray, and the commands load the config first, so a
    mistake in it is reported in a fraction of a second (it took ~2 s of imports before)."""
    (tmp_path / "c.yaml").write_text("pool: {uri: ./pool}\nselection: {budget: -3}\n")
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['dist-al', 'select', '--config', 'c.yaml']\n"
        "try:\n"
        "    runpy.run_module('dist_al.cli', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    print(e.code, sorted(m for m in ('torch', 'ray') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "selection.budget must be positive" in done.stderr, done.stderr
    assert done.stdout.split() == ["2", "[]"], (done.stdout, done.stderr)
