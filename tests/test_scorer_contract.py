"""One contract suite for every registered scorer, built-in or from a plugin."""

from __future__ import annotations

import pytest

import oodlens
from oodlens.testing import check_scorer

#: Extra configurations to check beyond the defaults, by scorer name.
EXTRA_PARAMS: dict[str, list[dict]] = {
    "msp": [{"temperature": 1000.0}],
    "energy": [{"temperature": 2.0}],
    "logit_kde": [
        {"method": "exact"},
        {"bandwidth": "silverman"},
        {"bandwidth": "cv"},
        {"bandwidth": 0.5},
        {"mode": "class_conditional"},
        {"mode": "class_conditional", "method": "exact"},
        {"mode": "class_conditional", "top_k": 2},
        {"mode": "class_conditional", "top_k": 2, "method": "exact", "bandwidth": "cv"},
        {"bw_multiplier": 0.5},
    ],
    "react": [{"percentile_on": "val"}],
    "knn": [{"k": 1}],
}

CASES = [(name, {}) for name in oodlens.list_scorers()] + [
    (name, params)
    for name, configs in EXTRA_PARAMS.items()
    if name in oodlens.list_scorers()
    for params in configs
]


@pytest.mark.parametrize(
    ("name", "params"),
    CASES,
    ids=[f"{n}-{'-'.join(map(str, p.values())) or 'default'}" for n, p in CASES],
)
def test_scorer_contract(name, params):
    check_scorer(name, params)


def test_builtin_scorers_are_listed():
    assert {"msp", "energy", "max_logit"} <= set(oodlens.list_scorers())
    assert oodlens.list_scorers("max_*") == ["max_logit"]


def test_check_scorer_catches_a_broken_scorer():
    class Backwards(oodlens.Scorer):
        name = "backwards_test"

        def _score(self, outputs):
            return -outputs.logits.max(axis=1)  # wrong sign: higher = more OOD

    class Plugin:
        @oodlens.hookimpl
        def register_scorers(self, register):
            register(Backwards)

    name = oodlens.register_plugin(Plugin(), name="backwards-plugin")
    try:
        with pytest.raises(AssertionError, match="ID should score higher than OOD"):
            check_scorer("backwards_test")
    finally:
        oodlens.unregister_plugin(name)


@pytest.fixture
def faulty_plugin():
    """The fixture plugin of two scorers that break the contract (tests/fixtures)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent / "fixtures" / "plugin_faulty" / "oodlens_faulty_scorers.py"
    spec = importlib.util.spec_from_file_location("oodlens_faulty_scorers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    name = oodlens.register_plugin(module, name="faulty-plugin")
    yield module
    oodlens.unregister_plugin(name)


def test_check_scorer_names_a_field_read_without_declaring_it(faulty_plugin):
    with pytest.raises(AssertionError, match="It reads 'features': add 'features'"):
        check_scorer("faulty_undeclared_features")


def test_check_scorer_refuses_an_init_that_changes_a_parameter(faulty_plugin):
    with pytest.raises(AssertionError, match="must store 'temperature' unchanged: the default"):
        check_scorer("faulty_clips_parameter")
    # given explicitly, the change is caught too
    with pytest.raises(AssertionError, match="must store 'temperature' verbatim"):
        check_scorer("faulty_clips_parameter", {"temperature": 0.25})
