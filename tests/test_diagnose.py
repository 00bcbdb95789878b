"""Attention-area analysis in the harness and the `oodlens explain` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import oodlens

pytestmark = pytest.mark.slow
EXE = Path(sys.executable).with_name("oodlens")


@pytest.fixture(scope="module")
def attention_result(cache_dir, digits_train, digits_result):
    return oodlens.run_benchmark(
        cache_dir=str(cache_dir),
        train=digits_train,
        scorers=("msp", "logit_kde"),
        progress=False,
        attention=True,
        attention_layer="layer2",
        attention_samples=40,
    )


def test_attention_groups_follow_the_operating_threshold(attention_result):
    att = attention_result.attention
    assert list(att.group) == [
        "id_correct",
        "id_wrong_accepted",
        "id_wrong_rejected",
        "ood:digits5-9",
        "ood:noise",
    ]
    run = attention_result.runs[0]
    s = run.scores["logit_kde"]["id"]
    # the operating threshold accepts 95% of the held-out calib split (not of ID test)
    calib = (
        oodlens.create_scorer("logit_kde")
        .fit(run.outputs["id_train"])
        .score(run.outputs["id_calib"])
    )
    t = np.sort(calib)[::-1][int(np.ceil(0.95 * calib.size)) - 1]
    assert run.thresholds["logit_kde"] == t
    wrong = ~run.id_correct
    n = dict(zip(att.group, att.n, strict=True))
    assert n["id_wrong_accepted"] == int((wrong & (s >= t)).sum())
    assert n["id_wrong_rejected"] == int((wrong & (s < t)).sum())
    assert n["id_correct"] == 40 and n["ood:noise"] == 40
    # logit-KDE's score is differentiable: the areas of its score maps are measured too
    for m in ("area", "mass", "score_area", "score_mass"):
        ok = att[f"{m}_median"].notna()
        assert att.loc[ok, f"{m}_median"].between(0, 1).all()
        assert (att.loc[ok, f"{m}_q25"] <= att.loc[ok, f"{m}_median"]).all()
        assert (att.loc[ok, f"{m}_median"] <= att.loc[ok, f"{m}_q75"]).all()
    mw = attention_result.attention_tests["resnet18/seed0"]
    assert mw["scorer"] == "logit_kde" and mw["threshold"] == pytest.approx(t)


def test_attention_report_files(attention_result, tmp_path):
    out = attention_result.save(tmp_path / "r")
    assert (out / "attention.csv").exists()
    payload = json.loads((out / "results.json").read_text())
    assert [row["group"] for row in payload["attention"]][0] == "id_correct"
    if attention_result.confident_errors:
        assert "confident_errors.png" in payload["figures"]
        assert (out / "confident_errors.png").read_bytes()[:4] == b"\x89PNG"


def test_explain_cli_writes_grid(cache_dir, digits_result, tmp_path):
    ckpt = next((cache_dir / "checkpoints").glob("resnet18-*.safetensors"))
    source = oodlens.load_dataset("digits:5-9")
    paths = []
    for i in range(3):
        p = tmp_path / f"digit{i}.png"
        source.loader(i).save(p)
        paths.append(str(p))
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "black.png")
    out = tmp_path / "grid.png"
    r = subprocess.run(
        [
            str(EXE),
            "explain",
            *paths,
            str(tmp_path / "black.png"),
            "--model",
            "resnet18",
            "--checkpoint",
            str(ckpt),
            "--cache-dir",
            str(cache_dir),
            "--layer",
            "layer2",
            "--out",
            str(out),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if "p=" in line]
    assert len(lines) == 4 and all(
        "msp=" in line and "logit_kde=" in line and "area@0.5=" in line for line in lines
    )
    assert out.read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run(
        [
            str(EXE),
            "explain",
            str(tmp_path / "nope.png"),
            "--model",
            "resnet18",
            "--checkpoint",
            str(ckpt),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_attention_right_after_extraction(cache_dir, digits_result, tmp_path):
    """The network built for extraction (a cache miss) must still give Grad-CAM gradients."""
    ckpt = next((cache_dir / "checkpoints").glob("resnet18-*.safetensors"))
    res = oodlens.run_benchmark(
        checkpoints=(str(ckpt),),
        cache_dir=str(tmp_path),
        scorers=("msp",),
        progress=False,
        attention=True,
        attention_layer="layer2",
        attention_samples=10,
    )
    assert res.info["cache_misses"] == 6
    assert res.attention.set_index("group").loc["ood:noise", "n"] == 10
