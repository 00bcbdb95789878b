"""Scorers: the :class:`Scorer` interface and the built-in output-based scorers.

Create registered scorers (built-in or from plugins) with :func:`oodlens.create_scorer`.
"""

from __future__ import annotations

from .base import (
    REQUIREMENTS,
    ModelInputs,
    Scorer,
    block_requirement,
    check_requirements,
    stage_blocks,
)
from .logit_kde import LogitKDE
from .logits import (
    GEN,
    MSP,
    Energy,
    Entropy,
    KLMatching,
    MaxLogit,
    TemperatureMSP,
    WeightedEBO,
)

__all__ = [
    "REQUIREMENTS",
    "ModelInputs",
    "Scorer",
    "check_requirements",
    "block_requirement",
    "stage_blocks",
    "MSP",
    "Energy",
    "MaxLogit",
    "Entropy",
    "GEN",
    "KLMatching",
    "TemperatureMSP",
    "WeightedEBO",
    "LogitKDE",
]
