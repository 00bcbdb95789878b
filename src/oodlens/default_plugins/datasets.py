"""Built-in plugin: the embedded digits, synthetic noise and torchvision dataset kinds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_datasets(register: Callable[..., Any]) -> None:
    from .. import datasets as d

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
