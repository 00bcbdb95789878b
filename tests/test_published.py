"""Published results as data (issue 27): OpenOOD v1.5's leaderboard in the protocol file, the
name map, and ``--compare-published`` (columns, variants, partial means, flags)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

import oodlens
from oodlens import cli, registry
from oodlens.bench.published import COLUMNS, compare_published, mean_auroc_interval
from oodlens.protocol import Protocol, Published, PublishedValue
from oodlens.train import TrainConfig, train_model

OPENOOD = ("cifar10", "cifar100", "imagenet200", "imagenet1k")


def test_the_openood_protocols_carry_their_published_results():
    for name in OPENOOD:
        results = registry.get_protocol(name).results
        assert results.source["repository"] == "zjysteven/OpenOOD"
        assert len(results.source["commit"]) == 40
        assert results.training == "CrossEntropy"
        for method in results.methods.values():  # the name map names real scorers
            if method.ours is not None:
                registry.parse_scorer_spec(method.ours).create()
    # three cells as OpenOOD's results/cifar10.csv and imagenet1k_ood.csv write them
    c10 = registry.get_protocol("cifar10").results.networks["ResNet18"]["ood"]
    assert c10["MSP"]["near"] == PublishedValue(88.03, 0.25, "88.03 ± 0.25")
    assert c10["KNN"]["far"].mean == 92.96 and c10["KNN"]["far"].std == 0.14
    in1k = registry.get_protocol("imagenet1k").results
    assert list(in1k.networks)[0] == "ResNet50" and in1k.network("vit-b/16") == "ViT-B/16"
    assert in1k.networks["ResNet50"]["ood"]["MSP"]["near"] == PublishedValue(76.02, None, "76.02")
    assert "fsood" in in1k.networks["ResNet50"]
    assert "fsood" not in registry.get_protocol("cifar10").results.networks["ResNet18"]
    names = {m.name: m.ours for m in registry.get_protocol("cifar10").results.methods.values()}
    assert (
        names["EBO"] == "energy" and names["MLS"] == "max_logit" and names["MDS"] == "mahalanobis"
    )
    assert names["RMDS"] == "rmd" and names["KLM"] == "kl_matching" and names["OpenMax"] is None
    assert names["ASH"] == "ash:variant=b,percentile=90"  # OpenOOD's ASH is ASH-B at 90


def test_published_values_and_bad_blocks_are_read_or_named():
    assert PublishedValue.parse("x", "/") is None and PublishedValue.parse("x", None) is None
    assert PublishedValue.parse("x", " 54.90 ± 0.98 ").std == 0.98
    with pytest.raises(ValueError, match="'about 90' is not a published value"):
        PublishedValue.parse("here", "about 90")
    good = {
        "source": {"repository": "r", "file": "f"},
        "methods": {"MSP": {"ours": "msp"}},
        "networks": {"Net": {"ood": {"MSP": {"near": "1 ± 1", "far": "2", "id_accuracy": "/"}}}},
    }
    assert Published.from_mapping("p", good).networks["Net"]["ood"]["MSP"]["id_accuracy"] is None
    bad = {**good, "networks": {"Net": {"ood": {"KNN": {"near": "1"}}}}}
    with pytest.raises(ValueError, match=r"networks.Net.ood.KNN: the method is not in methods"):
        Published.from_mapping("p", bad)
    with pytest.raises(ValueError, match="protocol 'x': published: missing"):
        Protocol.from_mapping(
            "x",
            {
                "id": {"folders": ["a"]},
                "ood": [{"name": "b", "group": "far", "folders": ["b"]}],
                "published": {"methods": {}},
            },
        )


def test_the_interval_of_a_mean_auroc_is_the_bootstrap_of_it():
    rng = np.random.default_rng(1)
    ind, a, b = rng.normal(1, 1, 60), rng.normal(0, 1, 40), rng.normal(0.5, 1, 30)
    got = mean_auroc_interval(ind, {"a": a, "b": b}, 200, seed=3)
    draw = np.random.default_rng(3)  # the same draws, AUROC by scikit-learn
    means = []
    for _ in range(200):
        rows = ind[draw.integers(0, 60, 60)]
        aucs = []
        for s in (a, b):
            o = s[draw.integers(0, s.size, s.size)]
            labels = np.r_[np.ones(rows.size), np.zeros(o.size)]
            aucs.append(roc_auc_score(labels, np.r_[rows, o]))
        means.append(np.mean(aucs))
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert got == pytest.approx((hi - lo) / 2, abs=1e-12)


class _Run:
    def __init__(self, scores, tuning=None):
        self.backbone, self.seed, self.scores, self.tuning = "net", -1, scores, tuning or {}


def _toy() -> Protocol:
    return Protocol.from_mapping(
        "toy_pub",
        {
            "family": "openood",
            "id": {"folders": ["toy"]},
            "ood": [
                {"name": "a", "group": "near", "folders": ["a"], "size": 100},
                {"name": "b", "group": "near", "folders": ["b"]},
                {"name": "c", "group": "far", "folders": ["c"]},
            ],
            "published": {
                "source": {"repository": "someone/results", "file": "t.csv", "commit": "abc"},
                "training": "CrossEntropy",
                "methods": {
                    "MSP": {"ours": "msp"},
                    "EBO": {"ours": "energy"},
                    "ASH": {"ours": "ash:variant=b,percentile=90", "settings": "ASH-B 90"},
                    "OpenMax": {"ours": None},
                    "KNN": {"ours": "knn"},
                },
                "networks": {
                    "Net": {
                        "note": "toy",
                        "ood": {
                            "MSP": {"near": "70.00 ± 1.00", "far": "80.00 ± 2.00", "id_accuracy": "90.00 ± 0.50"},
                            "EBO": {"near": "60.00 ± 1.00", "far": "80.00", "id_accuracy": "90.00"},
                            "ASH": {"near": "75.00", "far": "/", "id_accuracy": "90.00"},
                            "OpenMax": {"near": "65.00", "far": "70.00", "id_accuracy": "90.00"},
                            "KNN": {"near": "65.00", "far": "70.00", "id_accuracy": "90.00"},
                        },
                    }
                },
            },
        },
    )  # fmt: skip


def test_the_comparison_puts_the_published_numbers_beside_ours():
    rows = []
    ours = {
        "msp": (0.725, 0.79),
        "energy": (0.65, 0.80),
        "ash": (0.70, 0.8),
        "logit_kde": (0.5, 0.6),
    }
    for scorer, (near, far) in ours.items():
        for group, value in (("near", near), ("far", far)):
            rows.append(
                {"backbone": "net", "scorer": scorer, "ood": group, "group": "aggregate",
                 "auroc": value, "id_accuracy": 0.9, "n_seeds": 1, "auroc_std": 0.0}
            )  # fmt: skip
    summary = pd.DataFrame(rows)
    protocol = _toy()
    groups = {"near": ["a"], "far": ["c", "extra"]}
    out = compare_published(summary, [_Run({})], protocol, groups, {"a": 40, "c": 10, "extra": 5})
    table = pd.DataFrame(out["rows"])
    assert list(table.columns) == list(COLUMNS)
    got = table.set_index(["scorer", "group"])
    # the published columns are the protocol's data
    msp = protocol.results.networks["Net"]["ood"]["MSP"]
    assert got.loc[("msp", "near"), "published_auroc"] == msp["near"].mean == 70.0
    assert got.loc[("msp", "near"), "published_std"] == msp["near"].std == 1.0
    assert got.loc[("msp", "far"), "published_id_accuracy"] == 90.0
    # 72.5 - 70 = 2.5 > 1 + 0: flagged; 79 - 80 = -1 within 2: not flagged
    assert got.loc[("msp", "near"), "difference"] == pytest.approx(2.5)
    assert got.loc[("msp", "near"), "flag"] and not got.loc[("msp", "far"), "flag"]
    # a published mean without std (one run) is compared with 0 std
    assert got.loc[("energy", "far"), "difference"] == pytest.approx(0.0)
    assert math.isnan(got.loc[("energy", "far"), "published_std"])
    # a scorer with no published counterpart shows none
    assert math.isnan(got.loc[("logit_kde", "near"), "published_auroc"])
    assert (
        got.loc[("logit_kde", "near"), "published_method"] == ""
        and not got.loc[("logit_kde", "near"), "flag"]
    )
    # our ASH-S at 65 is not OpenOOD's ASH-B at 90: a variant, both settings named
    variant = got.loc[("ash", "near"), "variant"]
    assert variant.startswith("differs:") and "'s' here, 'b' published" in variant
    assert got.loc[("msp", "near"), "variant"] == "same"
    assert math.isnan(got.loc[("ash", "far"), "published_auroc"])  # "/" published
    # partial means: near misses b and a is a subset; far has a set the published lacks
    near = got.loc[("msp", "near"), "coverage"]
    assert got.loc[("msp", "near"), "partial"] and "1 of 2 sets (no b)" in near
    assert "subset: a 40 of 100" in near
    assert "not in the published mean: extra" in got.loc[("msp", "far"), "coverage"]
    assert out["without_oodlens_scorer"] == ["OpenMax"] and out["not_run"] == ["KNN"]
    assert "someone/results" in out["notes"][0]


@pytest.mark.slow
def test_compare_published_on_the_command_line(tmp_path, capsys):
    """A protocol with published numbers, run end to end: the printed table, published.csv
    and results.json carry the same rows."""
    root = tmp_path / "data"
    for split in ("train", "test"):
        source = oodlens.load_dataset(f"digits:0-2@{split}")
        for i in range(len(source)):
            folder = root / "toy" / split / source.classes[source.labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            source.loader(i).save(folder / f"{i}.png")
    rng = np.random.default_rng(0)
    for name in ("a", "c"):
        (root / name / "x").mkdir(parents=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                root / name / "x" / f"{i}.png"
            )
    ckpt = tmp_path / "m.safetensors"
    train_model(
        TrainConfig(data=str(root / "toy"), img_size=16, epochs=1, hflip=False),
        ckpt,
        progress=False,
    )

    mapping = {k: v for k, v in _toy().__dict__.items() if k in ("family", "img_size", "published")}
    mapping |= {
        "id": {"folders": ["toy"]},
        "ood": [
            {"name": "a", "group": "near", "folders": ["a"], "size": 100},
            {"name": "b", "group": "near", "folders": ["b"]},
            {"name": "c", "group": "far", "folders": ["c"]},
        ],
    }

    class Toy:
        @oodlens.hookimpl
        def register_protocols(self, register):
            register("toy_pub", mapping, "toy with published numbers")

    name = oodlens.register_plugin(Toy(), name="toy-pub")
    try:
        argv = [
            "bench", "--protocol", "toy_pub", "--data-root", root, "--checkpoint", ckpt,
            "--scorers", "msp", "energy", "--compare-published", "--ci", "20",
            "--cache-dir", tmp_path / "c", "--out", tmp_path / "r", "-q",
        ]  # fmt: skip
        rc = cli.main([str(a) for a in argv])
        out = capsys.readouterr().out
    finally:
        oodlens.unregister_plugin(name)
    assert rc == 0, out
    assert "Beside the published results (toy_pub, Net)" in out
    assert "| resnet18 | msp | MSP |" in out
    assert "70.00 ± 1.00" in out and "partial near: 1 of 2 sets (no b); subset: a 20 of 100" in out
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["config"]["convention"] == "openood"
    rows = results["info"]["published"]["rows"]
    csv = pd.read_csv(tmp_path / "r" / "published.csv", keep_default_na=False)
    assert list(csv.columns) == list(COLUMNS) and len(csv) == len(rows) == 4
    assert {r["scorer"] for r in rows} == {"msp", "energy"}
    first = rows[0]
    assert csv.iloc[0]["published_auroc"] == pytest.approx(first["published_auroc"])
    assert first["ours_interval"] > 0  # from the --ci resamples
