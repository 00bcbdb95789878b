"""Saved scorers and detectors ("Fit once, decide anywhere", issue 23): every registered
scorer saved from a benchmark run, loaded in a fresh process, gives the benchmark's scores
bit for bit and verdicts equal to p <= alpha; damaged files, wrong checkpoints and missing
plugins are one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import oodlens
from oodlens import cli
from oodlens.bench.result import SAMPLE_COLUMNS
from oodlens.cache import file_sha256
from oodlens.conformal import conformal_p_values
from oodlens.detector import Detector, image_source
from oodlens.saving import load_scorer, save_scorer, scorer_state
from oodlens.statefile import read_state
from oodlens.testing import synthetic_outputs
from oodlens.train import TrainConfig, train_model

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, err
    return rc, out, err


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """digits 0-2 as an ImageFolder of PNG files, with its own train/ and test/."""
    root = tmp_path_factory.mktemp("digits") / "data"
    for split in ("train", "test"):
        source = oodlens.load_dataset(f"digits:0-2@{split}")
        for i in range(len(source)):
            folder = root / split / source.classes[source.labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            source.loader(i).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(digits, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "net.safetensors"
    cfg = TrainConfig(data=str(digits), img_size=16, epochs=2, batch_size=64, hflip=False)
    train_model(cfg, path, progress=False)
    return path


@pytest.fixture(scope="module")
def saved_run(digits, checkpoint, tmp_path_factory) -> Path:
    """A benchmark of every registered scorer (output-based and model-aware) that saves a
    detector for each."""
    folder = tmp_path_factory.mktemp("run")
    argv = [
        "bench", "--model", "resnet18", "--checkpoint", checkpoint, "--id", digits,
        "--img-size", "16", "--ood", "far:noise=noise:gaussian,n=40,size=16", "--scorers",
        "all+model", "logit_kde:mode=class_conditional", "--alpha", "0.1", "--cache-dir",
        folder / "cache", "--out", folder / "report", "--save-detectors", folder / "detectors",
        "-q",
    ]  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 0
    return folder


_FRESH = """
import json, sys
from pathlib import Path
import pandas as pd
from oodlens.detector import Detector
scores = pd.read_csv(sys.argv[1], keep_default_na=False)
files = [str(p) for p in scores[scores.set == "id"].id]
out = {}
for path in sorted(Path(sys.argv[2]).glob("*.oodlens")):
    det = Detector.load(path)
    v = det.predict(files)
    out[det.spec] = {"ids": v.ids, "scores": v.scores.tolist(), "p": v.p_values.tolist(),
                     "rejected": v.rejected.tolist(), "calib": det.calib_scores.tolist(),
                     "alpha": det.alpha}
