"""Grad-CAM on any timm backbone via captum, with automatic target-layer choice (CNNs and ViTs)."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from ..network import forward_all, get_head
from ..params import Interval, Options
from .attention import minmax_normalize
from .base import Explainer

__all__ = ["GradCAM", "ScoreTarget", "SIGNS", "resolve_target_layer"]

#: Which way of a score a map shows: "foreign" (what lowers it: evidence of being unfamiliar)
#: or "familiar" (what raises it).
SIGNS = ("foreign", "familiar")

Target = int | Sequence[int] | torch.Tensor | str | None

log = logging.getLogger(__name__)


def _candidates(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def resolve_target_layer(
    model: nn.Module, layer: str | nn.Module | None = None
) -> tuple[str, nn.Module]:
    """The layer Grad-CAM attributes to: ``layer`` (a module or dotted name) if given; for a
    vision transformer the first norm of the last block (``blocks.<last>.norm1``, as is usual
    for ViT Grad-CAM: the last block's own output patch tokens never reach a class-token
    head); for a CNN the last entry of timm's ``feature_info`` (its last spatial feature map),
    else the last ``Conv2d``.

    Raises:
        ValueError: an unknown dotted name (the message lists close matches and the model's
            top-level modules).
    """
    names = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for n, m in names.items():
            if m is layer:
                return n, m
        raise ValueError("The given layer module is not part of the model.")
    if isinstance(layer, str):
        if layer in names and layer:
            return layer, names[layer]
        close = difflib.get_close_matches(layer, _candidates(model), n=5)
        top = [n for n, _ in model.named_children()]
        raise ValueError(
            f"Model has no layer {layer!r}."
            + (f" Close matches: {', '.join(close)}." if close else "")
            + f" Top-level modules: {', '.join(top)}."
        )
    if _is_transformer(model) and hasattr(model, "blocks") and len(model.blocks):
        # the input norm of the last block: its patch tokens still reach the class token
        # through the last attention (the last block's *output* patch tokens do not)
        last = len(model.blocks) - 1
        name = f"blocks.{last}.norm1" if hasattr(model.blocks[last], "norm1") else f"blocks.{last}"
        return name, names[name]
    info = getattr(model, "feature_info", None)
    if (
        isinstance(info, list)
        and info
        and isinstance(info[-1], dict)
        and info[-1].get("module") in names
    ):
        name = info[-1]["module"]
        return name, names[name]
    convs = [n for n, m in names.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(
            "Cannot find a spatial layer for Grad-CAM in this model; pass layer='...'."
        )
    return convs[-1], names[convs[-1]]


class _TokensToGrid(nn.Module):
    """(N, T, D) tokens -> (N, D, h, w) patch grid, keeping the prefix tokens aside."""

    def __init__(self, prefix: int) -> None:
        super().__init__()
        self.prefix_count = prefix
        self.grid: tuple[int, int] = (0, 0)
        self.prefix: torch.Tensor | None = None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, t, d = tokens.shape
        h, w = self.grid
        if t - self.prefix_count != h * w:
            raise ValueError(
                f"The target layer has {t} tokens; expected {self.prefix_count} prefix tokens plus a "
                f"{h}x{w} patch grid. Pass an explicit layer whose output is the patch tokens."
            )
        self.prefix = tokens[:, : self.prefix_count]
        return tokens[:, self.prefix_count :].transpose(1, 2).reshape(n, d, h, w)


class _GridToTokens(nn.Module):
    def __init__(self, to_grid: _TokensToGrid) -> None:
        super().__init__()
        self.to_grid = [to_grid]  # a list: not registered as a child module

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.to_grid[0].prefix, grid.flatten(2).transpose(1, 2)], dim=1)


def _token_output(layer: nn.Module) -> bool:
    """Whether a transformer layer's output is (N, T, D) tokens (blocks and their norms)."""
    return isinstance(layer, nn.LayerNorm) or type(layer).__name__.endswith("Block")


def _is_transformer(model: nn.Module) -> bool:
    return hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")


