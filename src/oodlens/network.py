"""The few facts about a timm network that several layers need (explainers, extraction):
one forward pass giving the logits and the penultimate features, and the linear head."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["forward_all", "forward_with_blocks", "get_head", "gram_statistics", "stage_modules"]


def get_head(model: nn.Module) -> nn.Linear | None:
    """The final linear classifier (timm's ``get_classifier``) when it is an ``nn.Linear``."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return head if isinstance(head, nn.Linear) else None


def stage_modules(model: nn.Module) -> list[str]:
    """The modules of the network's stages, by timm's ``feature_info`` (index ``i`` is stage
    ``i``: for a ResNet 0 is the stem, 1-4 its residual stages; for a ViT, its blocks)."""
    info = getattr(model, "feature_info", None)
    if not info or not hasattr(model, "forward_intermediates"):
        raise ValueError(
            f"{type(model).__name__} does not name its stages (no timm feature_info and "
            "forward_intermediates): stage features cannot be extracted from it."
        )
    return [str(f["module"]) for f in info]


def gram_statistics(maps: torch.Tensor, powers: tuple[int, ...]) -> torch.Tensor:
    r"""Sastry & Oore's Gram-matrix statistics of (N, C, H, W) feature maps: for each order
    p, the row sums of the Gram matrix of the p-th power of the maps, p-th-rooted with its
    sign, :math:`\operatorname{sign}(g)|g|^{1/p}` with
    :math:`g = \sum_j (F^p F^{p\top})_{cj}`, where :math:`F` is the (C, HW) map of one image;
    (N, len(powers) * C), order by order. The row sums are taken as
    :math:`F^p (F^{p\top} \mathbf 1)` (no C x C matrix), in float64 (float32 on a device
    without it)."""
    dtype = torch.float32 if maps.device.type == "mps" else torch.float64
    f = maps.flatten(2).to(dtype)
    out: dict[int, torch.Tensor] = {}
    power = f
    for p in range(1, max(powers) + 1):  # F^p by one product per order, not pow
        if p > 1:
            power = power * f
        if p in powers:
            g = torch.einsum("bck,bk->bc", power, power.sum(1))
            out[p] = g.sign() * g.abs() ** (1.0 / p)
    return torch.cat([out[p] for p in powers], 1)


def forward_all(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, penultimate features) from one forward pass of a timm model."""
    logits, feats, _ = forward_with_blocks(model, x)
    return logits, feats


def forward_with_blocks(
    model: nn.Module,
    x: torch.Tensor,
    stages: tuple[int, ...] = (),
    gram_stages: tuple[int, ...] = (),
    gram_powers: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, penultimate features, named blocks) from one forward pass of a timm model.

    The blocks (none unless asked for): ``"stage{i}"``, the spatially averaged output of
    stage ``i`` (see :func:`stage_modules`), and ``"gram{i}"``, its
    :func:`gram_statistics` for ``gram_powers``, through timm's ``forward_intermediates``
    (maps in NCHW, a ViT's tokens as a grid without its prefix tokens)."""
    wanted = sorted(set(stages) | set(gram_stages))
    blocks: dict[str, torch.Tensor] = {}
    if wanted:
        names = stage_modules(model)
        if wanted[-1] >= len(names):
            raise ValueError(
                f"Stage {wanted[-1]} does not exist: {type(model).__name__} has "
                f"{len(names)} stages, 0-{len(names) - 1} ({', '.join(names)})."
            )
        final, maps = model.forward_intermediates(x, indices=wanted, norm=False)
        for i, m in zip(wanted, maps, strict=True):
            if i in stages:
                blocks[f"stage{i}"] = m.flatten(2).mean(2) if m.ndim > 2 else m
            if i in gram_stages:
                blocks[f"gram{i}"] = gram_statistics(m, gram_powers)
    else:
        final = model.forward_features(x)
    feats = model.forward_head(final, pre_logits=True)
    head = model.get_classifier()
    logits = head(feats)
    if logits.ndim > 2:
        logits = logits.flatten(1)
    return logits, feats.flatten(1), blocks
