"""Catalogue of bad inputs found when the harness was tried as a new user would (issue 10).

One test per reliability item; each asserts that the message names the problem, and the
CLI's ``main()`` is called in-process and must end in a one-line error, never a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import oodlens
from oodlens import cli
from oodlens.bench import run_benchmark
from oodlens.datasets import holdout_split
from oodlens.registry import reload_plugins
from oodlens.testing import synthetic_outputs
from oodlens.train import TrainConfig, train_model

pytestmark = pytest.mark.slow

NOISE = "far:noise=noise:gaussian,n=20,size=16"
COLOURS = {"a": (220, 30, 30), "b": (30, 220, 30), "c": (30, 30, 220), "d": (220, 220, 30)}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, err
    return rc, out, err


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """resnet18 on digits 0-2 at 16 px, one epoch: a real oodlens checkpoint, in seconds."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    cfg = TrainConfig(data="digits:0-2", img_size=16, epochs=1, batch_size=128, hflip=False)
    train_model(cfg, path, progress=False)
    return path


def bench_args(ckpt: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "bench",
        "--model",
        "resnet18",
        "--checkpoint",
        str(ckpt),
        "--id",
        "digits:0-2",
        "--img-size",
        "16",
        "--ood",
        NOISE,
        "--scorers",
        "msp",
        "--cache-dir",
        str(cache),
        "-q",
        *extra,
    ]


