"""Backbone helpers that need no trained model."""

from __future__ import annotations

import pytest


def test_device_is_a_parameter_and_checked():
    torch = pytest.importorskip("torch")
    from oodlens.backbones import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here; use --device cpu"):
            resolve_device("cuda")
