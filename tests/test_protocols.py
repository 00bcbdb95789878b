"""Protocol presets (OpenOOD v1.5's benchmarks as data), their resolution under a data root,
missing sets, exact-duplicate detection and the OpenOOD-layout table (issue 11)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import oodlens
from oodlens import cli
from oodlens.bench import BenchmarkConfig
from oodlens.bench.config import resolve_protocol
from oodlens.bench.report import openood_table
from oodlens.registry import get_protocol, list_protocols
from oodlens.train import TrainConfig, train_model

pytestmark = pytest.mark.slow


def _images(folder, classes, n, seed, size=16):
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        d = folder / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = np.zeros((size, size, 3)) + (k * 23) % 255
            img = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{c}_{i}.png")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A small stand-in for ../shared/data's layout: cifar10/{train,test}, ood/{cifar100,
    mnist,svhn,textures}; no TinyImageNet, no Places365."""
    root = tmp_path_factory.mktemp("data")
    classes = [f"c{k}" for k in range(10)]
    _images(root / "cifar10" / "train", classes, 6, 0)
    _images(root / "cifar10" / "test", classes, 5, 1)
    for i, name in enumerate(("cifar100", "mnist", "svhn", "textures")):
        _images(root / "ood" / name, ["x", "y"], 6, 10 + i)
    # one exact duplicate of an ID test image inside the SVHN stand-in
    shutil.copy(
        root / "cifar10" / "test" / "c3" / "c3_0.png", root / "ood" / "svhn" / "x" / "dup.png"
    )
    return root


def test_the_openood_protocols_are_registered():
    assert {"cifar10", "cifar100", "imagenet200", "imagenet1k"} <= set(list_protocols())
    cifar = get_protocol("cifar10")
    groups = {s.name: s.group for s in cifar.ood}
    assert groups == {
        "cifar100": "near",
        "tin": "near",
        "mnist": "far",
        "svhn": "far",
        "texture": "far",
        "places365": "far",
    }
    with pytest.raises(oodlens.UnknownNameError, match="Unknown protocol 'cifar1'.*cifar10"):
        get_protocol("cifar1")


def test_sets_resolve_under_the_data_root_and_missing_ones_are_listed(data_root):
    res = resolve_protocol("cifar10", data_root)
    assert res["id"] == str((data_root / "cifar10").resolve())
    assert [(o.name, o.group) for o in res["ood"]] == [
        ("cifar100", "near"),
        ("mnist", "far"),
        ("svhn", "far"),
        ("texture", "far"),
    ]
    missing = {m["name"]: m for m in res["missing_sets"]}
    assert set(missing) == {"tin", "places365"}
    assert missing["tin"]["put_it_at"][0] == str(data_root / "tin" / "test")
    with pytest.raises(FileNotFoundError, match=r"--strict\): missing set\(s\): tin \(near\)"):
        resolve_protocol("cifar10", data_root, strict=True)
    with pytest.raises(FileNotFoundError, match="its ID set was not found"):
        resolve_protocol("imagenet1k", data_root)
    # a user maps a stand-in explicitly: it replaces the missing set
    cfg = BenchmarkConfig.from_protocol(
        "cifar10",
        data_root,
        ood=(oodlens.OODSet("places365", str(data_root / "ood" / "textures"), "far"),),
    )
    assert "places365" in [o.name for o in cfg.ood]
    assert [m["name"] for m in cfg.missing_sets] == ["tin"]


def test_openood_table_layout():
    rows = []
    for scorer, base in (("a", 0.9), ("b", 0.8)):
        for ood, group, v in (
            ("n1", "near", base),
            ("f1", "far", base - 0.1),
            ("f2", "far", base - 0.3),
        ):
            rows.append(
                {"backbone": "m", "scorer": scorer, "ood": ood, "group": group, "n_seeds": 1,
                 "auroc": v, "auroc_std": 0.0, "fpr95": 1 - v, "fpr95_std": 0.0,
                 "id_accuracy": 0.95, "id_accuracy_std": 0.0}
            )  # fmt: skip
        for label, members in (("near", [base]), ("far", [base - 0.1, base - 0.3])):
            m = float(np.mean(members))
            rows.append(
                {"backbone": "m", "scorer": scorer, "ood": label, "group": "aggregate",
                 "n_seeds": 1, "auroc": m, "auroc_std": 0.0, "fpr95": 1 - m, "fpr95_std": 0.0,
                 "id_accuracy": 0.95, "id_accuracy_std": 0.0}
            )  # fmt: skip
    t = openood_table(pd.DataFrame(rows), bold="{}")
    assert list(t.columns) == [
        "backbone",
        "scorer",
        "near AUROC (1 set)",
        "near FPR@95 (1 set)",
        "far AUROC (2 sets)",
        "far FPR@95 (2 sets)",
        "ID acc.",
    ]
    assert t.loc[0, "far AUROC (2 sets)"] == "70.00" and t.loc[1, "near AUROC (1 set)"] == "80.00"
    full = openood_table(pd.DataFrame(rows), full=True, bold="{}")
    assert list(full.columns)[2:6] == ["n1 AUROC", "n1 FPR@95", "f1 AUROC", "f1 FPR@95"]


def test_protocol_run_end_to_end(data_root, tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    train_model(
        TrainConfig(data=str(data_root / "cifar10"), img_size=16, epochs=1, batch_size=32),
        ckpt,
        progress=False,
    )
    out = tmp_path / "rep"
    argv = [
        "bench", "--protocol", "cifar10", "--data-root", data_root, "--model", "resnet18",
        "--checkpoint", ckpt, "--img-size", "16", "--convention", "openood", "--format",
        "openood,md,json", "--scorers", "msp", "energy", "--calib-fraction", "0.2",
        "--val-fraction", "0", "--cache-dir", tmp_path / "cache", "--out", out, "-q",
    ]  # fmt: skip
    rc = cli.main([str(a) for a in argv])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert "set 'tin' not found; skipped" in stdout and "set 'places365' not found" in stdout
    assert "OpenOOD v1.5 convention" in stdout
    assert (
        "| backbone | scorer | near AUROC (1 set) | near FPR@95 (1 set) | far AUROC (3 sets)"
        in stdout
    )
    assert "1 image(s) of 'svhn' are exact duplicates of images in 'id_test'" in stdout
    payload = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in payload["config"]["missing_sets"]] == ["tin", "places365"]
    assert (
        payload["config"]["convention"] == "openood" and payload["config"]["protocol"] == "cifar10"
    )
    assert payload["info"]["duplicates"]["id_test|svhn"] == 1
    assert payload["info"]["duplicates"]["id_train|svhn"] == 0
    assert {"openood.md", "openood.csv", "openood.tex", "results.md"} <= {
        p.name for p in out.iterdir()
    }
    assert "fpr95_ood_recall" not in payload["table"][0]  # the openood convention's 4 columns
    # the table's AUROC is the OpenOOD-convention AUROC of the kept scores
    full = pd.read_csv(out / "openood.csv")
    row = full[full.scorer == "msp"].iloc[0]
    assert float(row["near AUROC (1 set)"]) == pytest.approx(float(row["cifar100 AUROC"]))
