"""Conformal p-values, false-rejection control and BH flagging (issue 15): the guarantees are
checked by simulation over many random calibration/test splits, against the formulas computed
by hand, and the failure when calibration rows were fitting rows."""

from __future__ import annotations

import numpy as np
import pytest

import oodlens
from oodlens.conformal import ConformalRejector, benjamini_hochberg, conformal_p_values
from oodlens.testing import synthetic_outputs

REPS = 400


@pytest.fixture(scope="module")
def pool():
    """A fitted scorer and the scores of a large pool of exchangeable ID samples, plus OOD."""
    scorer = oodlens.create_scorer("energy").fit(synthetic_outputs(300, seed=0))
    id_scores = scorer.score(synthetic_outputs(4000, seed=1))
    ood_scores = scorer.score(synthetic_outputs(2000, seed=2, kind="ood"))
    return scorer, id_scores, ood_scores


def _splits(n_pool, n_cal, n_test, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(REPS):
        perm = rng.permutation(n_pool)
        yield perm[:n_cal], perm[n_cal : n_cal + n_test]


def test_p_values_match_the_formula_by_hand():
    calib = np.array([0.3, 0.1, 0.2, 0.2, 0.9])
    s = np.array([0.05, 0.2, 0.95])
    # (1 + #{calib <= s}) / (n + 1)
    expected = [(1 + sum(c <= x for c in calib)) / 6 for x in s]
    np.testing.assert_allclose(conformal_p_values(calib, s), expected)
    # randomized: between (#{<} + 0)/(n+1) and (#{<} + 1 + #{=})/(n+1)
    r = conformal_p_values(calib, s, ties="randomized", rng=np.random.default_rng(1))
    lo = [sum(c < x for c in calib) / 6 for x in s]
    hi = [(sum(c < x for c in calib) + 1 + sum(c == x for c in calib)) / 6 for x in s]
    assert all(a <= b <= c for a, b, c in zip(lo, r, hi, strict=True))
    # calibration-conditional (DKW-Massart): F_n(s) + sqrt(log(1/delta) / 2n), capped at 1
    eps = np.sqrt(np.log(1 / 0.1) / 10)
    np.testing.assert_allclose(
        conformal_p_values(calib, s, delta=0.1),
        np.minimum(1, np.array([sum(c <= x for c in calib) / 5 for x in s]) + eps),
    )


def test_bh_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.9])
    # sorted 0.01, 0.03, 0.04, 0.2, 0.9 vs k q / m = 0.02, 0.04, 0.06, 0.08, 0.1: k = 3
    np.testing.assert_array_equal(benjamini_hochberg(p, 0.1), [True, True, True, False, False])
    assert not benjamini_hochberg(np.array([0.5, 0.9]), 0.1).any()


@pytest.mark.parametrize("ties", ["conservative", "randomized"])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_false_rejection_rate_is_at_most_alpha(pool, alpha, ties):
    _, ids, _ = pool
    rng = np.random.default_rng(3)
    frr = np.array(
        [
            np.mean(conformal_p_values(ids[c], ids[t], ties=ties, rng=rng) <= alpha)
            for c, t in _splits(ids.size, 60, 200)
        ]
    )
    se = frr.std(ddof=1) / np.sqrt(REPS)
    assert frr.mean() <= alpha + 3 * se, (frr.mean(), alpha, se)
    # and it is not trivially conservative: close to alpha (floor(alpha (n+1)) / (n+1))
    assert frr.mean() >= np.floor(alpha * 61) / 61 - 3 * se - 0.02


def test_randomized_ties_are_exact_on_discrete_scores(pool):
    _, ids, _ = pool
    coarse = np.round(ids, 0)  # a handful of distinct values: many ties
    assert np.unique(coarse).size < 30
    rng = np.random.default_rng(4)
    for ties in ("conservative", "randomized"):
        frr = np.array(
            [
                np.mean(conformal_p_values(coarse[c], coarse[t], ties=ties, rng=rng) <= 0.1)
                for c, t in _splits(ids.size, 60, 200, seed=1)
            ]
        )
        se = frr.std(ddof=1) / np.sqrt(REPS)
        assert frr.mean() <= 0.1 + 3 * se
        if ties == "randomized":
            assert abs(frr.mean() - np.floor(0.1 * 61) / 61) < 3 * se + 0.01


@pytest.mark.parametrize("q", [0.05, 0.1, 0.2])
def test_bh_false_discovery_rate_is_at_most_q(pool, q):
    _, ids, oods = pool
    rng = np.random.default_rng(5)
    fdrs, power = [], []
    for c, t in _splits(ids.size, 200, 150, seed=2):
        ood = oods[rng.choice(oods.size, 50, replace=False)]
        p = conformal_p_values(ids[c], np.r_[ids[t], ood])
        flags = benjamini_hochberg(p, q)
        fdrs.append(flags[: t.size].sum() / max(1, flags.sum()))
        power.append(flags[t.size :].mean())
    fdrs = np.array(fdrs)
    se = fdrs.std(ddof=1) / np.sqrt(REPS)
    assert fdrs.mean() <= q + 3 * se, (fdrs.mean(), q, se)
    assert np.mean(power) > 0.1  # the flags do find OOD samples