def colour_folder(root: Path, train: tuple[str, ...], test: tuple[str, ...], n: int = 8) -> Path:
    """ImageFolder with its own train/ and test/: solid colours with a little noise."""
    rng = np.random.default_rng(0)
    for split, classes in (("train", train), ("test", test)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(np.array(COLOURS[c]) + rng.normal(0, 8, (16, 16, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(d / f"{c}{i}.png")
    return root


COLOUR_TRAIN = {"epochs": 4, "batch_size": 8, "hflip": False}


# 1 ------------------------------------------------------------------------------------------
def test_1_test_classes_are_matched_by_name(tmp_path, capsys):
    """train/{a,b,c} with test/{a,c}: test class c is label 2 (not 1) in train and bench."""
    data = colour_folder(tmp_path / "data", ("a", "b", "c"), ("a", "c"))
    ckpt = tmp_path / "m.safetensors"
    cfg = TrainConfig(data=str(data), img_size=16, seed=0, **COLOUR_TRAIN)
    _, summary = train_model(cfg, ckpt, progress=False)
    res = run_benchmark(
        id=str(data),
        checkpoints=(str(ckpt),),
        img_size=16,
        ood=(oodlens.OODSet("noise", "noise:gaussian,n=20,size=16"),),
        scorers=("msp",),
        cache_dir=str(tmp_path / "cache"),
        val_fraction=0.0,
        calib_fraction=0.3,
        progress=False,
    )
    test, calib = res.runs[0].outputs["id_test"], res.runs[0].outputs["id_calib"]
    labels = np.concatenate([test.labels, calib.labels])
    np.testing.assert_array_equal(np.sort(labels), [0] * 8 + [2] * 8)
    # oodlens train evaluates with the same by-name labels as the harness (all 16 test rows)
    correct = np.concatenate([test.correct(), calib.correct()])
    assert summary["test_accuracy"] == pytest.approx(correct.mean())
    # a test class the model does not know is an error naming it
    colour_folder(data, (), ("d",))
    rc, _, err = run_cli(
        capsys,
        "train",
        "--data",
        data,
        "--img-size",
        16,
        "--epochs",
        1,
        "--out",
        tmp_path / "x.safetensors",
    )
    assert rc == 2 and "['d']" in err and "are not among the reference classes" in err


# 2 ------------------------------------------------------------------------------------------
def test_2_trained_checkpoint_cache_follows_the_data(tmp_path):
    data = colour_folder(tmp_path / "data", ("a", "b"), ("a", "b"), n=6)
    kw = {
        "id": str(data),
        "img_size": 16,
        "train": COLOUR_TRAIN,
        "ood": (oodlens.OODSet("noise", "noise:gaussian,n=20,size=16"),),
        "scorers": ("msp",),
        "cache_dir": str(tmp_path / "cache"),
        "val_fraction": 0.0,
        "calib_fraction": 0.4,
        "progress": False,
    }
    first = run_benchmark(**kw).info["train"]["resnet18/seed0"]
    assert "cached" not in first
    assert run_benchmark(**kw).info["train"]["resnet18/seed0"]["cached"] is True
    # changed training images: a new model is trained, not the old one silently reused
    trained_on = holdout_split(oodlens.load_dataset(f"{data}@train"), 0.0, 0.4)[0]
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(trained_on.ids[0])
    assert "cached" not in run_benchmark(**kw).info["train"]["resnet18/seed0"]
    # a new class: trained again with three classes (no talk of a cache checkpoint)
    colour_folder(data, ("c",), ("c",), n=6)
    res = run_benchmark(**kw)
    assert "cached" not in res.info["train"]["resnet18/seed0"]
    assert res.runs[0].outputs["id_test"].n_classes == 3


# 3 ------------------------------------------------------------------------------------------
def test_3_train_never_overwrites_foreign_files_and_any_suffix_loads(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    rc, _, err = run_cli(
        capsys, "train", "--data", "digits:0-2", "--img-size", 16, "--epochs", 1, "--out", notes
    )
    assert rc == 2 and "was not written by oodlens" in err
    assert notes.read_text() == "my notes"
    pt = tmp_path / "model.pt"
    rc, out, _ = run_cli(
        capsys, "train", "--data", "digits:0-2", "--img-size", 16, "--epochs", 1, "--out", pt, "-q"
    )
    assert rc == 0 and f"saved {pt}" in out
    rc, out, _ = run_cli(capsys, *bench_args(pt, tmp_path / "cache"))
    assert rc == 0 and "| msp |" in out.replace("resnet18 ", "")
    # an oodlens checkpoint may be overwritten (retraining to the same file)
    rc, _, _ = run_cli(
        capsys, "train", "--data", "digits:0-2", "--img-size", 16, "--epochs", 1, "--out", pt, "-q"
    )
    assert rc == 0


# 4 ------------------------------------------------------------------------------------------
def test_4_output_paths_are_checked_before_any_work(tmp_path, capsys, tiny_ckpt, monkeypatch):
    import oodlens.bench.run as run_mod

    def no_work(*a, **k):
        raise AssertionError("work started before the paths were checked")

    monkeypatch.setattr(run_mod, "_prepare", no_work)
    monkeypatch.setattr("oodlens.train.load_dataset", no_work)
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, _, err = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", afile))
    assert rc == 2 and f"--out '{afile}' is a file" in err
    rc, _, err = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", afile / "sub"))
    assert rc == 2 and f"'{afile}' is a file, not a folder" in err
    rc, _, err = run_cli(capsys, "train", "--out", tmp_path, "--epochs", 1)
    assert rc == 2 and "is a folder; give a file name inside it" in err
    # an unwritable cache folder is named before the run (root may write anywhere: simulate)
    monkeypatch.undo()
    monkeypatch.setattr(run_mod, "_plugins", no_work)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, m: False if Path(p) == locked else real_access(p, m)
    )
    rc, _, err = run_cli(capsys, *bench_args(tiny_ckpt, locked / "cache"))
    assert rc == 2 and f"Cache folder (--cache-dir) '{locked / 'cache'}' is not writable" in err


def test_4_write_failures_are_one_line_and_leave_no_temp_files(
    tmp_path, capsys, tiny_ckpt, monkeypatch
):
    import safetensors.torch

    from oodlens import backbones
    from oodlens.bench.result import BenchmarkResult

    model, cfg = backbones.create_backbone("resnet18", checkpoint=tiny_ckpt)

    def broken_save(state, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device", filename)

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    folder = tmp_path / "ckpts"
    with pytest.raises(OSError, match="No space left"):
        backbones.save_checkpoint(model, cfg, folder / "m.safetensors")
    assert list(folder.iterdir()) == []  # no partial file, no .tmp
    monkeypatch.undo()

    def broken_write(self, out, formats, plots):
        raise PermissionError(13, "Permission denied", str(out / "results.md"))

    monkeypatch.setattr(BenchmarkResult, "_write", broken_write)
    rc, _, err = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", tmp_path / "rep"))
    assert rc == 2 and "Permission denied" in err and "results.md" in err
    assert len(err.strip().splitlines()) == 1
    assert not any(p.name.startswith(".rep") for p in tmp_path.iterdir())


# 5 ------------------------------------------------------------------------------------------
class NaNScorer(oodlens.Scorer):
    name = "nan_scorer"
    description = "returns NaN (test)"

    def _score(self, outputs):
        s = outputs.logits.max(axis=1)
        s[::3] = np.nan
        return s


class NaNPlugin:
    @oodlens.hookimpl
    def register_scorers(self, register):
        register(NaNScorer)


def test_5_a_failing_scorer_is_named_and_the_others_are_kept(tmp_path, capsys, tiny_ckpt):
    name = oodlens.register_plugin(NaNPlugin(), name="nanplugin", distribution="dist-nan")
    try:
        out_dir = tmp_path / "rep"
        argv = bench_args(tiny_ckpt, tmp_path / "c", "--out", out_dir, "--no-plots")
        argv[argv.index("--scorers") + 1 : argv.index("--scorers") + 2] = ["msp", "nan_scorer"]
        rc, out, _ = run_cli(capsys, *argv)
    finally:
        oodlens.unregister_plugin(name)
    assert rc == 1
    assert "nan_scorer (distribution dist-nan" in out and "NaN or inf score" in out
    assert "| msp |" in out.replace("resnet18 ", "")
    data = json.loads((out_dir / "results.json").read_text())
    assert [(f["scorer"], f["distribution"], f["stage"]) for f in data["failures"]] == [
        ("nan_scorer", "dist-nan", "score")
    ]
    assert {r["scorer"] for r in data["table"]} == {"msp"}
    # installed plugin distributions and their versions are recorded
    dists = data["plugins"]["distributions"]
    assert dists["oodlens"] == oodlens.__version__ and "dist-nan" in dists


# 6 ------------------------------------------------------------------------------------------
def test_6_interrupted_rewrite_keeps_the_old_report_whole(tmp_path, capsys, tiny_ckpt, monkeypatch):
    import oodlens.bench.result as result_mod

    out_dir = tmp_path / "rep"
    rc, _, _ = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", out_dir))
    assert rc == 0
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(result_mod, "plot_risk_coverage", interrupt)
    argv = bench_args(tiny_ckpt, tmp_path / "c", "--out", out_dir)
    argv[argv.index("--scorers") + 1] = "energy"
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 130 and "interrupted" in err
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "rep"]  # no temp folders left
    # a folder holding other files is never replaced
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    rc, _, err = run_cli(capsys, *bench_args(tiny_ckpt, tmp_path / "c", "--out", other))
    assert rc == 2 and "not an oodlens report" in err and (other / "thesis.tex").exists()


# 7 ------------------------------------------------------------------------------------------
def test_7_no_cache_leaves_nothing_outside_out(tmp_path, capsys, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    cache = tmp_path / "cache"
    argv = [
        "bench", "--id", "digits:0-2", "--img-size", "16", "--epochs", "1", "--ood", NOISE,
        "--scorers", "msp", "--no-cache", "--cache-dir", cache, "--out", tmp_path / "rep",
        "--no-plots", "-q",
    ]  # fmt: skip
    rc, _, _ = run_cli(capsys, *argv)
    assert rc == 0
    assert list(scratch.iterdir()) == [] and not cache.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep", "tmp"]


# 8 ------------------------------------------------------------------------------------------
def test_8_wrong_model_names_with_a_checkpoint(tmp_path, capsys, tiny_ckpt):
    argv = bench_args(tiny_ckpt, tmp_path / "c")
    argv[argv.index("--model") + 1] = "resnet1800"
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2 and "Unknown timm model 'resnet1800'" in err
    argv[argv.index("--model") + 1] = "resnet34"
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2 and "trained as 'resnet18', not 'resnet34'; pass --model resnet18" in err


# 9 ------------------------------------------------------------------------------------------
def test_9_labels_beyond_the_classes_are_refused():
    out = oodlens.Outputs(logits=np.eye(3)[:, :2], labels=np.array([0, 1, 5]))
    with pytest.raises(ValueError, match="labels go up to 5 but the model has 2 classes"):
        out.correct()


def test_9_huge_unsigned_labels_do_not_wrap():
    with pytest.raises(ValueError, match="too large for int64"):
        oodlens.Outputs(logits=np.zeros((1, 2)), labels=np.array([2**63 + 1], dtype=np.uint64))


def test_9_integer_scores_beyond_2_53_are_exact():
    big = 2**60
    ind, ood = np.array([big, big + 2], np.int64), np.array([big + 1, big + 3], np.int64)
    m = oodlens.ood_metrics(ind, ood)
    # hand count: of the 4 (id, ood) pairs, id > ood only for (big+2, big+1)
    assert m["auroc"] == 0.25 and m["threshold95"] == float(big)
    assert oodlens.metrics.auroc(np.array([big]), np.array([big + 1])) == 0.0


@pytest.mark.parametrize("name", ["react", "mahalanobis", "knn", "vim"])
def test_9_features_of_another_dimension_are_refused(name):
    if name not in oodlens.list_scorers():
        pytest.skip("the oodlens-feature-scorers plugin is not installed")
    scorer = oodlens.create_scorer(name, **({"k": 5} if name == "knn" else {}))
    scorer.fit(synthetic_outputs(200, dim=16))
    other = synthetic_outputs(20, dim=12)
    with pytest.raises(ValueError, match="fitted on 16 features but these Outputs have 12"):
        scorer.score(other)


class Collide:
    @oodlens.hookimpl
    def register_scorers(self, register):
        register(type("MyMsp", (oodlens.Scorer,), {"name": "msp"}))
        register(NaNScorer)


def test_9_a_name_collision_drops_only_the_colliding_scorer():
    name = oodlens.register_plugin(Collide(), name="collide", distribution="dist-collide")
    try:
        with pytest.warns(oodlens.PluginLoadWarning, match="'msp' is already registered"):
            names = oodlens.list_scorers()
        assert "nan_scorer" in names
        plugins, failures = oodlens.plugin_report()
        assert [f.stage for f in failures] == ["register_scorers (msp)"]
    finally:
        oodlens.unregister_plugin(name)


def test_9_plugin_import_failures_are_one_line(capsys, monkeypatch):
    import oodlens.registry as reg

    class Dist:
        name = "broken-dist"

    class EP:
        name, dist = "broken", Dist()

        def load(self):
            exec("def f():\n    raise ImportError('no module named yolo')\nf()")

    real = reg.entry_points
    monkeypatch.setattr(reg, "entry_points", lambda group: [*real(group=group), EP()])
    reload_plugins()
    try:
        rc, out, err = run_cli(capsys, "scorers")
        assert rc == 0 and "msp" in out
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert (
            len(lines) == 1 and "'broken-dist:broken' from distribution 'broken-dist'" in lines[0]
        )
        reload_plugins()
        rc = cli.main(["--verbose", "scorers"])
        err = capsys.readouterr().err
        assert rc == 0 and "Traceback" in err and "no module named yolo" in err
    finally:
        monkeypatch.undo()
        reload_plugins()


def test_9_blank_ood_name(tmp_path, capsys, tiny_ckpt):
    argv = bench_args(tiny_ckpt, tmp_path / "c")
    argv[argv.index("--ood") + 1] = "near:=noise:gaussian"
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2 and "the name after 'near:' is empty" in err


def test_9_ood_set_identical_to_id_test_is_flagged(tmp_path, capsys, tiny_ckpt):
    argv = bench_args(tiny_ckpt, tmp_path / "c")
    argv[argv.index("--ood") + 1] = "near:same=digits:0-2@test"
    rc, out, _ = run_cli(capsys, *argv)
    assert rc == 0 and "OOD set 'same' shares" in out and "with id test" in out


def test_9_config_syntax_errors_name_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [resnet18\nscorers: msp\n")
    rc, _, err = run_cli(capsys, "bench", "--config", bad)
    assert rc == 2 and f"Config '{bad}' is not valid YAML at line" in err
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("seeds: [zero]\n")
    rc, _, err = run_cli(capsys, "bench", "--config", wrong)
    assert rc == 2 and "seeds=['zero'] is not valid" in err and "an int in [0, inf)" in err


def test_9_explain_reports_the_file_it_wrote(tmp_path, capsys, tiny_ckpt):
    img = tmp_path / "x.png"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(img)
    rc, out, _ = run_cli(
        capsys,
        "explain",
        img,
        "--model",
        "resnet18",
        "--checkpoint",
        tiny_ckpt,
        "--scorers",
        "--out",
        tmp_path / "img",
    )
    assert rc == 0 and f"wrote {tmp_path / 'img.png'}" in out and (tmp_path / "img.png").exists()
    rc, _, err = run_cli(
        capsys,
        "explain",
        img,
        "--model",
        "resnet18",
        "--checkpoint",
        tiny_ckpt,
        "--scorers",
        "--out",
        tmp_path / "notes.txt",
    )
    assert rc == 2 and "a figure needs one of the suffixes" in err


def test_9_an_empty_split_says_why(tmp_path):
    flat = tmp_path / "two"
    flat.mkdir()
    for i in range(2):
        Image.fromarray(np.full((5, 5, 3), i * 40, np.uint8)).save(flat / f"{i}.png")
    with pytest.raises(ValueError, match=r"@test' has no images: the 2 image\(s\) .* give 0 test"):
        oodlens.load_dataset(f"{flat}@test")


def test_parameters_are_checked_at_creation_before_any_work(tmp_path, capsys, monkeypatch):
    """Issue 10: scorer parameters fail at create_scorer / before training and extraction."""
    for name, params, match in (
        ("logit_kde", {"top_k": 0}, r"top_k=0 is not valid; it must be an int in \[1, inf\)"),
        (
            "logit_kde",
            {"bandwidth": "sott"},
            "bandwidth='sott' is not valid; it must be one of 'scott'",
        ),
        (
            "msp",
            {"temperature": -1},
            r"temperature=-1 is not valid; it must be a float in \(0, inf\)",
        ),
    ):
        with pytest.raises(oodlens.InvalidParameterError, match=match):
            oodlens.create_scorer(name, **params)
    monkeypatch.setattr("oodlens.train.load_dataset", lambda *a: pytest.fail("trained"))
    rc, _, err = run_cli(
        capsys, "bench", "--scorers", "logit_kde:top_k=0", "--cache-dir", tmp_path / "c"
    )
    assert rc == 2 and "top_k=0 is not valid" in err and not (tmp_path / "c").exists()


def test_requires_depends_on_the_parameters():
    assert oodlens.create_scorer("logit_kde").requirements() == {"logits"}
    cc = oodlens.create_scorer("logit_kde", mode="class_conditional")
    assert cc.requirements() == {"logits", "labels"}
    with pytest.raises(oodlens.MissingOutputsError, match="requires 'labels'"):
        cc.fit(oodlens.Outputs(logits=np.random.default_rng(0).normal(size=(50, 3))))


def test_old_module_paths_name_their_new_home():
    with pytest.raises(
        ModuleNotFoundError, match=r"oodlens.benchmark was moved: use oodlens.bench"
    ):
        import oodlens.benchmark  # noqa: F401
    with pytest.raises(ImportError, match="use oodlens.extract.extract_outputs"):
        from oodlens.backbones import extract_outputs  # noqa: F401
    with pytest.raises(ImportError, match="use oodlens.load_dataset"):
        from oodlens.datasets import load_dataset  # noqa: F401
    with pytest.raises(ImportError, match="use oodlens.plots.plot_explanations"):
        from oodlens.diagnose import plot_explanations  # noqa: F401
    with pytest.raises(ImportError, match="use oodlens.create_explainer"):
        from oodlens.explainers import create_explainer  # noqa: F401
