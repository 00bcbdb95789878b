"""The fusion scorer: conformal p-values of members on val, combined; the false-rejection
guarantee of the calibrated fusion over many random splits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import combine_pvalues, spearmanr

import oodlens
from oodlens.conformal import conformal_p_values
from oodlens.errors import InvalidParameterError
from oodlens.fusion import combine_p_values, conformal_p_values_against, log_p_values
from oodlens.registry import parse_scorer_spec
from oodlens.testing import synthetic_outputs


def _rows(outputs: oodlens.Outputs, index: np.ndarray) -> oodlens.Outputs:
    return oodlens.Outputs(
        logits=outputs.logits[index],
        features=outputs.features[index],
        labels=outputs.labels[index],
        head_weight=outputs.head_weight,
        head_bias=outputs.head_bias,
    )


def test_combinations_against_hand_values_and_scipy() -> None:
    p = np.array([[0.01, 0.2, 0.5], [0.3, 0.3, 0.9]])
    # Fisher: minus scipy's statistic -2 sum log p
    want = [-combine_pvalues(row, method="fisher").statistic for row in p]
    np.testing.assert_allclose(combine_p_values(np.log(p), "fisher"), want)
    # Simes: min_k m p_(k) / k  ->  row 1: min(0.03, 0.3, 0.5); row 2: min(0.9, 0.45, 0.9)
    np.testing.assert_allclose(np.exp(combine_p_values(np.log(p), "simes")), [0.03, 0.45])
    np.testing.assert_allclose(np.exp(combine_p_values(np.log(p), "min")), [0.01, 0.3])
    # conformal p-values against a reference: (1 + #{ref <= s}) / (n + 1)
    ref = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(
        conformal_p_values_against(ref, np.array([0.5, 2.0, 9.0])), [0.25, 0.75, 1.0]
    )


def test_continuous_p_values_stay_near_the_conformal_ones_and_never_tie() -> None:
    rng = np.random.default_rng(0)
    ref = np.sort(rng.normal(size=200))
    s = np.sort(rng.normal(scale=3, size=2000))
    p = np.exp(log_p_values(ref, s))
    assert np.all(np.diff(p) > 0)  # strictly increasing, also far below and above the val rows
    conformal = conformal_p_values_against(ref, s)
    inside = (s >= ref[0]) & (s <= ref[-1])
    assert np.all(p[inside] <= conformal[inside] + 1e-12)
    assert np.all(conformal[inside] - p[inside] <= 1 / 201 + 1e-12)
    assert np.all(p[~inside] <= conformal[~inside])  # the tails are never more lenient
    assert np.isfinite(log_p_values(ref, np.array([-1e6]))).all()  # no floor, no underflow


@pytest.mark.parametrize("method", ["fisher", "simes", "min"])
def test_fusion_of_a_scorer_with_itself_ranks_as_that_scorer(method: str) -> None:
    train = synthetic_outputs(600, n_classes=4, dim=16, seed=0)
    val = synthetic_outputs(300, n_classes=4, dim=16, seed=1)
    test = synthetic_outputs(200, n_classes=4, dim=16, seed=2, kind="ood")
    energy = oodlens.create_scorer("energy").fit(train).score(test)
    spec = parse_scorer_spec(f"fusion:members=[energy],method={method}")
    fused = spec.create().fit(train, val=val).score(test)
    assert spearmanr(fused, energy).statistic == pytest.approx(1.0)


def test_fusion_members_are_checked() -> None:
    for text, message in (
        ("fusion:members=[]", "empty"),
        ("fusion:members=knn", "give a list of scorer specs"),
        ("fusion:members=[odin]", "model-aware"),
        ("fusion:members=[fusion]", "fusions themselves"),
        ("fusion:method=mean", "method"),
    ):
        with pytest.raises(InvalidParameterError, match=message):
            parse_scorer_spec(text)
    with pytest.raises(oodlens.errors.UnknownNameError, match="nope"):
        parse_scorer_spec("fusion:members=[nope:k=1]")
    fused = parse_scorer_spec("fusion:members=[knn:k=3,vim]").create()
    assert fused.requirements() == {"features", "head", "logits", "val"}
    assert fused.get_params()["members"] == ("knn:k=3", "vim")


def test_calibrated_fusion_keeps_its_false_rejection_rate() -> None:
    """Over 60 random splits of ID rows into train / val / calib / test: the fused score
    (Fisher of KNN, energy and ViM p-values on val), calibrated on calib, rejects at most
    alpha of the unseen ID test rows on average (within 3 standard errors)."""
    pool = synthetic_outputs(3000, n_classes=4, dim=16, seed=11)
    rng = np.random.default_rng(0)
    alphas = (0.05, 0.1, 0.2)
    rates = {a: [] for a in alphas}
    spec = parse_scorer_spec("fusion:members=[knn:k=5,energy,vim:dim=4]")
    for _ in range(60):
        idx = rng.permutation(3000)
        train, val, calib, test = (
            _rows(pool, idx[a:b]) for a, b in ((0, 1200), (1200, 1800), (1800, 2400), (2400, 3000))
        )
        fused = spec.create().fit(train, val=val)
        p = conformal_p_values(fused.score(calib), fused.score(test))
        for a in alphas:
            rates[a].append(np.mean(p <= a))
    for a in alphas:
        r = np.array(rates[a])
        assert r.mean() <= a + 3 * r.std(ddof=1) / np.sqrt(len(r)), (a, r.mean())
        assert r.mean() >= a / 2  # and not vacuous: it does reject about alpha


@pytest.mark.slow
def test_bench_runs_a_fusion(tmp_path) -> None:
    from oodlens.cli import main

    out = tmp_path / "r"
    code = main(
        [
            "bench",
            "--scorers",
            "energy",
            "knn:k=5",
            "fusion:members=[knn:k=5,energy]",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = (out / "results.csv").read_text()
    assert "fusion:members=[knn:k=5,energy]" in table