def test_calibration_conditional_p_values_hold_with_probability_1_minus_delta(pool):
    _, ids, _ = pool
    rng = np.random.default_rng(6)
    alpha, delta, n_cal = 0.1, 0.1, 100
    exceed = []
    for _ in range(REPS):
        perm = rng.permutation(ids.size)
        cal, rest = ids[perm[:n_cal]], ids[perm[n_cal:]]  # rest: the conditional rate
        exceed.append(np.mean(conformal_p_values(cal, rest, delta=delta) <= alpha) > alpha)
        # marginal p-values exceed alpha conditionally far more often (about half the time)
    assert np.mean(exceed) <= delta
    marginal = [
        np.mean(conformal_p_values(ids[c], ids[np.setdiff1d(np.arange(ids.size), c)]) <= alpha)
        > alpha
        for c, _ in _splits(ids.size, n_cal, 1, seed=7)
    ]
    assert np.mean(marginal) > 2 * delta


def test_calibrating_on_fitting_rows_breaks_the_guarantee_and_is_refused():
    """A scorer overfits its own fitting rows: calibrating on them makes p-values of new ID
    samples too small (far more than alpha rejected), so the rejector refuses those rows."""
    train = synthetic_outputs(300, seed=10)
    kde = oodlens.create_scorer("logit_kde", bw_multiplier=0.05).fit(train)
    test = synthetic_outputs(600, seed=11)
    wrong = conformal_p_values(kde.score(train), kde.score(test))
    se = np.sqrt(0.1 * 0.9 / test.n_samples)
    assert np.mean(wrong <= 0.1) > 0.1 + 3 * se  # the guarantee (<= 0.1) fails (here 0.2)
    held_out = synthetic_outputs(300, seed=12)
    right = conformal_p_values(kde.score(held_out), kde.score(test))
    assert np.mean(right <= 0.1) <= 0.1 + 3 * se
    with pytest.raises(ValueError, match="300 of the 300 calibration rows were used to fit"):
        ConformalRejector(kde).calibrate(train)
    mixed = oodlens.Outputs(logits=np.vstack([held_out.logits, train.logits[:5]]))
    with pytest.raises(ValueError, match="5 of the 305 calibration rows"):
        ConformalRejector(kde).calibrate(mixed)


def test_rejector_api_and_small_calibration_sets(caplog):
    scorer = oodlens.create_scorer("msp").fit(synthetic_outputs(200, seed=0))
    rej = ConformalRejector(scorer).calibrate(synthetic_outputs(9, seed=1))
    test = synthetic_outputs(50, seed=2)
    np.testing.assert_allclose(
        rej.p_values(test),
        conformal_p_values(scorer.score(synthetic_outputs(9, seed=1)), scorer.score(test)),
    )
    assert rej.min_alpha == pytest.approx(0.1)
    with caplog.at_level("WARNING"):
        assert not rej.reject(test, 0.05).any()
    assert "below the smallest p-value 0.1 with n=9 calibration rows" in caplog.text
    assert rej.flag_batch(test, 0.1).dtype == bool
    with pytest.raises(oodlens.InvalidParameterError, match="ties='random' is not valid"):
        ConformalRejector(scorer, ties="random")
    with pytest.raises(oodlens.NotFittedError):
        ConformalRejector(oodlens.create_scorer("msp"))


@pytest.mark.slow
def test_harness_reports_conformal_columns(tmp_path, capsys):
    from oodlens.bench import run_benchmark

    res = run_benchmark(
        scorers=("msp",),
        alphas=(0.1, 0.005),
        fdr=0.1,
        train={"epochs": 2, "hflip": False},
        cache_dir=str(tmp_path / "cache"),
        progress=False,
    )
    run = res.runs[0]
    row = res.table[(res.table.scorer == "msp") & (res.table.ood == "noise")].iloc[0]
    msp = oodlens.create_scorer("msp").fit(run.outputs["id_train"])
    calib = msp.score(run.outputs["id_calib"])
    p_id = [(1 + np.sum(calib <= s)) / (calib.size + 1) for s in run.scores["msp"]["id"]]
    p_ood = [(1 + np.sum(calib <= s)) / (calib.size + 1) for s in run.scores["msp"]["noise"]]
    assert row["frr@0.1"] == pytest.approx(np.mean(np.array(p_id) <= 0.1))
    assert row["power@0.1"] == pytest.approx(np.mean(np.array(p_ood) <= 0.1))
    assert row["frr@0.005"] == 0.0  # below 1/(n+1): nothing rejected, and said so
    assert any("below 1/(n+1)" in w for w in res.info["warnings"])
    assert 0 <= row["fdr@0.1"] <= 1 and 0 <= row["fdr_power@0.1"] <= 1
    out = res.save(tmp_path / "rep")
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_explain_shows_p_values_and_refuses_fitting_rows(tmp_path, capsys):
    from PIL import Image

    from oodlens import cli
    from oodlens.train import TrainConfig, train_model

    ckpt = tmp_path / "m.safetensors"
    train_model(TrainConfig(data="digits:0-2", img_size=16, epochs=1), ckpt, progress=False)
    img = tmp_path / "x.png"
    Image.fromarray(np.full((16, 16, 3), 60, np.uint8)).save(img)
    base = [
        "explain",
        str(img),
        "--model",
        "resnet18",
        "--checkpoint",
        str(ckpt),
        "--scorers",
        "msp",
    ]
    base += ["--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "e.png"), "-q"]
    rc = cli.main([*base, "--calib", "digits:0-2@test"])
    out = capsys.readouterr().out
    assert rc == 0 and "p(msp)=" in out
    # the verdict at the threshold accepting 95% of the calib images
    assert "msp=" in out and ("(accepted)" in out or "(REJECTED)" in out)
    p = float(out.split("p(msp)=")[1].split()[0])
    n = len(oodlens.load_dataset("digits:0-2@test"))
    assert 1 / (n + 1) - 1e-4 <= p <= 1.0
    rc = cli.main([*base, "--calib", "digits:0-2@train"])
    assert rc == 2 and "were used to fit the scorer 'msp'" in capsys.readouterr().err