Path(sys.argv[3]).write_text(json.dumps(out))
"""


def test_every_scorer_s_detector_gives_the_benchmark_s_scores_in_a_fresh_process(saved_run):
    report, detectors = saved_run / "report", saved_run / "detectors"
    scores = pd.read_csv(report / "scores.csv.gz", keep_default_na=False)
    id_rows = scores[scores.set == "id"]
    specs = [c for c in scores.columns if c not in SAMPLE_COLUMNS]
    # every scorer that applies to a resnet18 at 16 px (the others are listed, with why)
    skipped = json.loads((report / "results.json").read_text())["info"]["not_applicable"]
    assert {"mcd", "mcm", "rankfeat"} <= set(skipped)
    expected = len(oodlens.list_scorers()) + 1 - len(skipped)
    assert len(list(detectors.glob("*.oodlens"))) == len(specs) == expected
    result = saved_run / "fresh.json"
    run = subprocess.run(
        [sys.executable, "-c", _FRESH, str(report / "scores.csv.gz"), str(detectors), result],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    fresh = json.loads(result.read_text())
    assert sorted(fresh) == sorted(specs)
    for spec, got in fresh.items():
        assert got["ids"] == list(id_rows.id)
        np.testing.assert_array_equal(got["scores"], id_rows[spec].to_numpy(), err_msg=spec)
        p = conformal_p_values(np.array(got["calib"]), np.array(got["scores"]))
        np.testing.assert_array_equal(got["p"], p)
        assert got["rejected"] == (p <= got["alpha"]).tolist() and got["alpha"] == 0.1


def test_the_detector_s_calibration_is_the_benchmark_s_calib_split(saved_run):
    payload = json.loads((saved_run / "report" / "results.json").read_text())
    det = Detector.load(saved_run / "detectors" / "resnet18-msp.oodlens")
    assert len(det.calib_scores) == payload["info"]["splits"]["id_calib"]
    assert det.provenance["splits"] == payload["info"]["splits"]
    # the run's own threshold accepts 95% of the same calib scores
    threshold = payload["thresholds"]["resnet18/seed-1"]["msp"]
    assert threshold == pytest.approx(np.sort(det.calib_scores)[int(0.05 * len(det.calib_scores))])


def test_fit_then_detect_on_the_command_line(tmp_path, capsys, digits, checkpoint):
    out = tmp_path / "knn.oodlens"
    argv = ["fit", "--model", "resnet18", "--checkpoint", checkpoint, "--id", digits,
            "--img-size", "16", "--scorer", "knn:k=5", "--alpha", "0.2", "--out", out,
            "--cache-dir", tmp_path / "c", "-q"]  # fmt: skip
    rc, stdout, _ = run_cli(capsys, *argv)
    assert rc == 0 and f"saved {out}: knn:k=5 on resnet18" in stdout
    verdicts = tmp_path / "v.csv"
    rc, stdout, _ = run_cli(capsys, "detect", out, digits / "test", "--out", verdicts, "-q")
    frame = pd.read_csv(verdicts)
    n = len(list((digits / "test").rglob("*.png")))
    assert rc == 0 and len(frame) == n
    assert f"{n} images, {int(frame.rejected.sum())} rejected" in stdout
    det = Detector.load(out)
    p = conformal_p_values(det.calib_scores, frame.score.to_numpy())
    np.testing.assert_allclose(frame.p_value, p)
    assert (frame.rejected == (p <= 0.2)).all()
    rc, stdout, err = run_cli(capsys, "detect", out, digits / "test" / "0", "--jsonl", "-q")
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert rc == 0 and {"id", "score", "p_value", "rejected"} <= set(lines[0])
    assert " images, " in err  # the summary goes to stderr beside --jsonl
    again = tmp_path / "again.oodlens"
    rc, _, _ = run_cli(capsys, *argv[:-5], "--out", again, "--cache-dir", tmp_path / "c", "-q")
    assert (
        rc == 0
        and read_state(again, "detector")["provenance"]["data"]
        == (read_state(out, "detector")["provenance"]["data"])
    )


def test_predict_takes_images_paths_folders_and_tensors(saved_run, digits):
    det = Detector.load(saved_run / "detectors" / "resnet18-knn.oodlens")
    files = sorted((digits / "test" / "1").glob("*.png"))[:4]
    by_path = det.predict([str(f) for f in files])
    images = [Image.open(f).convert("RGB") for f in files]
    by_image = det.predict(images)
    np.testing.assert_array_equal(by_image.scores, by_path.scores)
    pixels = torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1) for i in images])
    np.testing.assert_array_equal(det.predict(pixels).scores, by_path.scores)
    np.testing.assert_array_equal(det.predict(pixels.float() / 255).scores, by_path.scores)
    assert len(det.predict(files[0])) == 1 and len(det.predict(digits / "test" / "1")) > 4
    frame = by_path.to_frame()
    assert list(frame.columns[:6]) == ["id", "prediction", "probability", "score", "p_value",
                                       "rejected"]  # fmt: skip
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        image_source(pixels.float())
    with pytest.raises(TypeError, match="predict takes a PIL image"):
        image_source(42)


def test_a_trained_here_network_is_embedded(tmp_path):
    det = oodlens.fit_detector(
        oodlens.BenchmarkConfig(
            id="digits:0-2", img_size=16, train={"epochs": 1, "hflip": False}, ood=(),
            scorers=("energy",), cache_dir=str(tmp_path / "c"), alphas=(0.1,),
        ),
        progress=False,
    )  # fmt: skip
    assert det.weights is not None and det.alpha == 0.1
    path = det.save(tmp_path / "energy.oodlens")
    for ckpt in (tmp_path / "c" / "checkpoints").glob("*"):
        ckpt.unlink()  # the cache may be gone: the detector carries its network
    loaded = Detector.load(path)
    images = [oodlens.load_dataset("digits:0-2@test").loader(i) for i in range(5)]
    np.testing.assert_array_equal(loaded.predict(images).scores, det.predict(images).scores)


# --- refusals ---------------------------------------------------------------------------------
def test_a_damaged_detector_file_is_refused(saved_run, tmp_path, capsys):
    path = tmp_path / "knn.oodlens"
    data = (saved_run / "detectors" / "resnet18-knn.oodlens").read_bytes()
    for damaged, expected in (
        (data[:-100], "truncated"),
        (data[:-40] + bytes(b ^ 0xFF for b in data[-40:-20]) + data[-20:], "checksum"),
        (data[:20] + b"X" + data[21:], "or its header was damaged"),
        (b"", "shorter than any safetensors header"),
    ):
        path.write_bytes(damaged)
        rc, _, err = run_cli(capsys, "detect", path, tmp_path, "-q")
        assert rc == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_another_checkpoint_is_refused_unless_forced(
    saved_run, checkpoint, digits, tmp_path, capsys
):
    other = tmp_path / "other.safetensors"
    cfg = TrainConfig(data=str(digits), img_size=16, epochs=1, batch_size=64, hflip=False, seed=3)
    train_model(cfg, other, progress=False)
    det = saved_run / "detectors" / "resnet18-msp.oodlens"
    images = digits / "test" / "2"
    rc, _, err = run_cli(capsys, "detect", det, images, "--checkpoint", other, "-q")
    expected = file_sha256(checkpoint)
    assert rc == 2 and expected in err and file_sha256(other) in err
    assert "--force" in err
    out = tmp_path / "v.csv"
    rc, stdout, _ = run_cli(capsys, "detect", det, images, "--checkpoint", other, "--force",
                            "--out", out, "-q")  # fmt: skip
    frame = pd.read_csv(out)
    assert rc == 0 and frame.forced.all() and "checkpoint forced" in stdout
    assert set(frame.weights_sha256) == {file_sha256(other)}
    moved = tmp_path / "moved.safetensors"
    moved.write_bytes(Path(checkpoint).read_bytes())
    assert Detector.load(det, checkpoint=moved).predict(images).scores.size > 0


class _Plain(oodlens.Scorer):
    name = "plain_test"

    def _score(self, outputs):
        return outputs.logits.max(axis=1)


class _Plugin:
    @oodlens.hookimpl
    def register_scorers(self, register):
        register(_Plain)


def test_a_scorer_whose_distribution_is_not_installed_is_named(tmp_path):
    name = oodlens.register_plugin(_Plugin(), name="plain", distribution="oodlens-plain")
    try:
        scorer = oodlens.create_scorer("plain_test").fit(synthetic_outputs(50, seed=0))
        path = save_scorer(scorer, tmp_path / "plain.oodlens")
        assert load_scorer(path).name == "plain_test"
    finally:
        oodlens.unregister_plugin(name)
    with pytest.raises(
        oodlens.UnknownNameError, match="not installed here: pip install oodlens-plain"
    ):
        load_scorer(path)


def test_a_newer_format_and_unknown_keys_are_refused(tmp_path):
    from oodlens.statefile import write_state

    knn = oodlens.create_scorer("knn", k=3).fit(synthetic_outputs(60, seed=0))
    state = scorer_state(knn)
    path = write_state(tmp_path / "extra.oodlens", "scorer", {**state, "surprise": 1})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['surprise'\]"):
        load_scorer(path)
    with pytest.raises(ValueError, match="is an oodlens 'scorer' file, not a detector file"):
        Detector.load(save_scorer(knn, tmp_path / "knn.oodlens"))
    import oodlens.statefile as statefile

    newer = statefile.FORMAT_VERSION + 1
    original = statefile.FORMAT_VERSION
    statefile.FORMAT_VERSION = newer
    try:
        path = save_scorer(knn, tmp_path / "new.oodlens")
    finally:
        statefile.FORMAT_VERSION = original
    with pytest.raises(ValueError, match=f"version {newer}; this oodlens reads up to"):
        load_scorer(path)


class _Opaque(oodlens.Scorer):
    name = "opaque_test"
    saveable = False

    def _score(self, outputs):
        return outputs.logits.max(axis=1)


class _OpaquePlugin:
    @oodlens.hookimpl
    def register_scorers(self, register):
        register(_Opaque)


def test_a_scorer_that_cannot_be_saved_says_so(tmp_path, capsys, digits, checkpoint):
    scorer = _Opaque().fit(synthetic_outputs(30, seed=0))
    with pytest.raises(TypeError, match="'opaque_test'.*cannot be saved"):
        save_scorer(scorer, tmp_path / "x.oodlens")
    name = oodlens.register_plugin(_OpaquePlugin(), name="opaque")
    try:
        argv = ["bench", "--model", "resnet18", "--checkpoint", checkpoint, "--id", digits,
                "--img-size", "16", "--ood", "far:noise=noise:gaussian,n=20,size=16",
                "--scorers", "msp", "opaque_test", "--cache-dir", tmp_path / "c",
                "--save-detectors", tmp_path / "d", "-q"]  # fmt: skip
        rc, out, _ = run_cli(capsys, *argv)
        assert rc == 0 and "no detector saved for opaque_test" in out
        assert "saved 1 detector in" in out
        assert [p.name for p in (tmp_path / "d").iterdir()] == ["resnet18-msp.oodlens"]
        argv = ["fit", "--model", "resnet18", "--checkpoint", checkpoint, "--id", digits,
                "--img-size", "16", "--scorer", "opaque_test", "--out", tmp_path / "o.oodlens",
                "--cache-dir", tmp_path / "c", "-q"]  # fmt: skip
        rc, _, err = run_cli(capsys, *argv)
        assert rc == 2 and "'opaque_test'" in err and "cannot be saved" in err
    finally:
        oodlens.unregister_plugin(name)


def test_half_precision_state_is_smaller_and_memory_mapped(tmp_path, monkeypatch):
    import oodlens.statefile as statefile

    rng = np.random.default_rng(0)
    f = rng.normal(size=(3000, 64)).astype(np.float32)
    train = oodlens.Outputs(logits=f[:, :3], labels=rng.integers(0, 3, 3000), features=f)
    knn = oodlens.create_scorer("knn", k=5).fit(train)
    full = save_scorer(knn, tmp_path / "full.oodlens")
    half = save_scorer(knn, tmp_path / "half.oodlens", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    test = oodlens.Outputs(logits=f[:50, :3], features=f[:50] + 0.1)
    monkeypatch.setattr(statefile, "MMAP_BYTES", 1)  # map every array, as a large bank is
    loaded = load_scorer(half)
    assert loaded.bank_.features.dtype == np.float16
    assert isinstance(loaded.bank_.features, np.memmap)
    np.testing.assert_allclose(loaded.score(test), knn.score(test), atol=2e-3)


def test_another_preprocessing_is_refused(saved_run, monkeypatch):
    import oodlens.detector as detector_module

    real = detector_module.build_transform

    def other_timm(model, img_size):
        transform, cfg = real(model, img_size)
        return transform, {**cfg, "mean": (0.5, 0.5, 0.5)}

    monkeypatch.setattr(detector_module, "build_transform", other_timm)
    with pytest.raises(ValueError, match="was fitted with the preprocessing"):
        Detector.load(saved_run / "detectors" / "resnet18-msp.oodlens")
