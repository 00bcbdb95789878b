"""Full-spectrum OOD (--fsood): OpenOOD's metric definitions, the CIFAR-10-C-style
corruptions, the corrupted dataset kind, and the side-by-side table of a run."""

from __future__ import annotations

import colorsys
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from sklearn.metrics import auc, precision_recall_curve, roc_curve

import oodlens
from oodlens import corruptions
from oodlens.bench import BenchmarkConfig, OODSet
from oodlens.bench.config import resolve_protocol
from oodlens.cli import main
from oodlens.metrics import full_spectrum_metrics


def _openood_reference(conf: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """OpenOOD v1.5's evaluator (openood/evaluators/metrics.py) as its text defines it:
    OOD (label -1) is the positive class of -conf; FPR at the first TPR >= 0.95."""
    ood = (label == -1).astype(int)
    fpr, tpr, _ = roc_curve(ood, -conf)
    p_in, r_in, _ = precision_recall_curve(1 - ood, conf)
    p_out, r_out, _ = precision_recall_curve(ood, -conf)
    return {
        "auroc": auc(fpr, tpr),
        "aupr_in": auc(r_in, p_in),
        "aupr_out": auc(r_out, p_out),
        "fpr95": fpr[np.argmax(tpr >= 0.95)],
    }


def test_full_spectrum_metrics_hand_made_case() -> None:
    # ID test {5, 4}, covariate-shifted ID {1, 3}, OOD {2, 0}: of the 4 x 2 ID/OOD pairs,
    # the ID row scores higher in 7 (1 < 2 is the one out of order)
    m = full_spectrum_metrics(
        np.array([5.0, 4.0]),
        [np.array([1.0]), np.array([3.0])],
        np.array([2.0, 0.0]),
        id_correct=np.array([True, True]),
        covariate_correct=[np.array([False]), np.array([True])],
    )
    assert m["auroc"] == pytest.approx(7 / 8)
    assert m["id_accuracy"] == pytest.approx(3 / 4)
    # 95% of OOD caught needs both OOD rows below the threshold: all ID rows above 2 pass
    # except the covariate row at 1, so 1 of 4 ID rows is flagged
    assert m["fpr95"] == pytest.approx(1 / 4)
    # the usual setting on the same scores: ID test alone is perfectly separated
    usual = oodlens.metrics.ood_metrics(np.array([5.0, 4.0]), np.array([2.0, 0.0]), "openood")
    assert usual["auroc"] == 1.0


def test_full_spectrum_metrics_match_openood_definitions() -> None:
    rng = np.random.default_rng(0)
    ind, cov1, cov2 = rng.normal(2, 1, 300), rng.normal(1, 1, 120), rng.normal(0.5, 1, 80)
    ood = rng.normal(0, 1, 200)
    got = full_spectrum_metrics(ind, [cov1, cov2], ood)
    conf = np.concatenate([ind, cov1, cov2, ood])
    label = np.concatenate([np.zeros(500), -np.ones(200)])
    for k, v in _openood_reference(conf, label).items():
        assert got[k] == pytest.approx(v, abs=1e-12), k


def test_full_spectrum_needs_a_covariate_set() -> None:
    with pytest.raises(ValueError, match="covariate-shifted ID set"):
        full_spectrum_metrics(np.ones(3), [], np.zeros(3))
    with pytest.raises(ValueError, match="one per set"):
        full_spectrum_metrics(
            np.ones(3), [np.ones(2)], np.zeros(3), id_correct=np.ones(3, bool), covariate_correct=[]
        )


def _image(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).random((size, size, 3))


def test_contrast_is_hendrycks_formula() -> None:
    x = _image()
    for severity, c in enumerate((0.75, 0.5, 0.4, 0.3, 0.15), start=1):
        m = x.mean(axis=(0, 1))
        want = np.clip((x - m) * c + m, 0, 1)
        got = corruptions.contrast(x, severity, np.random.default_rng(0))
        np.testing.assert_allclose(got, want)


@pytest.mark.parametrize("name", ["brightness", "saturate"])
def test_hsv_corruptions_match_colorsys(name: str) -> None:
    x = _image(1, 8)
    x[0, 0] = (0.5, 0.5, 0.5)  # a grey pixel
    x[0, 1] = 0.0  # black
    for severity in range(1, 6):
        got = getattr(corruptions, name)(x, severity, np.random.default_rng(0))
        want = np.empty_like(x)
        for i, j in np.ndindex(x.shape[:2]):
            h, s, v = colorsys.rgb_to_hsv(*x[i, j])
            if name == "brightness":
                v = min(max(v + (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1], 0), 1)
            else:
                a, b = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))[severity - 1]
                s = min(max(s * a + b, 0), 1)
            want[i, j] = colorsys.hsv_to_rgb(h, s, v)
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_gaussian_blur_matches_scipy() -> None:
    x = _image(2)
    for severity, sigma in enumerate((0.4, 0.6, 0.7, 0.8, 1.0), start=1):
        want = np.stack(
            [gaussian_filter(x[..., k], sigma, mode="mirror", truncate=4.0) for k in range(3)],
            axis=-1,
        )
        got = corruptions.gaussian_blur(x, severity, np.random.default_rng(0))
        np.testing.assert_allclose(got, np.clip(want, 0, 1), atol=1e-6)


def test_noise_corruptions_have_their_strength() -> None:
    x = np.full((64, 64, 3), 0.5)
    g = corruptions.gaussian_noise(x, 5, np.random.default_rng(0))
    assert np.std(g - x) == pytest.approx(0.10, rel=0.05)
    imp = corruptions.impulse_noise(x, 5, np.random.default_rng(0))
    assert np.mean(imp != x) == pytest.approx(0.07, abs=0.01)
    assert set(np.unique(imp[imp != x])) <= {0.0, 1.0}


