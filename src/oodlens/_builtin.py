"""The built-in plugin: oodlens's own scorers, explainers and datasets, registered through the
same hooks as any third-party plugin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .hookspecs import hookimpl


@hookimpl
def register_scorers(register: Callable[..., Any]) -> None:
    from ._logit_kde import LogitKDE
    from .scorers import MSP, Energy, MaxLogit

    for cls in (MSP, Energy, MaxLogit, LogitKDE):
        register(cls)
