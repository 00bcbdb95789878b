from __future__ import annotations

import os
from pathlib import Path

import pytest

from oodlens.testing import synthetic_outputs

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("OODLENS_DATA_ROOT", REPO.parent / "shared" / "data"))


@pytest.fixture
def train_outputs():
    return synthetic_outputs(400, seed=0)


@pytest.fixture
def test_outputs():
    return synthetic_outputs(150, seed=1)


@pytest.fixture
def ood_outputs():
    return synthetic_outputs(150, seed=2, kind="ood")