def test_corrupt_is_seeded_and_checks_its_arguments() -> None:
    img = Image.fromarray(np.uint8(_image(3) * 255))
    a = corruptions.corrupt(img, "shot_noise", 3, np.random.default_rng(7))
    b = corruptions.corrupt(img, "shot_noise", 3, np.random.default_rng(7))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert a.size == img.size and a.mode == "RGB"
    for name in corruptions.CORRUPTIONS:  # every corruption runs on a small image too
        out = corruptions.corrupt(img.resize((8, 8)), name, 5, np.random.default_rng(0))
        assert out.size == (8, 8)
    with pytest.raises(ValueError, match="Unknown corruption 'fog'"):
        corruptions.corrupt(img, "fog", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="severity must be 1 to 5"):
        corruptions.corrupt(img, "contrast", 6, np.random.default_rng(0))


def test_corrupt_dataset_kind_records_each_corruption() -> None:
    base = oodlens.load_dataset("digits:0-4@test")
    src = oodlens.load_dataset("corrupt:digits:0-4,types=contrast+pixelate,severity=2-3@test")
    assert len(src) == len(base) and src.classes == base.classes
    np.testing.assert_array_equal(src.labels, base.labels)
    kinds = {sid.rsplit("#", 1)[1] for sid in src.ids}
    assert kinds <= {f"{t}@{s}" for t in ("contrast", "pixelate") for s in (2, 3)}
    assert len(kinds) == 4  # every type and severity is drawn on ~180 images
    again = oodlens.load_dataset("corrupt:digits:0-4,types=contrast+pixelate,severity=2-3@test")
    assert src.fingerprint() == again.fingerprint()
    assert np.array_equal(np.asarray(src.loader(5)), np.asarray(again.loader(5)))
    other = oodlens.load_dataset(
        "corrupt:digits:0-4,types=contrast+pixelate,severity=2-3,seed=1@test"
    )
    assert other.fingerprint() != src.fingerprint()
    for spec, message in (
        ("corrupt:digits:0-4,types=fog", "Unknown corruption"),
        ("corrupt:digits:0-4,severity=0-9", "severity"),
        ("corrupt:digits:0-4,level=2", "Unknown option"),
        ("corrupt:", "names no set"),
    ):
        with pytest.raises(ValueError, match=message):
            oodlens.load_dataset(spec)


def test_fsood_config_needs_covariate_and_other_sets() -> None:
    with pytest.raises(ValueError, match="--ood covariate:NAME=SPEC"):
        BenchmarkConfig(ood=(OODSet("n", "noise:gaussian", "far"),), fsood=True)
    with pytest.raises(ValueError, match="not covariate"):
        BenchmarkConfig(ood=(OODSet("c", "digits:5-9", "covariate"),), fsood=True)
    both = (OODSet("n", "noise:gaussian", "far"), OODSet("c", "digits:5-9", "covariate"))
    with pytest.raises(ValueError, match="convention 'openood'"):
        BenchmarkConfig(ood=both, fsood=True)
    assert BenchmarkConfig(ood=both, fsood=True, convention="openood").fsood


def test_protocol_fsood_adds_its_covariate_sets(tmp_path) -> None:
    for folder in ("cifar10/train/cat", "cifar10/test/cat", "ood/mnist/0"):
        (tmp_path / folder).mkdir(parents=True)
    resolved = resolve_protocol("cifar10", tmp_path, fsood=True)
    cov = {o.name: o.spec for o in resolved["ood"] if o.group == "covariate"}
    assert cov["cifar10c"] == f"corrupt:{(tmp_path / 'cifar10').resolve()},seed=0@test"
    assert "cinic10_imagenet" in {m["name"] for m in resolved["missing_sets"]}
    assert not any(o.group == "covariate" for o in resolve_protocol("cifar10", tmp_path)["ood"])
    with pytest.raises(ValueError, match="no covariate-shifted ID sets"):
        (tmp_path / "cifar100/train/x").mkdir(parents=True)
        resolve_protocol("cifar100", tmp_path, fsood=True)


@pytest.mark.slow
def test_bench_fsood_reports_both_settings(tmp_path, capsys) -> None:
    out = tmp_path / "r"
    code = main(
        [
            "bench",
            "--scorers",
            "msp",
            "energy",
            "--ood",
            "far:noise=noise:gaussian,n=100",
            "--ood",
            "covariate:dc=corrupt:digits:0-4,types=contrast+gaussian_noise@test",
            "--fsood",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert "Full-spectrum OOD" in capsys.readouterr().out
    side = pd.read_csv(out / "fsood.csv")
    assert set(side.ood) == {"noise", "far"}  # the covariate set is ID here
    assert {"auroc", "auroc_fsood", "id_accuracy", "id_accuracy_fsood"} <= set(side.columns)
    # recompute one cell from the per-sample scores with the independent reference
    scores = pd.read_csv(out / "scores.csv.gz")
    msp = side[(side.scorer == "msp") & (side.ood == "noise")].iloc[0]
    ind = scores[scores.set.isin(["id", "dc"])]
    ood = scores[scores.set == "noise"]
    conf = np.concatenate([ind.msp, ood.msp])
    label = np.concatenate([np.zeros(len(ind)), -np.ones(len(ood))])
    ref = _openood_reference(conf, label)
    assert msp.auroc_fsood == pytest.approx(ref["auroc"], abs=1e-9)
    assert msp.fpr95_fsood == pytest.approx(ref["fpr95"], abs=1e-9)
    assert msp.id_accuracy_fsood == pytest.approx(np.mean(ind.label == ind.prediction))
    payload = json.loads((out / "results.json").read_text())
    assert payload["config"]["fsood"] is True
    assert len(payload["fsood"]) == len(side)
