"""The console entry point, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXE = Path(sys.executable).with_name("oodlens")


def run(*args):
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=300)


def test_scorers_lists_builtins_with_columns():
    r = run("scorers")
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[0].split()
    assert header == ["name", "distribution", "needs", "explainable", "description"]
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[2:] if line.strip()}
    for name in ("msp", "energy", "max_logit"):
        assert "oodlens" in rows[name] and "logits" in rows[name]
        assert " yes " in rows[name]
    for name in ("odin", "gradnorm"):  # they take their own gradient passes
        assert " no " in rows[name]
    # grouped by distribution, oodlens's own first
    dists = [
        line.split()[1]
        for line in r.stdout.splitlines()[2:]
        if line.startswith(tuple("abcdefghijklmnopqrstuvwxyz"))
    ]
    assert dists == sorted(dists, key=lambda d: (d != "oodlens", d))


def test_scorers_pattern():
    r = run("scorers", "max_*")
    assert [line.split()[0] for line in r.stdout.splitlines()[2:] if line.strip()][:1] == [
        "max_logit"
    ]
    assert "1 scorer from 1 distribution" in r.stdout


def test_plugins_lists_builtin():
    r = run("plugins")
    assert r.returncode == 0
    assert "oodlens.default_plugins.scorers" in r.stdout and "register_scorers" in r.stdout


@pytest.mark.parametrize("args", [("nonsense",), ()])
def test_bad_command(args):
    r = run(*args)
    assert r.returncode == 2
    assert "usage: oodlens" in r.stderr


def _folder(root, n=12, seed=0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k in range(2):
        d = root / f"class{k}"
        d.mkdir(parents=True)
        for i in range(n):
            img = np.zeros((20, 20, 3), np.uint8)
            img[..., k] = 200
            img += rng.integers(0, 40, img.shape, dtype=np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.mark.slow
def test_bench_default_demo_prints_table(cache_dir, tmp_path):
    out = tmp_path / "report"
    r = run(
        "bench",
        "--cache-dir",
        str(cache_dir),
        "--epochs",
        "6",
        "--scorers",
        "msp",
        "logit_kde",
        "-q",
        "--out",
        str(out),
        "--attention",
        "--attention-layer",
        "layer2",
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"results will be saved in {out}/"  # first and last
    assert lines[-1] == f"results saved in {out}/ (results.json, tables, plots)"
    assert lines[1].startswith("OOD detection, metrics in % under the oodlens convention")
    assert lines[2] == "ID test, per model:"
    assert lines[4].startswith("| backbone | scorer | id_accuracy | aurc | eaurc")
    per_set = r.stdout.split("OOD detection, per set:")[1].splitlines()
    assert per_set[2].startswith("| backbone | scorer | ood | auroc | fpr95")
    body = [line for line in per_set if line.startswith("| resnet18")]
    # two scorers x (2 sets + their mean); a near/far row repeating its one set is not shown
    assert len(body) == 2 * 3
    assert "higher score = more in-distribution" in r.stdout
    assert {p.name for p in out.iterdir()} >= {
        "attention.csv",
        "results.json",
        "results.md",
        "results.csv",
        "results.tex",
        "roc.png",
    }


@pytest.mark.slow
def test_train_then_bench_on_folders_with_checkpoint(tmp_path, cache_dir):
    idf, oodf = _folder(tmp_path / "id"), _folder(tmp_path / "ood", seed=3)
    ckpt = tmp_path / "m.safetensors"
    r = run(
        "train",
        "--model",
        "resnet18",
        "--data",
        str(idf),
        "--out",
        str(ckpt),
        "--epochs",
        "1",
        "-q",
    )
    assert r.returncode == 0, r.stderr
    assert "saved" in r.stdout and ckpt.exists()
    r = run(
        "bench",
        "--id",
        str(idf),
        "--ood",
        f"far={oodf}",
        "--model",
        "resnet18",
        "--checkpoint",
        str(ckpt),
        "--cache-dir",
        str(cache_dir),
        "--scorers",
        "msp",
        "energy",
        "--val-fraction",
        "0",
        "--calib-fraction",
        "0.45",
        "-q",
    )
    assert r.returncode == 0, r.stderr
    per_set = r.stdout.split("OOD detection, per set:")[1]
    rows = [
        line.split("|")[3].strip() for line in per_set.splitlines() if line.startswith("| resnet18")
    ]
    assert rows == ["ood", "ood"]  # the OOD set is named after its folder (no repeated far row)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("bench", "--model", "resnet1", "--scorers", "msp"), "Unknown timm model 'resnet1'"),
        (("bench", "--ood", "nonsense"), "--ood 'nonsense': write NAME=SPEC"),
        (("bench", "--ood", "middle:x=noise:uniform"), "group 'middle' is not one of"),
        (("bench", "--format", "xml"), "--format ['xml'] is not valid"),
        (("bench", "--scorers", "mps"), "Unknown scorer 'mps'"),
        (("bench", "--id", "/no/such/dir"), "does not exist"),
        (("bench", "--config", "/no/such.yaml"), "does not exist"),
    ],
)
def test_bench_bad_arguments(args, message, tmp_path):
    r = run(*args, "--cache-dir", str(tmp_path))
    assert r.returncode == 2
    assert message in r.stderr, r.stderr


def test_datasets_command():
    r = run("datasets")
    assert r.returncode == 0
    assert all(k in r.stdout for k in ("digits", "noise", "torchvision", "PATH"))


def _commands(parser, path=("oodlens",)):
    """Every (sub)command's parser, by its path."""
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_command_has_an_example_and_every_option_a_help_with_its_default():
    import argparse

    from oodlens.cli import build_parser

    commands = dict(_commands(build_parser()))
    assert len(commands) >= 13
    for path, parser in commands.items():
        assert parser.epilog and parser.epilog.startswith("examples:\n  oodlens"), path
        assert "examples:" in parser.format_help(), path
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction) or not action.option_strings:
                continue  # commands and positional arguments: required, no default
            where = f"{' '.join(path)} {action.option_strings[-1]}"
            assert action.help and action.help.strip(), f"{where} has no help"
            if action.nargs != 0 and not action.required:
                assert "default" in action.help, f"{where}: its help does not give the default"


def test_version(capsys):
    from oodlens import __version__, cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"oodlens {__version__}"
