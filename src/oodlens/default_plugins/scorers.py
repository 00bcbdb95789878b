"""Built-in plugin: the logit baselines and logit-KDE."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_scorers(register: Callable[..., Any]) -> None:
    from ..scorers import MSP, Energy, LogitKDE, MaxLogit

    for cls in (MSP, Energy, MaxLogit, LogitKDE):
        register(cls)
