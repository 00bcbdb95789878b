"""The docs show what the code does (datasette-style checks)."""

from __future__ import annotations

import re
from pathlib import Path

import oodlens
from oodlens import hookspecs

ROOT = Path(__file__).resolve().parents[1]


def _blocks(text: str, lang: str) -> list[str]:
    return [b.strip() for b in re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)]


def test_plugin_page_shows_the_tested_example_verbatim():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    fixture = ROOT / "tests" / "fixtures" / "plugin_good"
    assert (fixture / "oodlens_test_plugin.py").read_text().strip() in _blocks(doc, "python")
    assert (fixture / "pyproject.toml").read_text().strip() in _blocks(doc, "toml")


def test_every_hook_is_documented():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [name for name in dir(hookspecs) if name.startswith("register_")]
    assert hooks == [
        "register_datasets",
        "register_explainers",
        "register_protocols",
        "register_scorers",
    ]
    for hook in hooks:
        assert f"`{hook}(register)`" in doc
        assert getattr(hookspecs, hook).__doc__.strip()


def test_concepts_page_defines_every_metric():
    doc = (ROOT / "docs" / "concepts.md").read_text()
    keys = set(oodlens.ood_metrics([1.0, 2.0], [0.0])) | set(
        oodlens.rejection_report([1.0, 2.0], [True, False], [0.0])
    )
    keys |= {"aurc", "eaurc", "risk@c", "coverage@risk<r>"}
    for key in keys:
        assert f"`{key}`" in doc, key


def test_readme_quick_start_is_the_contract():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_the_model_aware_example_passes_the_contract():
    import types

    from oodlens.testing import check_scorer

    doc = (ROOT / "docs" / "plugins.md").read_text()
    code = next(b for b in _blocks(doc, "python") if "class InputGradNorm" in b)
    module = types.ModuleType("input_gradnorm_example")
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    name = oodlens.register_plugin(module, name="input_gradnorm_example")
    try:
        assert "input_gradnorm" in oodlens.list_scorers()
        check_scorer("input_gradnorm")
    finally:
        oodlens.unregister_plugin(name)
