"""Metrics against scikit-learn and against direct implementations written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from oodlens import metrics


def _cases():
    rng = np.random.default_rng(0)
    yield "random", rng.normal(1, 1, 500), rng.normal(0, 1, 300)
    yield "tied", rng.integers(0, 5, 400).astype(float), rng.integers(0, 4, 250).astype(float)
    yield "constant", np.full(50, 0.3), np.full(70, 0.3)
    yield "inverted", rng.uniform(0, 1, 100), rng.uniform(2, 3, 100)
    yield "separated", rng.uniform(2, 3, 100), rng.uniform(0, 1, 100)
    yield "tiny", np.array([1.0]), np.array([0.0, 1.0])
    yield "odd_sizes", rng.normal(size=37), rng.normal(size=19)


CASES = list(_cases())


def _sk_fpr_at_tpr(y, s, level=0.95):
    fpr, tpr, _ = roc_curve(y, s)
    return fpr[np.searchsorted(tpr, level, side="left")]


@pytest.mark.parametrize(("name", "ind", "ood"), CASES, ids=[c[0] for c in CASES])
def test_ood_metrics_match_sklearn(name, ind, ood):
    m = metrics.ood_metrics(ind, ood)
    y = np.r_[np.ones(ind.size), np.zeros(ood.size)]
    s = np.r_[ind, ood]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    assert m["fpr95"] == pytest.approx(_sk_fpr_at_tpr(y, s), abs=1e-12)
    assert m["fpr95_ood_recall"] == pytest.approx(_sk_fpr_at_tpr(1 - y, -s), abs=1e-12)
    # threshold95 accepts >= 95% of ID and any higher threshold accepts fewer
    t = m["threshold95"]
    assert np.mean(ind >= t) >= 0.95
    assert np.mean(ind > t) < 0.95


def test_hand_computed_example():
    # ID 3,2,1 vs OOD 0,1.5: pairs won 3*2 - (1 vs 1.5 lost) = 5 of 6
    m = metrics.ood_metrics(np.array([3.0, 2.0, 1.0]), np.array([0.0, 1.5]))
    assert m["auroc"] == pytest.approx(5 / 6)
    # accept 95% of 3 ID -> ceil(2.85)=3rd largest = 1.0; OOD accepted: 1.5 -> 1/2
    assert m["threshold95"] == 1.0 and m["fpr95"] == 0.5
    # reject 95% of OOD -> ceil(1.9)=2nd smallest = 1.5; ID rejected (<=1.5): {1.0} -> 1/3
    assert m["fpr95_ood_recall"] == pytest.approx(1 / 3)


def test_constant_scores_are_uninformative():
    m = metrics.ood_metrics(np.zeros(10), np.zeros(10))
    assert m["auroc"] == 0.5 and m["fpr95"] == 1.0 and m["fpr95_ood_recall"] == 1.0


@pytest.mark.parametrize(
    ("ind", "ood", "match"),
    [
        (np.array([]), np.array([1.0]), "id_scores is empty"),
        (np.array([1.0]), np.array([]), "ood_scores is empty"),
        (np.array([1.0, np.nan]), np.array([1.0]), r"id_scores has 1 NaN or inf"),
        (np.array([1.0]), np.array([np.inf]), r"ood_scores has 1 NaN or inf"),
        (np.zeros((2, 2)), np.array([1.0]), "1-D array"),
    ],
)
def test_ood_metrics_bad_input(ind, ood, match):
    with pytest.raises(ValueError, match=match):
        metrics.ood_metrics(ind, ood)


def _direct_curve(scores, correct):
    """Risk and coverage at every distinct threshold, by brute force."""
    pts = []
    for t in sorted(set(scores.tolist()), reverse=True):
        acc = scores >= t
        pts.append((acc.mean(), (~correct[acc]).mean()))
    return pts


def _direct_aurc(scores, correct):
    pts = _direct_curve(scores, correct)
    area, prev = 0.0, 0.0
    for cov, risk in pts:
        area += (cov - prev) * risk
        prev = cov
    return area


def _selective_cases():
    rng = np.random.default_rng(1)
    n = 300
    correct = rng.uniform(size=n) < 0.8
    yield "random", rng.normal(size=n), correct
    yield "informative", rng.normal(size=n) + 2 * correct, correct
    yield "tied", rng.integers(0, 6, n).astype(float), correct
    yield "all_correct", rng.normal(size=50), np.ones(50, bool)
    yield "all_wrong", rng.normal(size=50), np.zeros(50, bool)
    yield "constant", np.ones(40), rng.uniform(size=40) < 0.5


SEL = list(_selective_cases())


@pytest.mark.parametrize(("name", "scores", "correct"), SEL, ids=[c[0] for c in SEL])
def test_selective_metrics_match_direct_formula(name, scores, correct):
    m = metrics.selective_metrics(scores, correct, coverages=(0.5, 0.8, 1.0), risks=(0.1, 0.3))
    assert m["accuracy"] == pytest.approx(correct.mean())
    assert m["aurc"] == pytest.approx(_direct_aurc(scores, correct), abs=1e-12)
    # ideal ranking: correct first (strictly higher score), no ties
    ideal = np.where(correct, 1.0, 0.0) + np.linspace(0, 1e-3, correct.size)
    ideal_aurc = np.mean(
        [(~correct[np.argsort(-ideal)][:k]).mean() for k in range(1, correct.size + 1)]
    )
    assert m["eaurc"] == pytest.approx(m["aurc"] - ideal_aurc, abs=1e-12)
    pts = _direct_curve(scores, correct)
    for c in (0.5, 0.8, 1.0):
        expected = next(r for cov, r in pts if cov >= c - 1e-12)
        assert m[f"risk@{c:g}"] == pytest.approx(expected)
    for r in (0.1, 0.3):
        ok = [cov for cov, risk in pts if risk <= r]
        assert m[f"coverage@risk{r:g}"] == pytest.approx(max(ok) if ok else 0.0)


def test_aurc_without_ties_is_mean_risk():
    rng = np.random.default_rng(3)
    s = rng.normal(size=100)
    correct = rng.uniform(size=100) < 0.7
    order = np.argsort(-s)
    risks = np.cumsum(~correct[order]) / np.arange(1, 101)
    assert metrics.selective_metrics(s, correct)["aurc"] == pytest.approx(risks.mean(), abs=1e-12)


def test_perfect_ranking_has_zero_eaurc():
    correct = np.array([True] * 8 + [False] * 2)
    m = metrics.selective_metrics(np.arange(10, 0, -1.0), correct)
    assert m["eaurc"] == pytest.approx(0.0, abs=1e-15)


def test_risk_coverage_curve_shapes_and_ties():
    cov, risk, thr = metrics.risk_coverage_curve(np.array([3, 3, 2, 1.0]), np.array([1, 0, 1, 0]))
    np.testing.assert_allclose(cov, [0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.5, 1 / 3, 0.5])
    np.testing.assert_allclose(thr, [3, 2, 1])


def test_rejection_report_hand_computed():
    ids = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    correct = np.array([1, 1, 1, 0, 1, 1, 0, 1, 0, 0], bool)
    ood = np.array([0.85, 0.35, 0.02, 0.01])
    r = metrics.rejection_report(ids, correct, ood, threshold=0.35)
    # accepted ID: 0.9..0.4 (6), errors among them: 0.6 -> 1; errors total 4
    assert r["threshold"] == 0.35
    assert r["id_accepted"] == pytest.approx(0.6)
    assert r["id_errors_rejected"] == pytest.approx(3 / 4)
    assert r["id_correct_rejected"] == pytest.approx(1 / 6)  # 0.2 of 6 correct
    assert r["error_rate_accepted"] == pytest.approx(1 / 6)
    assert r["ood_rejected"] == pytest.approx(2 / 4)  # 0.85, 0.35 accepted
    assert r["open_set_risk"] == pytest.approx((1 + 2) / (6 + 2))


def test_rejection_report_default_threshold_accepts_95_percent():
    rng = np.random.default_rng(0)
    s = rng.normal(size=200)
    r = metrics.rejection_report(s, rng.uniform(size=200) < 0.9)
    assert r["threshold"] == metrics.ood_metrics(s, np.zeros(1))["threshold95"]
    assert r["id_accepted"] == pytest.approx(math.ceil(0.95 * 200) / 200)
    assert "ood_rejected" not in r


def test_rejection_report_undefined_rates_are_nan():
    r = metrics.rejection_report(np.array([1.0, 2.0]), np.array([True, True]), threshold=5.0)
    assert math.isnan(r["id_errors_rejected"]) and math.isnan(r["error_rate_accepted"])
    assert r["id_correct_rejected"] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"id_correct": np.array([True])}, r"id_correct must have shape \(3,\)"),
        ({"id_correct": np.array([0, 2, 1])}, "boolean"),
        ({"threshold": float("nan")}, "threshold must be finite"),
        ({"id_acceptance": 1.5}, r"id_acceptance must be in \(0, 1\]"),
    ],
)
def test_rejection_report_bad_input(kwargs, match):
    args = {"id_scores": np.array([1.0, 2.0, 3.0]), "id_correct": np.array([1, 0, 1])}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        metrics.rejection_report(**args)
