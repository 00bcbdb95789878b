"""Comparability with OpenOOD and pytorch-ood (issue 11): metric conventions, held-out
validation and calibration splits, and parameter search that never sees a test row."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

import oodlens
from oodlens import cli
from oodlens.bench import run_benchmark
from oodlens.bench.tune import search_space, tune_scorer
from oodlens.datasets import holdout_split
from oodlens.registry import Grid, parse_scorer_spec
from oodlens.testing import synthetic_outputs
from oodlens.train import TrainConfig, train_model


def openood_evaluator(id_scores, ood_scores):
    """OpenOOD v1.5's published definitions (its evaluator since Dec 2023), written here on
    scikit-learn: OOD positive for FPR at 95% OOD recall from roc_curve (which drops
    intermediate points by default); AUPR as auc(recall, precision) on precision_recall_curve."""
    conf = np.r_[id_scores, ood_scores].astype(float)
    ood = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    fpr, tpr, _ = skm.roc_curve(ood, -conf)
    p_in, r_in, _ = skm.precision_recall_curve(1 - ood, conf)
    p_out, r_out, _ = skm.precision_recall_curve(ood, -conf)
    return {
        "auroc": skm.auc(fpr, tpr),
        "aupr_in": skm.auc(r_in, p_in),
        "aupr_out": skm.auc(r_out, p_out),
        "fpr95": fpr[np.argmax(tpr >= 0.95)],
    }


def _cases():
    rng = np.random.default_rng(0)
    cases = []
    for n_id, n_ood in ((1, 1), (2, 3), (7, 5), (40, 60), (500, 300)):
        cases.append(("continuous", rng.normal(1, 1, n_id), rng.normal(0, 1, n_ood)))
        cases.append(("tied", rng.integers(0, 4, n_id) * 1.0, rng.integers(0, 3, n_ood) * 1.0))
        cases.append(("binary", rng.integers(0, 2, n_id) * 1.0, rng.integers(0, 2, n_ood) * 1.0))
        cases.append(("constant", np.full(n_id, 0.3), np.full(n_ood, 0.3)))
        cases.append(("separated", rng.normal(5, 1, n_id), rng.normal(-5, 1, n_ood)))
        cases.append(("inverted", rng.normal(-5, 1, n_id), rng.normal(5, 1, n_ood)))
    return cases


@pytest.mark.parametrize(
    ("kind", "ind", "ood"), _cases(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_openood_convention_equals_the_evaluator(kind, ind, ood):
    ours = oodlens.ood_metrics(ind, ood, convention="openood")
    ref = openood_evaluator(ind, ood)
    assert set(ours) == set(ref)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), (kind, key)


def test_openood_convention_by_hand():
    # ID [1, 1], OOD [1, 0]: one tie group {1,1,1} then the OOD 0
    m = oodlens.ood_metrics([1.0, 1.0], [1.0, 0.0], convention="openood")
    # AUPR-in: points (0, 1) -> (1, 2/3) by the trapezoid: (1 + 2/3) / 2
    assert m["aupr_in"] == pytest.approx(5 / 6)
    # AUPR-out on -score: OOD 0 first (P=1, R=1/2), then the tie (P=2/4, R=1): (1)(1/2) + ...
    assert m["aupr_out"] == pytest.approx(0.5 * 1.0 + 0.5 * (1.0 + 0.5) / 2)
    # 95% OOD recall needs the tie group: both ID rejected
    assert m["fpr95"] == 1.0
    assert m["auroc"] == pytest.approx(0.75)
    # the step-wise average precision of our own convention differs on ties
    assert oodlens.ood_metrics([1.0, 1.0], [1.0, 0.0])["aupr_in"] == pytest.approx(2 / 3)


def test_fpr95_conventions_differ_only_on_ties():
    rng = np.random.default_rng(3)
    ind, ood = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    ours = oodlens.ood_metrics(ind, ood)
    assert oodlens.ood_metrics(ind, ood, "openood")["fpr95"] == ours["fpr95_ood_recall"]
    with pytest.raises(
        ValueError, match="convention='openod' is not valid; use one of oodlens, openood"
    ):
        oodlens.ood_metrics(ind, ood, "openod")


# --- held-out splits -------------------------------------------------------------------------
def test_holdout_split_is_disjoint_stable_and_location_free(tmp_path):
    src = oodlens.load_dataset("digits:0-4@train")
    rest, val, calib = holdout_split(src, 0.1, 0.15)
    ids = [set(p.ids) for p in (rest, val, calib)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(map(len, ids)) == len(src)
    assert abs(len(val) / len(src) - 0.1) < 0.05 and abs(len(calib) / len(src) - 0.15) < 0.05
    # membership depends on the sample alone: dropping other samples moves nobody
    half = src.subset(range(0, len(src), 2), "half")
    _, val2, calib2 = holdout_split(half, 0.1, 0.15)
    assert set(val2.ids) == set(val.ids) & set(half.ids)
    assert set(calib2.ids) == set(calib.ids) & set(half.ids)
    # folders split by relative path: a copy elsewhere splits the same way
    for root in (tmp_path / "a", tmp_path / "b" / "deeper"):
        for k in range(2):
            (root / f"c{k}").mkdir(parents=True)
            for i in range(30):
                Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(root / f"c{k}" / f"{i}.png")
    parts = [
        holdout_split(oodlens.load_dataset(str(r)), 0.2, 0.2)
        for r in (tmp_path / "a", tmp_path / "b" / "deeper")
    ]
    names = [[sorted(p.split_keys()) for p in trio] for trio in parts]
    assert names[0] == names[1]
    with pytest.raises(ValueError, match="val_fraction \\+ calib_fraction must be below 1"):
        holdout_split(src, 0.6, 0.5)


class HeldOutMean(oodlens.Scorer):
    """Distance of the max logit to its mean on the held-out val outputs (test scorer)."""

    name = "held_out_mean"
    requires = frozenset({"logits", "val"})

    def _fit(self, train, val=None):
        self.center_ = float(val.logits.max(axis=1).mean())

    def _score(self, outputs):
        return -np.abs(outputs.logits.max(axis=1) - self.center_)


def test_scorers_receive_val_through_fit():
    train, val = synthetic_outputs(100, seed=0), synthetic_outputs(80, seed=5)
    s = HeldOutMean().fit(train, val=val)
    assert s.center_ == pytest.approx(val.logits.max(axis=1).mean())
    with pytest.raises(oodlens.MissingOutputsError, match="requires 'val'"):
        HeldOutMean().fit(train)
    if "react" in oodlens.list_scorers():
        react = oodlens.create_scorer("react", percentile=85, percentile_on="val")
        react.fit(train, val=val)
        assert react.threshold_ == pytest.approx(np.percentile(val.features, 85))


# --- parameter search --------------------------------------------------------------------------
def test_grid_syntax_and_search_space():
    spec = parse_scorer_spec("knn:k=1|10|50,use_faiss=False")
    assert (spec.name, spec.params, spec.grid) == (
        "knn",
        {"use_faiss": False},
        {"k": Grid((1, 10, 50))},
    )
    assert search_space("logit_kde") == (
        "logit_kde",
        {},
        {"bw_multiplier": [0.25, 0.5, 1.0, 2.0, 4.0]},
    )
    assert search_space("logit_kde:bw_multiplier=0.5|2")[2] == {"bw_multiplier": [0.5, 2]}
    assert search_space("logit_kde:bw_multiplier=2")[2] == {}  # fixed: not searched
    with pytest.raises(ValueError, match="grids are searched only with --tune"):
        oodlens.registry.create_scorer_from_spec("logit_kde:bw_multiplier=0.5|2")


def test_tune_scorer_picks_the_best_validation_auroc():
    train = synthetic_outputs(300, seed=0)
    val = synthetic_outputs(120, seed=1)
    ood_val = {"o": synthetic_outputs(120, seed=2, kind="ood")}
    res = tune_scorer("logit_kde:bw_multiplier=0.1|1|10", train, val, ood_val)
    expected = []
    for mult in (0.1, 1, 10):  # independent: sklearn's AUROC of the same scorer by hand
        s = oodlens.create_scorer("logit_kde", bw_multiplier=mult).fit(train)
        y = np.r_[np.ones(val.n_samples), np.zeros(120)]
        expected.append(skm.roc_auc_score(y, np.r_[s.score(val), s.score(ood_val["o"])]))
    assert [t["auroc"] for t in res.trials] == pytest.approx(expected)
    assert res.params == {"bw_multiplier": (0.1, 1, 10)[int(np.argmax(expected))]}


def test_tune_skips_candidates_that_do_not_fit_the_data():
    if "knn" not in oodlens.list_scorers():
        pytest.skip("the oodlens-feature-scorers plugin is not installed")
    train = synthetic_outputs(30, seed=0)
    val, ood = synthetic_outputs(40, seed=1), synthetic_outputs(40, seed=2, kind="ood")
    res = tune_scorer("knn:k=1|10|50", train, val, {"o": ood})
    assert "error" in res.trials[2] and "k=50" in res.trials[2]["error"]
    assert res.params["k"] in (1, 10)


def test_tune_needs_an_ood_validation_set(capsys, tmp_path):
    with pytest.raises(ValueError, match="--ood-val NAME=SPEC"):
        oodlens.BenchmarkConfig(tune=True)
    with pytest.raises(ValueError, match="must never appear in the test rows"):
        oodlens.BenchmarkConfig(ood_val=(oodlens.OODSet("noise", "noise:uniform"),))
    rc = cli.main(["bench", "--tune", "--cache-dir", str(tmp_path)])
    assert rc == 2 and "--ood-val" in capsys.readouterr().err


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    """digits 0-2 as an ImageFolder with train/ and test/, and a small model trained on it."""
    root = tmp_path_factory.mktemp("digits")
    for split in ("train", "test"):
        src = oodlens.load_dataset(f"digits:0-2@{split}")
        for i in range(len(src)):
            d = root / "id" / split / src.classes[src.labels[i]]
            d.mkdir(parents=True, exist_ok=True)
            src.loader(i).save(d / f"{src.ids[i].split('#')[1]}.png")
    ckpt = root / "m.safetensors"
    cfg = TrainConfig(data=str(root / "id"), img_size=16, epochs=2, batch_size=64, hflip=False)
    train_model(cfg, ckpt, progress=False)
    return root, ckpt


@pytest.mark.slow
def test_tuning_and_threshold_never_use_test_rows(digits_folder, tmp_path):
    root, ckpt = digits_folder
    data = tmp_path / "id"
    import shutil

    shutil.copytree(root / "id", data)
    kw = {
        "id": str(data),
        "checkpoints": (str(ckpt),),
        "img_size": 16,
        "ood_val": (oodlens.OODSet("uniform", "noise:uniform,n=60,size=16"),),
        "tune": True,
        "scorers": ("logit_kde", "knn:k=1|5|20", "react")
        if "knn" in oodlens.list_scorers()
        else ("logit_kde",),
        "cache_dir": str(tmp_path / "cache"),
        "progress": False,
    }
    first = run_benchmark(ood=(oodlens.OODSet("noise", "noise:gaussian,n=60,size=16"),), **kw)
    # change every test row: the ID test images outside val/calib, and the OOD test set
    test = oodlens.load_dataset(f"{data}@test")
    rest, _, _ = holdout_split(test, 0.1, 0.1)
    rng = np.random.default_rng(0)
    for path in rest.ids:
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
    second = run_benchmark(
        ood=(oodlens.OODSet("noise", "noise:gaussian,n=60,size=16,seed=7"),), **kw
    )
    r1, r2 = first.runs[0], second.runs[0]
    assert r1.tuning and {k: v["chosen"] for k, v in r1.tuning.items()} == {
        k: v["chosen"] for k, v in r2.tuning.items()
    }
    assert r1.thresholds == r2.thresholds  # chosen on calib, which did not change
    assert not np.allclose(r1.scores["logit_kde"]["id"], r2.scores["logit_kde"]["id"])
    # the threshold accepts 95% of calib, recomputed here from the calib outputs
    chosen = r1.tuning["logit_kde"]["chosen"]
    kde = oodlens.create_scorer("logit_kde", **chosen).fit(r1.outputs["id_train"])
    calib = kde.score(r1.outputs["id_calib"])
    assert r1.thresholds["logit_kde"] == np.sort(calib)[::-1][int(np.ceil(0.95 * calib.size)) - 1]
    # recorded in results.json
    out = first.save(tmp_path / "rep", plots=False)
    payload = json.loads((out / "results.json").read_text())
    assert payload["tuning"]["resnet18/seed-1"]["logit_kde"]["chosen"] == chosen
    assert payload["config"]["ood_val"][0]["name"] == "uniform"
