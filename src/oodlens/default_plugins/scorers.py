"""Built-in plugin: the logit baselines, logit-KDE and the fusion of scorers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_scorers(register: Callable[..., Any]) -> None:
    from ..fusion import Fusion
    from ..scorers import (
        GEN,
        MSP,
        Energy,
        Entropy,
        KLMatching,
        LogitKDE,
        MaxLogit,
        TemperatureMSP,
        WeightedEBO,
    )

    for cls in (
        MSP,
        Energy,
        MaxLogit,
        LogitKDE,
        Entropy,
        GEN,
        KLMatching,
        TemperatureMSP,
        WeightedEBO,
        Fusion,
    ):
        register(cls)
