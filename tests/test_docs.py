"""The docs show what the code does (datasette-style checks)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

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


#: A Python block of the docs: fenced, possibly indented (inside a list item).
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```python\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)
#: The mark on the line before a block: ``skip: REASON`` or ``continues`` (runs in the
#: names the page's earlier blocks defined).
_MARK = re.compile(r"<!-- docs-test: (?P<kind>skip|continues)(?:: (?P<reason>.+?))? -->")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _python_blocks() -> list:
    params = []
    for page in PAGES:
        text = page.read_text()
        for match in _FENCE.finditer(text):
            line = text[: match.start()].count("\n") + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            mark = _MARK.search(before)
            code = textwrap.dedent(match.group("body"))
            rel = page.relative_to(ROOT).as_posix()
            params.append(pytest.param(rel, line, code, mark, id=f"{rel}:{line}"))
    return params


BLOCKS = _python_blocks()
_PAGE_NAMES: dict[str, dict] = {}


def test_the_docs_have_python_blocks_to_run():
    assert len(BLOCKS) >= 17
    for param in BLOCKS:
        page, line, _, mark = param.values
        if mark is not None and mark["kind"] == "skip":
            assert mark["reason"], f"{page}:{line}: a skipped block must say why"


@pytest.mark.slow
@pytest.mark.parametrize(("page", "line", "code", "mark"), BLOCKS)
def test_every_python_block_of_the_docs_runs_as_written(
    page, line, code, mark, tmp_path, monkeypatch
):
    """Each block runs on its own, as a reader would paste it (a block marked
    ``continues`` runs after the page's earlier blocks); blocks that need data or files a
    reader has made first are skipped with the reason written beside them in the page."""
    if mark is not None and mark["kind"] == "skip":
        pytest.skip(f"{page}:{line}: {mark['reason']}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OODLENS_CACHE_DIR", str(tmp_path / "cache"))
    names = dict(_PAGE_NAMES.get(page, {})) if mark is not None else {}
    names["__name__"] = f"docs_block_{line}"
    exec(compile(code, f"{page}:{line}", "exec"), names)
    _PAGE_NAMES.setdefault(page, {}).update(names)


def _sync_docs():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync_docs", ROOT / "benchmarks" / "sync_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_numbers_quoted_from_results_files_are_the_files_text():
    """A docs section quoting a results file (``<!-- results: FILE -->``) holds that file's
    text: a benchmark rerun without ``benchmarks/sync_docs.py``, or a hand edit of a quoted
    number, fails here."""
    sync = _sync_docs()
    quoted = []
    for page in sync.PAGES:
        text = page.read_text()
        quoted += [m["file"] for m in sync.quotes(text)]
        assert sync.synced(text) == text, (
            f"{page.name} quotes a results file that has changed: run "
            "python benchmarks/sync_docs.py"
        )
    assert {
        "benchmarks/results/pipeline_overhead.txt",
        "benchmarks/results/thread_contention.txt",
    } <= set(quoted)


def test_a_changed_results_file_is_caught(tmp_path):
    sync = _sync_docs()
    page = "<!-- results: {f} -->\n```text\nold 1.00x\n```\n<!-- /results -->\n"
    (tmp_path / "r.txt").write_text("new 1.20x\n")
    sync.ROOT = tmp_path
    text = page.format(f="r.txt")
    assert sync.synced(text) == page.format(f="r.txt").replace("old 1.00x", "new 1.20x")


def test_the_defaults_table_matches_every_scorer_s_defaults():
    """docs/scorers.md's defaults table: each oodlens cell is the scorer's actual default,
    and every parameter of every installed scorer is in it (or the scorer is named as
    parameter-free)."""
    import ast

    text = (ROOT / "docs" / "scorers.md").read_text()
    table = text.split("<!-- defaults-table -->", 1)[1].split("<!-- /defaults-table -->", 1)[0]
    rows = [line.split(" | ") for line in table.strip().splitlines()[2:]]
    seen = set()
    for cells in rows:
        name, param, value = (c.strip().strip("|").strip().strip("`") for c in cells[:3])
        actual = oodlens.create_scorer(name).get_params()
        assert param in actual, f"{name} has no parameter {param!r}"
        assert ast.literal_eval(value) == actual[param], (name, param, value, actual[param])
        seen.add((name, param))
    free = text.split("Parameter-free here:", 1)[1].split("\n\n", 1)[0]
    for name in oodlens.list_scorers():
        params = oodlens.create_scorer(name).get_params()
        if not params:
            assert f"`{name}`" in free, f"{name} is neither in the table nor parameter-free"
        for param in params:
            assert (name, param) in seen, f"{name}.{param} is missing from the defaults table"
