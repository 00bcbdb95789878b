from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

import oodlens
from oodlens import functional as F


@pytest.fixture
def logits():
    return np.random.default_rng(0).normal(scale=5, size=(50, 7))


@pytest.mark.parametrize("t", [0.5, 1.0, 1000.0])
def test_msp_matches_scipy_softmax(logits, t):
    np.testing.assert_allclose(
        F.msp(logits, t), softmax(logits / t, axis=1).max(axis=1), rtol=1e-12
    )


def test_energy_hand_computed():
    z = np.array([[0.0, 0.0], [1.0, 2.0], [1000.0, 1000.0]])
    expected = [np.log(2), np.log(np.e + np.e**2), 1000 + np.log(2)]
    np.testing.assert_allclose(F.energy(z), expected, rtol=1e-12)
    np.testing.assert_allclose(
        F.energy(z[:2], 2.0), 2 * np.log(np.exp(z[:2] / 2).sum(1)), rtol=1e-12
    )


def test_max_logit(logits):
    np.testing.assert_array_equal(F.max_logit(logits), logits.max(axis=1))


@pytest.mark.parametrize("t", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature(logits, t):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        F.msp(logits, t)
    with pytest.raises(ValueError, match="temperature"):
        oodlens.create_scorer("energy", temperature=t).fit(oodlens.Outputs(logits=logits)).score(
            oodlens.Outputs(logits=logits)
        )


def test_scorer_classes_wrap_functions(logits):
    out = oodlens.Outputs(logits=logits)
    for name, fn in [("msp", F.msp), ("energy", F.energy), ("max_logit", F.max_logit)]:
        np.testing.assert_array_equal(oodlens.create_scorer(name).fit(out).score(out), fn(logits))


def test_create_scorer_errors():
    with pytest.raises(
        oodlens.UnknownNameError,
        match=r"Unknown scorer 'mps'.*Valid scorers:.*msp.*Did you mean: msp",
    ):
        oodlens.create_scorer("mps")
    with pytest.raises(KeyError):
        oodlens.create_scorer("definitely_not_a_scorer")
    with pytest.raises(
        TypeError,
        match=r"Unknown parameter 'temprature' for scorer 'msp'.*Did you mean: temperature",
    ):
        oodlens.create_scorer("msp", temprature=2.0)


def test_repr_and_params():
    s = oodlens.create_scorer("msp", temperature=3.0)
    assert repr(s) == "MSP(temperature=3.0)"
    assert s.get_params() == {"temperature": 3.0}