class GradCAM(Explainer):
    r"""Grad-CAM (Selvaraju et al., ICCV 2017) on any timm backbone, built on
    ``captum.attr.LayerGradCam``.

    .. math::
        \alpha_k = \frac{1}{hw}\sum_{i,j} \frac{\partial y_c}{\partial A^k_{ij}}, \qquad
        L = \operatorname{ReLU}\Big(\sum_k \alpha_k A^k\Big)

    then upsampled to the input size and min-max normalised per image.

    Departures from captum's defaults, each a flag:

    * ``relu=True``: the paper's ReLU (captum's ``relu_attributions`` defaults to False);
    * ``upsample="bilinear"``: smooth maps as in the paper's figures (captum's
      ``LayerAttribution.interpolate`` defaults to nearest);
    * ``normalize=True``: per-image min-max scaling to [0, 1]; a constant map (e.g. all-zero
      gradients) becomes all zeros, never NaN.

    The model is put in eval mode and its parameters' ``requires_grad`` turned off while
    explaining (only activations need gradients), and both are restored afterwards. For
    vision transformers the target layer's tokens are reshaped to the patch grid (prefix /
    class tokens dropped, grid from the patch size and the input size, so non-square inputs
    work).

    Score targets: with ``score=`` a fitted scorer that has a differentiable score
    (:attr:`oodlens.Scorer.differentiable`), the map explains that scorer's score instead of
    a class: :math:`y` is :math:`-s(x)` with ``sign="foreign"`` (default: the map shows what
    *lowers* the score, the evidence that the image is unfamiliar) or :math:`s(x)` with
    ``sign="familiar"``. The score is computed from the same forward pass (logits,
    penultimate features and the head of the network).

    Args:
        model: a classifier returning (N, C) logits.
        layer: target layer (module or dotted name); ``None`` picks it automatically (see
            :func:`resolve_target_layer`).
        relu: apply the ReLU (default True, as in the paper).
        upsample: ``"bilinear"`` (default), ``"nearest"`` or ``"bicubic"``.
        normalize: min-max normalise each map to [0, 1] (default True).
        device: where to run; the model is moved there.
        batch_size: images per backward pass.
        score: a fitted scorer whose score to explain (default ``None``: the class).
        sign: ``"foreign"`` (default) or ``"familiar"``: which way of the score the map shows.

    Example:
        >>> import timm, torch
        >>> model = timm.create_model("resnet18", num_classes=3)
        >>> cams = GradCAM(model).explain(torch.rand(2, 3, 64, 64))
        >>> tuple(cams.shape), bool(cams.min() >= 0), bool(cams.max() <= 1)
        ((2, 64, 64), True, True)
    """

    name = "gradcam"
    description = "Grad-CAM via captum LayerGradCam (ReLU, bilinear upsampling, min-max)"
    parameter_constraints = {
        "upsample": [Options(("bilinear", "nearest", "bicubic"))],
        "batch_size": [Interval(int, 1, None)],
        "sign": [Options(SIGNS)],
    }

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        relu: bool = True,
        upsample: str = "bilinear",
        normalize: bool = True,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        score: Any = None,
        sign: str = "foreign",
    ) -> None:
        self.check_params({"upsample": upsample, "batch_size": batch_size, "sign": sign})
        self.target_score = ScoreTarget(model, score, sign) if score is not None else None
        self.model = model.to(device)
        self.layer_name, self.layer = resolve_target_layer(model, layer)
        self.relu = relu
        self.upsample = upsample
        self.normalize = normalize
        self.device = torch.device(device)
        self.batch_size = batch_size
        #: after :meth:`explain`: (N, C) logits of the explained images
        self.last_logits: torch.Tensor | None = None
        #: after :meth:`explain` with ``score=``: (N,) scores of the explained images
        self.last_scores: torch.Tensor | None = None

    @contextmanager
    def _prepared(self, image_hw: tuple[int, int]):
        model = self.model
        was_training = model.training
        flags = [(p, p.requires_grad) for p in model.parameters()]
        swapped = None
        layer = self.layer
        try:
            model.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            if _is_transformer(model) and _token_output(self.layer):
                to_grid = _TokensToGrid(int(model.num_prefix_tokens))
                ph, pw = model.patch_embed.patch_size
                to_grid.grid = (image_hw[0] // ph, image_hw[1] // pw)
                parent_name, _, child = self.layer_name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                swapped = (parent, child, self.layer)
                setattr(parent, child, nn.Sequential(self.layer, to_grid, _GridToTokens(to_grid)))
                layer = to_grid
            yield layer
        finally:
            if swapped is not None:
                setattr(swapped[0], swapped[1], swapped[2])
            for p, flag in flags:
                p.requires_grad_(flag)
            model.train(was_training)

    def explain(self, images: torch.Tensor, target: Target = "predicted") -> torch.Tensor:
        """Grad-CAM maps for a batch.

        Args:
            images: (N, C, H, W) preprocessed images.
            target: ``"predicted"`` or ``None`` (the predicted class, found in the same
                forward pass), an int (one class for all), or a sequence / (N,) tensor of
                class indices; with ``score=`` the score is explained and ``target`` must
                stay ``"predicted"``.

        Returns:
            (N, H, W) float tensor on the CPU, values in [0, 1] (when ``normalize``).
        """
        from captum.attr import LayerAttribution, LayerGradCam

        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(
                f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}."
            )
        n, _, h, w = images.shape
        targets = self._targets(target, n)
        if self.target_score is not None and targets is not None:
            raise ValueError("With score= the score is explained: leave target='predicted'.")
        maps, logits_all, scores_all = [], [], []
        with torch.enable_grad(), self._prepared((h, w)) as layer:
            for s in range(0, n, self.batch_size):
                x = images[s : s + self.batch_size].to(self.device)
                t = None if targets is None else targets[s : s + self.batch_size].to(self.device)
                cam = LayerGradCam(self._forward, layer).attribute(
                    x, target=0, additional_forward_args=(t,), relu_attributions=self.relu
                )
                if cam.shape[-2:] == (1, 1) and s == 0:
                    log.warning(
                        "Grad-CAM layer %r has a 1x1 map at input size %dx%d, so every map is "
                        "constant; choose an earlier layer (e.g. layer='layer3') or larger inputs.",
                        self.layer_name,
                        h,
                        w,
                    )
                cam = LayerAttribution.interpolate(cam, (h, w), interpolate_mode=self.upsample)[
                    :, 0
                ]
                maps.append(cam.detach().float().cpu())
                logits_all.append(self._logits.float().cpu())
                if self.target_score is not None:
                    scores_all.append(self.target_score.last_scores)
        cams = torch.cat(maps)
        self.last_logits = torch.cat(logits_all)
        self.last_scores = torch.cat(scores_all) if scores_all else None
        return minmax_normalize(cams) if self.normalize else cams

    def _forward(self, inp: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """The model's logit of the target class, (N, 1); the predicted class when ``t`` is
        None, so one forward pass serves both the prediction and the gradient. With a score
        target, the signed score (N, 1) of the same forward pass."""
        if self.target_score is not None:
            out = self.target_score(inp)
            self._logits = self.target_score.last_logits
            return out[:, None]
        out = self.model(inp)
        self._logits = out.detach()
        idx = out.argmax(dim=1, keepdim=True) if t is None else t.view(-1, 1)
        return out.gather(1, idx)

    def _targets(self, target: Target, n: int) -> torch.Tensor | None:
        if target is None or (isinstance(target, str) and target == "predicted"):
            return None
        if isinstance(target, str):
            raise ValueError(
                f"target={target!r} is not valid; use 'predicted', an int or one class per image."
            )
        if isinstance(target, int | np.integer):
            return torch.full((n,), int(target), dtype=torch.long)
        t = torch.as_tensor(target, dtype=torch.long).view(-1)
        if t.numel() != n:
            raise ValueError(
                f"target has {t.numel()} entries for {n} images; give one class per image."
            )
        return t


class ScoreTarget(nn.Module):
    """A fitted scorer's score as a function of the input images: one forward pass of the
    network gives the logits, the penultimate features and the head, and the scorer's
    :meth:`~oodlens.Scorer.torch_score` turns them into (N,) scores, negated with
    ``sign="foreign"`` (so that attributions point at what makes an image unfamiliar). What
    captum's attribution methods are given as ``forward_func``.

    Raises:
        TypeError: the scorer has no differentiable score (named, with the scorers that
            have one in its message).
    """

    def __init__(self, model: nn.Module, scorer: Any, sign: str = "foreign") -> None:
        super().__init__()
        if sign not in SIGNS:
            raise ValueError(f"sign={sign!r} is not valid; use one of {', '.join(SIGNS)}.")
        if not getattr(scorer, "differentiable", False):
            raise TypeError(
                f"Scorer {getattr(scorer, 'name', scorer)!r} has no differentiable score, so its "
                "score cannot be explained by gradients (it needs passes of its own through the "
                "network, or declares no torch form); explain the class (target 'class'), or "
                "choose a scorer that has one (the 'explainable' column of oodlens scorers)."
            )
        self.model, self.scorer, self.sign = model, scorer, sign
        self.last_logits: torch.Tensor | None = None
        self.last_scores: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, feats = forward_all(self.model, x)
        head = get_head(self.model)
        weights = None if head is None else (head.weight, _bias(head))
        score = self.scorer.torch_score(logits, feats, weights)
        self.last_logits = logits.detach()
        self.last_scores = score.detach().float().cpu()
        return -score if self.sign == "foreign" else score


def _bias(head: nn.Linear) -> torch.Tensor:
    return head.bias if head.bias is not None else head.weight.new_zeros(head.out_features)
