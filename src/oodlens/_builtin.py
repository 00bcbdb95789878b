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


@hookimpl
def register_datasets(register: Callable[..., Any]) -> None:
    from . import datasets as d

    register(
        "digits",
        d.load_digits_source,
        "scikit-learn 8x8 digits, e.g. digits:0-4 (embedded, offline)",
    )
    register(
        "noise",
        d.load_noise_source,
        "synthetic far-OOD noise: noise:gaussian or noise:uniform, n=, size=, seed=",
    )
    register(
        "torchvision",
        d.load_torchvision_source,
        "a torchvision dataset by name, e.g. torchvision:CIFAR10 (downloads)",
    )


@hookimpl
def register_explainers(register: Callable[..., Any]) -> None:
    from .explainers import GradCAM

    register(GradCAM)
