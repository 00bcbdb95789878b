"""Running a network with one of its layers' outputs changed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Hooked"]


class Hooked:
    """Runs ``model`` with the output of its submodule ``layer`` replaced by ``fn(output)``."""

    def __init__(self, model: Any, layer: str, fn: Callable[[Any], Any], owner: str) -> None:
        names = dict(model.named_modules())
        if layer not in names:
            import difflib

            close = difflib.get_close_matches(layer, list(names), n=3)
            raise ValueError(
                f"{owner}: the model has no layer {layer!r}"
                + (f"; close matches: {', '.join(close)}." if close else ".")
            )
        self.module, self.fn, self.owner, self.layer = names[layer], fn, owner, layer

    def __enter__(self) -> Hooked:
        def hook(_module, _inputs, output):
            if output.dim() != 4:
                raise ValueError(
                    f"{self.owner} on layer {self.layer!r} needs a (B, C, H, W) activation map; "
                    f"it gives shape {tuple(output.shape)} (a transformer's tokens?)."
                )
            return self.fn(output)

        self.handle = self.module.register_forward_hook(hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()
