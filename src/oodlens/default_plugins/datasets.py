"""Built-in plugin: the embedded digits, synthetic noise, corrupted copies (CIFAR-10-C style)
and torchvision dataset kinds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

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
        "corrupt",
        load_corrupted_source,
        "CIFAR-10-C-style corruptions of another set, one per image: "
        "corrupt:PATH,types=a+b,severity=1-5,seed=0@test",
    )
    register(
        "torchvision",
        d.load_torchvision_source,
        "a torchvision dataset by name, e.g. torchvision:CIFAR10 (downloads)",
    )


def _severities(text: str, spec: str) -> list[int]:
    lo, _, hi = text.partition("-")
    try:
        values = list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        values = []
    if not values or values[0] < 1 or values[-1] > 5:
        raise ValueError(
            f"Option severity={text!r} in {spec!r} must be a severity 1-5 or a range such as 1-5."
        )
    return values


def load_corrupted_source(spec: str, arg: str, options: dict[str, str], split: str):
    """``corrupt:BASE,types=...,severity=...,seed=...[@SPLIT]``: every image of the dataset
    ``BASE`` (a folder or a spec without commas; ``@SPLIT`` applies to it) with one corruption
    of :mod:`oodlens.corruptions`, its type and severity drawn per image from ``types``
    (``+``-separated; default the CIFAR-10-C test corruptions that are here) and ``severity``
    (a range, default 1-5) by ``seed`` (default 0). Labels and classes are the base set's,
    so it is a covariate-shifted copy of it; each sample's id records its corruption and
    severity (``path#contrast@3``)."""
    from .. import corruptions as c
    from ..datasets import DatasetSource, spec_split
    from ..registry import load_dataset

    unknown = sorted(set(options) - {"types", "severity", "seed"})
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} in {spec!r}; valid: types, severity, seed "
            "(e.g. 'corrupt:data/cifar10,types=contrast+pixelate,severity=1-5,seed=0@test')."
        )
    if not arg:
        raise ValueError(
            f"{spec!r} names no set to corrupt: give one, e.g. 'corrupt:data/cifar10@test'."
        )
    types = options.get("types", "+".join(c.TEST_CORRUPTIONS)).split("+")
    bad = [t for t in types if t not in c.CORRUPTIONS]
    if bad:
        raise ValueError(
            f"Unknown corruption(s) {bad} in {spec!r}; valid: {', '.join(c.CORRUPTIONS)}."
        )
    severities = _severities(options.get("severity", "1-5"), spec)
    try:
        seed = int(options.get("seed", 0))
    except ValueError:
        raise ValueError(f"Option seed must be an integer in {spec!r}.") from None
    base = load_dataset(arg if split == "all" else f"{arg}@{split}")
    n = len(base)
    draw = np.random.default_rng(seed)
    kinds = [types[k] for k in draw.integers(0, len(types), n)]
    levels = [severities[k] for k in draw.integers(0, len(severities), n)]
    base_loader = base.loader

    def loader(i: int):
        return c.corrupt(base_loader(i), kinds[i], levels[i], np.random.default_rng([seed, i]))

    return DatasetSource(
        spec=spec_split(spec)[0] + ("" if split == "all" else f"@{split}"),
        classes=base.classes,
        ids=[f"{sid}#{k}@{s}" for sid, k, s in zip(base.ids, kinds, levels, strict=True)],
        labels=base.labels,
        loader=loader,
        fingerprint_extra=f"corrupt-v{c.VERSION}:{base.fingerprint()}:{seed}",
        keys=base.keys,
    )
