from __future__ import annotations

import os

import pytest

from oodlens.testing import synthetic_outputs


@pytest.fixture(scope="session", autouse=True)
def runs_dir(tmp_path_factory):
    """Runs without --out are saved under runs/ of the working folder: in the tests, under
    a temporary folder (the variable reaches the CLI's subprocesses too)."""
    path = tmp_path_factory.mktemp("runs")
    os.environ["OODLENS_RUNS_DIR"] = str(path)
    return path


@pytest.fixture
def train_outputs():
    return synthetic_outputs(400, seed=0)


@pytest.fixture
def test_outputs():
    return synthetic_outputs(150, seed=1)


@pytest.fixture
def ood_outputs():
    return synthetic_outputs(150, seed=2, kind="ood")


#: Training settings for the tests' digits model: small and quick, still well above chance.
DIGITS_TRAIN = {"epochs": 6, "hflip": False}


@pytest.fixture(scope="session")
def digits_train():
    return dict(DIGITS_TRAIN)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One cache for the session: the digits model is trained once and reused."""
    return tmp_path_factory.mktemp("oodlens-cache")


@pytest.fixture(scope="session")
def digits_result(cache_dir):
    """The demo benchmark on digits (0-4 ID, 5-9 near OOD, noise far OOD), built-in scorers."""
    from oodlens import run_benchmark

    return run_benchmark(
        cache_dir=str(cache_dir),
        train=DIGITS_TRAIN,
        scorers=("msp", "energy", "max_logit", "logit_kde", "logit_kde:mode=class_conditional"),
        progress=False,
    )
