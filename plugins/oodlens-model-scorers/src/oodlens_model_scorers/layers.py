"""Running a network with one of its layers' outputs changed, and reading a layer's output
shape from the architecture alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Hooked", "module_named", "output_shape"]


def module_named(model: Any, layer: str, owner: str) -> Any:
    """The submodule of ``model`` with the dotted name ``layer``.

    Raises:
        ValueError: naming ``owner``, the layer and the closest names the model has.
    """
    names = dict(model.named_modules())
    if layer not in names:
        import difflib

        close = difflib.get_close_matches(layer, list(names), n=3)
        raise ValueError(
            f"{owner}: the model has no layer {layer!r}"
            + (f"; close matches: {', '.join(close)}." if close else ".")
        )
    return names[layer]


class Hooked:
    """Runs ``model`` with the output of its submodule ``layer`` replaced by ``fn(output)``."""

    def __init__(self, model: Any, layer: str, fn: Callable[[Any], Any], owner: str) -> None:
        self.module = module_named(model, layer, owner)
        self.fn, self.owner, self.layer = fn, owner, layer

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


def output_shape(
    model: Any, layer: str | None, input_size: tuple[int, int, int]
) -> tuple[int, ...] | None:
    """The shape of ``layer``'s output (``None``: of ``forward_features``) for one input of
    ``input_size``, from a pass on the meta device (no compute, no weights needed; a
    network with weights is copied there first); ``None`` when the layer is absent."""
    import copy

    import torch

    if not all(p.is_meta for p in model.parameters()):
        model = copy.deepcopy(model).to("meta")
    x = torch.empty((1, *input_size), device="meta")
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            if layer is None:
                return tuple(model.forward_features(x).shape)
            module = dict(model.named_modules()).get(layer)
            if module is None:
                return None
            seen: list[tuple[int, ...]] = []
            handle = module.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
            try:
                model(x)
            finally:
                handle.remove()
            return seen[0] if seen else None
    finally:
        model.train(was_training)
