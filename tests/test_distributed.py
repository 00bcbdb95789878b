"""Sharded extraction under torchrun (two CPU ranks, gloo) gives the same cache entries and
the same results as one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from oodlens.distributed import all_gather, local_rank, rank_and_world
from oodlens.outputs import Outputs

BIN = Path(sys.executable).parent
ARGS = ["bench", "-q", "--id", "digits:0-4", "--ood", "far=digits:5-9", "--no-plots"]
ARGS += ["--scorers", "msp", "energy", "logit_kde", "--batch-size", "64"]


def _run(cmd, tmp_path):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_outside_torchrun_everything_is_rank_0_of_1():
    assert rank_and_world() == (0, 1)
    assert all_gather({"a": 1}) == [{"a": 1}]
    assert local_rank() is None


def test_local_rank_comes_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert local_rank() == 3
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert local_rank() is None


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path):
    one = [str(BIN / "oodlens"), *ARGS, "--epochs", "1", "--cache-dir", "c1", "--out", "r1"]
    assert _run(one, tmp_path).returncode == 0
    (ckpt,) = (tmp_path / "c1" / "checkpoints").glob("*.safetensors")
    # the same weights, re-extracted by one process and by two ranks
    single = [str(BIN / "oodlens"), *ARGS, "--checkpoint", str(ckpt)]
    assert _run([*single, "--cache-dir", "c2", "--out", "r2"], tmp_path).returncode == 0
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "oodlens"]
    r = _run([*torchrun, *single[1:], "--cache-dir", "c3", "--out", "r3"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("OOD detection, per set") == 1  # rank 0 alone reports

    entries = sorted(p.name for p in (tmp_path / "c2" / "outputs").iterdir())
    assert entries == sorted(p.name for p in (tmp_path / "c3" / "outputs").iterdir())
    assert len(entries) == 5  # train, val, calib, test, OOD
    for name in entries:
        a = Outputs.load_dir(tmp_path / "c2" / "outputs" / name)
        b = Outputs.load_dir(tmp_path / "c3" / "outputs" / name)
        meta = json.loads((tmp_path / "c3" / "outputs" / name / "meta.json").read_text())
        assert meta["n"] == len(a.labels)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
        np.testing.assert_allclose(a.features, b.features, atol=1e-5)
    a = pd.read_csv(tmp_path / "r2" / "results.csv")
    b = pd.read_csv(tmp_path / "r3" / "results.csv")
    num = a.select_dtypes("number").columns
    np.testing.assert_allclose(a[num].to_numpy(), b[num].to_numpy(), atol=1e-6)
    assert a.drop(columns=num).equals(b.drop(columns=num))


@pytest.mark.slow
def test_torchrun_on_a_folder_with_a_corrupt_image(tmp_path):
    rng = np.random.default_rng(0)
    for k, name in enumerate(("stripes", "blobs")):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(40):
            img = np.zeros((24, 24, 3), np.uint8)
            img[:, :: 3 + k] = rng.integers(100, 256, (24, 1, 3))
            Image.fromarray(img).save(tmp_path / "data" / name / f"{i}.png")
    args = ["bench", "-q", "--id", "data", "--ood", "far=noise:gaussian,n=30,size=24"]
    args += ["--scorers", "msp", "knn:k=5", "--batch-size", "4", "--skip-corrupt", "--no-plots"]
    one = [str(BIN / "oodlens"), *args, "--epochs", "1", "--cache-dir", "c1", "--out", "r1"]
    r = _run(one, tmp_path)  # trained on the readable images
    assert r.returncode == 0, r.stderr[-3000:]
    (ckpt,) = (tmp_path / "c1" / "checkpoints").glob("*.safetensors")
    (tmp_path / "data" / "blobs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    single = [str(BIN / "oodlens"), *args, "--checkpoint", str(ckpt)]
    assert _run([*single, "--cache-dir", "c2", "--out", "r2"], tmp_path).returncode == 0
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "oodlens"]
    r = _run([*torchrun, *single[1:], "--cache-dir", "c3", "--out", "r3"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    a = pd.read_csv(tmp_path / "r2" / "results.csv")
    b = pd.read_csv(tmp_path / "r3" / "results.csv")
    num = a.select_dtypes("number").columns
    np.testing.assert_allclose(a[num].to_numpy(), b[num].to_numpy(), atol=1e-6)
    corrupt = [
        json.loads((tmp_path / d / "results.json").read_text())["info"]["corrupt"]
        for d in ("r2", "r3")
    ]
    assert corrupt[0] == corrupt[1] and "broken.png" in json.dumps(corrupt[1])


@pytest.mark.slow
def test_torchrun_without_cache_is_a_clear_error(tmp_path):
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "oodlens"]
    r = _run([*torchrun, *ARGS, "--epochs", "1", "--no-cache"], tmp_path)
    assert r.returncode != 0
    assert "drop --no-cache" in r.stdout + r.stderr
