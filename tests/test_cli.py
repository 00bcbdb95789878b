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
    assert header == ["name", "distribution", "requires", "description"]
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[2:]}
    for name in ("msp", "energy", "max_logit"):
        assert "oodlens" in rows[name] and "logits" in rows[name]


def test_scorers_pattern():
    r = run("scorers", "max_*")
    assert [line.split()[0] for line in r.stdout.splitlines()[2:]] == ["max_logit"]


def test_plugins_lists_builtin():
    r = run("plugins")
    assert r.returncode == 0
    assert "oodlens._builtin" in r.stdout and "register_scorers" in r.stdout


@pytest.mark.parametrize("args", [("nonsense",), ()])
def test_bad_command(args):
    r = run(*args)
    assert r.returncode == 2
    assert "usage: oodlens" in r.stderr
