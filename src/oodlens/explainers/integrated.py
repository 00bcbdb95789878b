"""Pixel-level attributions with Integrated Gradients (captum), of a class or of a score."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..params import Interval, Options
from .attention import minmax_normalize
from .base import Explainer
from .gradcam import SIGNS, ScoreTarget, Target

__all__ = ["IntegratedGradients"]


class _ClassTarget(nn.Module):
    """The logit of each image's target class (its predicted class by default), (N,)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.model(x).gather(1, target.view(-1, 1))[:, 0]


class IntegratedGradients(Explainer):
    r"""Integrated Gradients (Sundararajan, Taly & Yan, ICML 2017), pixel by pixel, built on
    ``captum.attr.IntegratedGradients``:

    .. math:: \mathrm{IG}_i(x) = (x_i - x'_i) \int_0^1
        \frac{\partial F(x' + t (x - x'))}{\partial x_i}\, dt

    summed over the colour channels into one (H, W) map per image. ``F`` is a class logit
    (the predicted class, or ``target``), or, with ``score=`` a fitted scorer with a
    differentiable score, the score negated (``sign="foreign"``: the map shows what lowers
    the score, the evidence of being unfamiliar) or not (``sign="familiar"``).

    Why Integrated Gradients rather than input x gradient: it is *complete* (the
    attributions of an image sum to :math:`F(x) - F(x')`, so a map's mass is a share of the
    score's change, comparable across images and targets; :attr:`last_delta` is the gap,
    checked by the tests to within 1%), and it does not depend on one point's gradient,
    which a saturated ReLU network makes noisy or zero. The price is ``n_steps`` forward and
    backward passes per image (captum's Gauss-Legendre rule; 32 steps by default).

    The baseline :math:`x'` is the all-zero input in the normalised space, i.e. the
    dataset's mean colour (the same fill the deletion curves of
    ``benchmarks/score_explanations.py`` use). Maps are signed and are not min-max scaled
    unless ``normalize`` (then the positive part, scaled to [0, 1]).

    Args:
        model: a classifier returning (N, C) logits.
        score: a fitted scorer whose score to explain (default ``None``: the class).
        sign: ``"foreign"`` (default) or ``"familiar"``, for a score target.
        n_steps: integration steps (default 32).
        normalize: keep the positive part and min-max scale it to [0, 1] (default False).
        device: where to run; the model is moved there.
        batch_size: images per attribution call.

    Example:
        >>> import timm, torch
        >>> model = timm.create_model("resnet18", num_classes=3)
        >>> ig = IntegratedGradients(model, n_steps=8)
        >>> ig.explain(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 32, 32])
    """

    name = "integrated_gradients"
    description = "Integrated Gradients via captum, of a class or of an OOD score (pixel maps)"
    parameter_constraints = {
        "sign": [Options(SIGNS)],
        "n_steps": [Interval(int, 2, None)],
        "batch_size": [Interval(int, 1, None)],
    }

    def __init__(
        self,
        model: nn.Module,
        score: Any = None,
        sign: str = "foreign",
        n_steps: int = 32,
        normalize: bool = False,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
    ) -> None:
        self.check_params({"sign": sign, "n_steps": n_steps, "batch_size": batch_size})
        self.model = model.to(device)
        self.target_score = ScoreTarget(model, score, sign) if score is not None else None
        self.n_steps, self.normalize, self.batch_size = n_steps, normalize, batch_size
        self.device = torch.device(device)
        #: after :meth:`explain`: per image, sum of attributions minus (F(x) - F(baseline))
        self.last_delta: torch.Tensor | None = None
        #: after :meth:`explain`: (N, C) logits, and with ``score=`` the (N,) scores
        self.last_logits: torch.Tensor | None = None
        self.last_scores: torch.Tensor | None = None

    def explain(self, images: torch.Tensor, target: Target = "predicted") -> torch.Tensor:
        """Integrated Gradients maps for a batch.

        Args:
            images: (N, C, H, W) preprocessed images.
            target: for class maps, ``"predicted"``/``None``, an int or one class per image;
                with ``score=`` it must stay ``"predicted"``.

        Returns:
            (N, H, W) float tensor on the CPU: signed attributions summed over channels
            (positive = towards the target: a higher class logit, or, for a score with
            ``sign="foreign"``, a lower score); with ``normalize``, their positive part in
            [0, 1].
        """
        from captum.attr import IntegratedGradients as CaptumIG

        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(
                f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}."
            )
        model = self.model
        was_training = model.training
        flags = [(p, p.requires_grad) for p in model.parameters()]
        maps, deltas, logits_all, scores_all = [], [], [], []
        try:
            model.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            with torch.enable_grad():
                for s in range(0, images.shape[0], self.batch_size):
                    x = images[s : s + self.batch_size].to(self.device).float()
                    with torch.no_grad():
                        logits = model(x)
                    logits_all.append(logits.float().cpu())
                    attr, delta = self._attribute(CaptumIG, x, logits, target, s)
                    maps.append(attr.sum(1).detach().float().cpu())
                    deltas.append(delta.detach().float().cpu())
                    if self.target_score is not None:
                        self.target_score(x)  # the scores, for the record
                        scores_all.append(self.target_score.last_scores)
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            model.train(was_training)
        out = torch.cat(maps)
        self.last_delta = torch.cat(deltas)
        self.last_logits = torch.cat(logits_all)
        self.last_scores = torch.cat(scores_all) if scores_all else None
        return minmax_normalize(out.clamp(min=0)) if self.normalize else out

    def _attribute(
        self, ig_class: Any, x: torch.Tensor, logits: torch.Tensor, target: Target, s: int
    ):
        baseline = torch.zeros_like(x)
        if self.target_score is not None:
            if not (target is None or target == "predicted"):
                raise ValueError("With score= the score is explained: leave target='predicted'.")
            ig = ig_class(lambda inp: self.target_score(inp).float())
            return ig.attribute(
                x, baselines=baseline, n_steps=self.n_steps, return_convergence_delta=True
            )
        classes = self._classes(target, logits, s)
        ig = ig_class(_ClassTarget(self.model))
        return ig.attribute(
            x,
            baselines=baseline,
            additional_forward_args=(classes,),
            n_steps=self.n_steps,
            return_convergence_delta=True,
        )

    @staticmethod
    def _classes(target: Target, logits: torch.Tensor, s: int) -> torch.Tensor:
        n = logits.shape[0]
        if target is None or (isinstance(target, str) and target == "predicted"):
            return logits.argmax(1)
        if isinstance(target, str):
            raise ValueError(
                f"target={target!r} is not valid; use 'predicted', an int or one class per image."
            )
        if isinstance(target, int):
            return torch.full((n,), target, dtype=torch.long, device=logits.device)
        t = torch.as_tensor(target, dtype=torch.long).view(-1)[s : s + n]
        return t.to(logits.device)
