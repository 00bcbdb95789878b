"""The user's way in: the core and each plugin distribution build as wheels and sdists that
carry the licence and the project's URLs, and the built wheels installed into a fresh
virtual environment (nothing of this checkout on its path) run ``oodlens bench``."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = {
    "oodlens": ROOT,
    "oodlens_feature_scorers": ROOT / "plugins" / "oodlens-feature-scorers",
    "oodlens_model_scorers": ROOT / "plugins" / "oodlens-model-scorers",
}


def _run(*args, **kwargs) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert r.returncode == 0, f"{' '.join(map(str, args))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    for source in DISTRIBUTIONS.values():
        _run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, source)
    return out


def test_wheels_and_sdists_carry_the_licence_and_the_urls(dist):
    for name in DISTRIBUTIONS:
        (wheel,) = dist.glob(f"{name}-*.whl")
        (sdist,) = dist.glob(f"{name}-*.tar.gz")
        with zipfile.ZipFile(wheel) as z:
            names = z.namelist()
            (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
            text = z.read(metadata).decode()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), wheel.name
        assert "License-Expression: MIT" in text
        urls = [line for line in text.splitlines() if line.startswith("Project-URL: ")]
        assert {u.split(": ", 1)[1].split(",")[0] for u in urls} >= {"Homepage", "Source", "Issues"}
        with tarfile.open(sdist) as t:
            assert any(n.endswith("/LICENSE") for n in t.getnames()), sdist.name
    (core,) = dist.glob("oodlens-*.whl")
    with zipfile.ZipFile(core) as z:
        assert "oodlens/protocols/openood_v1_5.yaml" in z.namelist()


def test_the_wheels_installed_in_a_fresh_venv_run_a_benchmark(dist, tmp_path):
    import torch
    import torchvision

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    # the torch builds of this environment (the registry's default build may differ)
    pins = [f"torch=={torch.__version__.split('+')[0]}"]
    pins.append(f"torchvision=={torchvision.__version__.split('+')[0]}")
    _run(python, "-m", "pip", "install", "--quiet", *pins)
    _run(python, "-m", "pip", "install", "--quiet", *sorted(dist.glob("*.whl")))
    exe = venv / "bin" / "oodlens"
    listing = _run(exe, "scorers", cwd=tmp_path).stdout
    assert "oodlens-feature-scorers" in listing and "oodlens-model-scorers" in listing
    where = _run(python, "-c", "import oodlens; print(oodlens.__file__)", cwd=tmp_path).stdout
    assert str(venv) in where and str(ROOT) not in where
    r = _run(
        exe, "bench", "--scorers", "msp", "--epochs", "1", "--img-size", "16", "--id",
        "digits:0-2", "--ood", "far:noise=noise:gaussian,n=40,size=16", "--out", tmp_path / "r",
        "--cache-dir", tmp_path / "cache", "-q", cwd=tmp_path,
    )  # fmt: skip
    assert "| resnet18 | msp | noise |" in r.stdout
    assert json.loads((tmp_path / "r" / "results.json").read_text())["config"]["scorers"] == ["msp"]
