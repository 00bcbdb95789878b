"""The layout's rules, drawn from the code itself: layers, no import cycles, no private names
across modules, a docstring on every module, and a light ``import oodlens``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "oodlens"

#: A module may import only modules of its own layer or lower ones (lower = more basic).
LAYERS: dict[str, int] = {
    **dict.fromkeys(
        [
            "errors",
            "files",
            "params",
            "progress",
            "hookspecs",
            "functional",
            "metrics",
            "arrays",
            "distributed",
            "options",
            "corruptions",
        ],
        0,
    ),
    **dict.fromkeys(["outputs", "stats", "compute", "protocol", "statefile", "network"], 1),
    **dict.fromkeys(["scorers.base", "explainers.attention", "explainers.base", "cache"], 2),
    **dict.fromkeys(
        [
            "datasets",
            "scorers.kde",
            "scorers.logits",
            "scorers.logit_kde",
            "scorers",
            "explainers",
            "explainers.gradcam",
            "explainers.integrated",
            "openood_models",
            "clip",
            "conformal",
        ],
        3,
    ),
    **dict.fromkeys(["registry", "backbones", "plots"], 4),
    **dict.fromkeys(
        [
            "default_plugins",
            "default_plugins.scorers",
            "default_plugins.explainers",
            "default_plugins.datasets",
            "default_plugins.protocols",
            "testing",
            "extract",
            "train",
            "saving",
            "fusion",
        ],
        5,
    ),
    **dict.fromkeys(
        [
            "diagnose",
            "detector",
            "bench.config",
            "bench.report",
            "bench.tune",
            "bench.html",
            "bench.published",
        ],
        6,
    ),
    "bench.result": 7,
    **dict.fromkeys(["bench.run", "bench", "bench.compare"], 8),
    **dict.fromkeys(["cli", "__main__", ""], 9),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    base = module.split(".") if module else []
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    target = ".".join([*base, node.module] if node.module else base)
    return target


def _imports(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported oodlens module, imported names) for every import, incl. inside functions."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = _resolve(module, node, is_package)
            elif node.module and (node.module == "oodlens" or node.module.startswith("oodlens.")):
                target = node.module[len("oodlens.") :] if node.module != "oodlens" else ""
            else:
                continue
            names = [a.name for a in node.names]
            # "from . import kde" imports the submodule
            mods = _modules()
            for name in names:
                sub = f"{target}.{name}" if target else name
                if sub in mods:
                    found.append((sub, []))
            plain = [n for n in names if (f"{target}.{n}" if target else n) not in mods]
            if plain or len(plain) == len(names):
                found.append((target, plain))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("oodlens."):
                    found.append((a.name[len("oodlens.") :], []))
    return found


def test_every_module_is_placed_in_a_layer():
    assert set(_modules()) == set(LAYERS), "place new modules in tests/test_structure.py LAYERS"


def test_no_upward_import_and_no_cycle():
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for target, _ in _imports(module, path):
            assert target in mods, f"{module} imports unknown oodlens module {target!r}"
            if target == module:
                continue
            assert LAYERS[target] <= LAYERS[module], (
                f"upward import: {module} (layer {LAYERS[module]}) imports {target} "
                f"(layer {LAYERS[target]})"
            )
            graph[module].add(target)
    # cycles: depth-first search over the graph (packages import their own submodules)
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if nxt.startswith(node + ".") or node == "":  # a package importing its members
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, node, nxt]))
            if not state.get(nxt):
                visit(nxt, [*stack, node])
        state[node] = 2

    for m in graph:
        if not state.get(m):
            visit(m, [])


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for module, path in _modules().items():
        for target, names in _imports(module, path):
            if target.split(".")[-1].startswith("_") and target != "__main__":
                offenders.append(f"{module} imports private module {target}")
            offenders += [f"{module} imports {target}.{n}" for n in names if n.startswith("_")]
    for path in [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("plugins/*/src/**/*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("oodlens"):
                if any(p.startswith("_") for p in node.module.split(".")):
                    offenders.append(f"{path.name} imports {node.module}")
                offenders += [
                    f"{path.name} imports {a.name}" for a in node.names if a.name.startswith("_")
                ]
    assert not offenders, offenders


def test_every_module_says_what_it_is_for():
    for module, path in _modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and doc.strip().splitlines()[0].strip(), (
            f"{module or 'oodlens'} has no docstring"
        )


@pytest.mark.slow
def test_listing_scorers_is_light():
    """``import oodlens; oodlens.list_scorers()`` imports no torch (with every plugin
    distribution of the repo installed). How long it takes is measured, as a ratio to a bare
    ``import numpy``, by ``benchmarks/import_speed.py``, never asserted here."""
    code = (
        "import sys; import oodlens; names = oodlens.list_scorers(); "
        "print('torch' in sys.modules, len(names))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    torch_loaded, n = out.stdout.split()
    assert torch_loaded == "False"
    assert int(n) >= 8  # built-ins and the feature-scorer plugin
