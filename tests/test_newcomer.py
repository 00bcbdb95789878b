"""A newcomer's first hour (issue 28): the checkpoint decides the defaults, progress reaches a
log file, results are always saved, files respect the umask, warnings come once."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import oodlens as oodlens_api
from oodlens import cli
from oodlens.bench import run_benchmark
from oodlens.train import TrainConfig, train_model

pytestmark = pytest.mark.slow

EXE = Path(sys.executable).with_name("oodlens")
NOISE = "far:noise=noise:gaussian,n=40,size=24"


def oodlens(*args, cwd: Path, env: dict | None = None, log: Path | None = None):
    """The command in a subprocess; with ``log``, stdout and stderr both go to that file."""
    run_env = {**os.environ, **(env or {})}
    run_env = {k: v for k, v in run_env.items() if v is not None}  # None: unset
    if log is None:
        return subprocess.run(
            [str(EXE), *map(str, args)], cwd=cwd, env=run_env, capture_output=True, text=True
        )
    with open(log, "w") as fh:
        return subprocess.run(
            [str(EXE), *map(str, args)], cwd=cwd, env=run_env, stdout=fh, stderr=subprocess.STDOUT
        )


@pytest.fixture(scope="module")
def ckpt40(tmp_path_factory) -> tuple[Path, dict]:
    """A resnet18 trained by ``oodlens train --img-size 40`` on digits 0-2, and its summary."""
    path = tmp_path_factory.mktemp("ckpt40") / "m40.safetensors"
    cfg = TrainConfig(data="digits:0-2", img_size=40, epochs=2, batch_size=64, hflip=False)
    _, summary = train_model(cfg, path, progress=False)
    return path, summary


def test_the_checkpoint_decides_the_input_size(ckpt40, tmp_path):
    path, summary = ckpt40
    out = tmp_path / "r"
    r = oodlens(
        "bench", "--model", "resnet18", "--checkpoint", path, "--id", "digits:0-2",
        "--ood", NOISE, "--scorers", "msp", "--cache-dir", tmp_path / "c", "--out", out, "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "from the checkpoint: img_size 40" in r.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["img_size"] == 40
    # the ID test split, with the val and calib rows held out of it, is the split train
    # evaluated: their accuracy, weighted by their sizes, is the one train reported
    acc = results["info"]["id_accuracy"]["resnet18/seed-1"]
    sizes = results["info"]["splits"]
    held = {k: v for k, v in acc.items() if k != "id_train"}
    overall = sum(held[k] * sizes[k] for k in held) / sum(sizes[k] for k in held)
    assert sum(sizes[k] for k in held) == summary["n_test"]
    assert abs(overall - summary["test_accuracy"]) <= 1 / summary["n_test"] + 1e-12


def test_a_size_that_contradicts_the_checkpoint_is_an_error_unless_overridden(
    ckpt40, tmp_path, capsys
):
    path, _ = ckpt40
    common = ["bench", "--checkpoint", path, "--ood", NOISE, "--scorers", "msp"]
    common += ["--cache-dir", tmp_path / "c", "-q"]
    rc = cli.main([str(a) for a in [*common, "--img-size", "32", "--out", tmp_path / "a"]])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--img-size asks for 32 px but checkpoint" in err and "trained at 40 px" in err
    assert "--override-checkpoint" in err
    argv = [*common, "--img-size", "32", "--override-checkpoint", "--out", tmp_path / "b"]
    assert cli.main([str(a) for a in argv]) == 0
    assert json.loads((tmp_path / "b" / "results.json").read_text())["config"]["img_size"] == 32


def test_model_and_id_come_from_the_checkpoint_and_their_absence_names_the_option(
    ckpt40, tmp_path, capsys
):
    path, _ = ckpt40
    argv = ["bench", "--checkpoint", path, "--ood", NOISE, "--scorers", "msp", "-q"]
    argv += ["--cache-dir", tmp_path / "c", "--out", tmp_path / "r"]
    assert cli.main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    assert "from the checkpoint: model resnet18, img_size 40, id digits:0-2" in out
    config = json.loads((tmp_path / "r" / "results.json").read_text())["config"]
    assert config["id"] == "digits:0-2" and config["models"] == ["resnet18"]
    # a plain state dict records neither: the errors name --model, then --id
    plain = tmp_path / "plain.pt"
    torch.save(load_file(path), plain)
    argv = ["bench", "--checkpoint", plain, "--ood", NOISE, "--scorers", "msp", "-q"]
    assert cli.main([str(a) for a in argv]) == 2
    assert "does not record its model" in capsys.readouterr().err
    assert cli.main([str(a) for a in [*argv, "--model", "resnet18"]]) == 2
    err = capsys.readouterr().err
    assert "does not record the data it was trained on: pass --id SPEC" in err


def test_progress_reaches_a_log_file_and_results_are_saved_without_out(tmp_path):
    log = tmp_path / "log.txt"
    env = {"OODLENS_PROGRESS_INTERVAL": "0"}
    r = oodlens(
        "bench", "--id", "digits:0-2", "--img-size", "16", "--epochs", "1", "--ood", NOISE,
        "--scorers", "msp", "odin", "--cache-dir", tmp_path / "c",
        cwd=tmp_path, env={**env, "OODLENS_RUNS_DIR": None}, log=log,
    )  # fmt: skip
    text = log.read_text()
    assert r.returncode == 0, text
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text  # lines, not a redrawn bar
    progress = [line for line in lines if line.startswith("[")]
    assert any("train resnet18 on digits:0-2:" in line for line in progress)
    assert any("train resnet18 epoch 1/1: loss" in line for line in progress)
    assert any("extract " in line and "(100%)" in line for line in progress)
    assert any(line.split("] ", 1)[1].startswith("odin: pass over") for line in progress)
    first = lines[0]
    assert first.startswith("results will be saved in runs/")
    folder = tmp_path / first.removeprefix("results will be saved in ").rstrip("/")
    assert (folder / "results.json").is_file()
    assert (
        lines[-1]
        == f"results saved in {folder.relative_to(tmp_path)}/ (results.json, tables, plots)"
    )
    # -q silences the progress
    quiet = oodlens(
        "-q", "bench", "--id", "digits:0-2", "--img-size", "16", "--epochs", "1", "--ood",
        NOISE, "--scorers", "msp", "--cache-dir", tmp_path / "c", "--out", tmp_path / "q",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert quiet.returncode == 0 and not [x for x in quiet.stderr.splitlines() if x.startswith("[")]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_reports_respect_the_umask(digits_result, tmp_path, umask):
    previous = os.umask(umask)
    try:
        out = digits_result.save(tmp_path / "report", formats=("md", "csv"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"results.json", "results.md", "roc.png"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p


def test_an_alpha_too_small_for_the_calib_split_is_warned_about_once(
    cache_dir, digits_train, capsys
):
    result = run_benchmark(
        cache_dir=str(cache_dir),
        train=digits_train,
        scorers=("msp", "energy", "max_logit"),
        alphas=(1e-4, 0.05),
        progress=False,
    )
    about_alpha = [w for w in result.info["warnings"] if "alpha [0.0001]" in w]
    assert len(about_alpha) == 1 and "--calib-fraction" in about_alpha[0]
    rc = cli.main(
        [
            "bench", "--cache-dir", str(cache_dir), "--epochs", "6", "--scorers", "msp",
            "energy", "max_logit", "--alpha", "0.0001", "-q", "--no-plots",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and out.count("alpha [0.0001] is below") == 1


def _needs(name: str) -> frozenset[str]:
    return oodlens_api.create_scorer(name).requirements()


def test_the_default_scorers_leave_model_aware_and_stage_ones_to_all_model(cache_dir, digits_train):
    from oodlens.bench import BenchmarkConfig, expand_scorers

    class Probe(oodlens_api.Scorer):  # a third party's model-aware scorer
        name = "probe_model_aware"
        requires = frozenset({"logits", "model"})

        def _score(self, outputs, model):
            return np.asarray(outputs.logits).max(1)

    class Plugin:
        @oodlens_api.hookimpl
        def register_scorers(self, register):
            register(Probe)

    name = oodlens_api.register_plugin(Plugin(), name="probe-plugin")
    try:
        default = {s.text for s in expand_scorers(BenchmarkConfig().scorers)}
        everything = {s.text for s in expand_scorers(["all+model"])}
        assert {"odin", "probe_model_aware", "gram", "multi_mahalanobis"} <= everything - default
        assert {"knn", "ash", "gradnorm", "logit_kde:mode=class_conditional"} <= default
        result = run_benchmark(cache_dir=str(cache_dir), train=digits_train, progress=False)
    finally:
        oodlens_api.unregister_plugin(name)
    assert not {"odin", "probe_model_aware"} & set(result.table.scorer)
    note = [line for line in result.footnotes() if line.startswith("Not run")]
    aware = sorted(n for n in oodlens_api.list_scorers() if "model" in _needs(n)) + [
        "probe_model_aware"
    ]
    assert note == [
        "Not run: mcm does not apply to resnet18: it is not a CLIP zero-shot classifier "
        "(--model clip:ARCH): MCM needs class text embeddings.",
        "Not run: the scorer(s) on earlier stages gram, multi_mahalanobis (they add every "
        "stage's features to the extraction); add them with --scorers all+model.",
        f"Not run: the model-aware scorer(s) {', '.join(sorted(aware))} (own passes over the "
        "images, slow on large sets); add them with --scorers all+model.",
    ]


def test_a_checkpoint_records_its_normalisation_and_another_is_refused(ckpt40, tmp_path, capsys):
    import safetensors
    from safetensors.torch import save_file

    from oodlens.backbones import read_model_config

    path, _ = ckpt40
    stored = read_model_config(path)
    assert stored.extra["normalization"] == {
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }  # timm's default for resnet18 (ImageNet's statistics)
    with safetensors.safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    config = json.loads(meta["oodlens_config"])
    config["extra"]["normalization"]["mean"] = [0.5, 0.5, 0.5]
    other = tmp_path / "other.safetensors"
    save_file(load_file(path), str(other), metadata={"oodlens_config": json.dumps(config)})
    argv = ["bench", "--checkpoint", other, "--ood", NOISE, "--scorers", "msp", "-q"]
    argv += ["--cache-dir", tmp_path / "c", "--out", tmp_path / "r"]
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "was trained with normalisation mean [0.5, 0.5, 0.5]" in err
    assert "[0.485, 0.456, 0.406]" in err
