"""The real-data benchmark configs and driver. Tests that read ../shared/data skip with a
reason when it is absent (a fresh machine); the skip path itself is always tested."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import oodlens
from oodlens.bench import load_config

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("OODLENS_DATA_ROOT", ROOT.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(
    not (DATA_ROOT / "catsdogs").is_dir(),
    reason=f"real data not found at {DATA_ROOT} (set OODLENS_DATA_ROOT)",
)


def test_driver_skips_cleanly_without_data(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run_real.py"),
            "--data-root",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "bench-real: skipped: no data at" in r.stdout


def test_models_root_is_named_when_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("OODLENS_MODELS_ROOT", raising=False)
    (tmp_path / "data").mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text('checkpoints: ["{models_root}/m.safetensors"]\nid: "{data_root}"\n')
    with pytest.raises(FileNotFoundError, match="uses \\{models_root\\}: pass --models-root"):
        load_config(cfg, data_root=tmp_path / "data")


def test_configs_need_a_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("OODLENS_DATA_ROOT", raising=False)
    with pytest.raises(ValueError, match="pass --data-root DIR"):
        load_config(ROOT / "benchmarks" / "configs" / "cifar10.yaml")
    with pytest.raises(FileNotFoundError, match="Data root"):
        load_config(
            ROOT / "benchmarks" / "configs" / "cifar10.yaml", data_root=tmp_path / "missing"
        )


@pytest.mark.data
@needs_data
@pytest.mark.parametrize("name", ["catsdogs", "cifar10"])
def test_configs_resolve_to_existing_data(name):
    cfg = load_config(ROOT / "benchmarks" / "configs" / f"{name}.yaml", data_root=DATA_ROOT)
    for spec in [cfg.id, *(o.spec for o in cfg.ood)]:
        assert Path(spec).is_dir(), spec
        assert len(oodlens.load_dataset(spec)) > 0
    for ckpt in cfg.checkpoints:  # {models_root}: the models folder beside the data root
        assert Path(ckpt).is_file(), ckpt


@pytest.mark.data
@needs_data
def test_shared_data_splits_match_provenance():
    train = oodlens.load_dataset(str(DATA_ROOT / "catsdogs") + "@train")
    test = oodlens.load_dataset(str(DATA_ROOT / "catsdogs") + "@test")
    assert (len(train), len(test), train.classes) == (2000, 2000, ("cat", "dog"))
    c_train = oodlens.load_dataset(str(DATA_ROOT / "cifar10" / "test") + "@train")
    c_test = oodlens.load_dataset(str(DATA_ROOT / "cifar10" / "test") + "@test")
    assert (len(c_train), len(c_test)) == (8000, 2000)  # the deterministic split
    assert not set(c_train.ids) & set(c_test.ids)
    assert len(oodlens.load_dataset(str(DATA_ROOT / "internet" / "apples"))) == 30  # a flat folder
    assert train.loader(0).mode == "RGB"


@pytest.mark.data
@needs_data
def test_a_knn_detector_on_cifar10_rejects_about_alpha_of_unseen_id_images(tmp_path):
    """The conformal guarantee on real data, at test scale: KNN fitted on the 8,000-image
    @train split of CIFAR-10 test (the checkpoint never saw them either way), calibrated on
    the held-out calib split of its @test split; the ID images in neither val nor calib are
    rejected at about alpha, within the interval that includes the calibration set's own
    variation. The full-size run is benchmarks/detector_cifar10.py (numbers in docs)."""
    import math

    from oodlens.datasets import holdout_split

    ckpt = DATA_ROOT.parent / "models" / "cifar10_resnet18_64px.safetensors"
    if not ckpt.is_file():
        pytest.skip(f"the CIFAR-10 model is not at {ckpt}")
    spec = str(DATA_ROOT / "cifar10" / "test")
    cfg = oodlens.BenchmarkConfig(
        id=spec, ood=(), models=("resnet18",), checkpoints=(str(ckpt),), img_size=64,
        scorers=("knn",), alphas=(0.1,), cache_dir=str(tmp_path / "cache"),
        val_fraction=0.05, calib_fraction=0.25,
    )  # fmt: skip
    detector = oodlens.fit_detector(cfg, progress=False)
    rest = holdout_split(oodlens.load_dataset(spec + "@test"), 0.05, 0.25)[0]
    verdicts = detector.predict(rest)
    rate, n_calib = float(verdicts.rejected.mean()), len(detector.calib_scores)
    sd = math.sqrt(0.1 * 0.9 / n_calib + rate * (1 - rate) / len(verdicts))
    assert n_calib > 400 and len(verdicts) > 1000
    assert abs(rate - 0.1) <= 3 * sd, (rate, sd)
    svhn = detector.predict(oodlens.load_dataset(str(DATA_ROOT / "ood" / "svhn")))
    assert svhn.rejected.mean() > rate  # SVHN is rejected more often than ID (power)
