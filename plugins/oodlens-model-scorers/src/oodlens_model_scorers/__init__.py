r"""Scorers that can need the network (the model-aware scorer kind), registered through the
``oodlens`` entry point: ODIN, GradNorm, ASH, SCALE, DICE, and (module
:mod:`oodlens_model_scorers.methods_v2`) Monte-Carlo dropout, GradUncertainty, RankFeat,
i-ODIN, NAC, AdaScale, MCM and GL-MCM.

What each needs can depend on its parameters: ASH, SCALE and GradNorm are output-based
(cached features and head, one forward pass shared with every scorer) when they act on the
pooled penultimate features or the last layer, which is OpenOOD's setting for ASH and SCALE,
and model-aware (the network, in its own pass over the images) when asked to act on an inner
layer; DICE acts on the head only; ODIN always needs input gradients. Percentiles are in
percent (0-100), as everywhere in oodlens. Higher scores mean more in-distribution. torch is
imported inside the functions that need it, so listing scorers stays light.

Which are defined for vision transformers: ODIN and GradNorm (any network with a linear
head); DICE runs on any linear head but its weight ranking is meant for post-ReLU features. ASH and SCALE assume non-negative (post-ReLU) activations, as in the CNNs
their papers use: on features with negative values (e.g. a ViT's pre-logits) they refuse
with a message rather than produce numbers, and an inner layer must give a (B, C, H, W) map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import logsumexp

import oodlens
from oodlens.arrays import rows_per_chunk
from oodlens.compute import fitted_arrays, row_blocks, row_logsumexp, tensors_like, to_numpy
from oodlens.params import Interval, Options
from oodlens.scorers import ModelInputs

from .layers import Hooked, module_named, output_shape
from .methods_v2 import (
    GLMCM,
    IODIN,
    MCD,
    MCM,
    NAC,
    AdaScale,
    GradUncertainty,
    RankFeat,
    all_scorers,
)

__all__ = [
    "ODIN",
    "GradNorm",
    "ASH",
    "SCALE",
    "DICE",
    "MCD",
    "GradUncertainty",
    "RankFeat",
    "IODIN",
    "NAC",
    "AdaScale",
    "MCM",
    "GLMCM",
    "ash_shape",
    "scale_shape",
    "register_scorers",
]


def _blocks(array: np.ndarray):
    """float64 row blocks: numpy, or tensors on the compute device when one is set
    (:mod:`oodlens.compute`; the harness sets its CUDA device)."""
    yield from row_blocks(array, rows_per_chunk(array.shape[1]))


def _kept(n: int, percentile: float) -> int:
    """How many of n activations survive pruning at ``percentile`` (percent), at least 1."""
    return max(1, n - int(np.round(n * percentile / 100.0)))


def _sum_ratio(s1: Any, s2: Any) -> Any:
    """``s1 / s2`` per row, 0 where ``s2`` is 0: with non-negative activations that is an
    all-zero row (``s1`` is 0 too), which the scaling by ``exp(ratio)`` then leaves at zero
    instead of turning into NaN."""
    if isinstance(s1, np.ndarray):
        return np.divide(s1, s2, out=np.zeros_like(s1), where=s2 > 0)
    import torch

    return torch.where(s2 > 0, s1 / torch.where(s2 > 0, s2, torch.ones_like(s2)), 0.0)


def ash_shape(a: np.ndarray, percentile: float, variant: str) -> np.ndarray:
    """ASH on (N, D) activations, per row: keep the top ``100 - percentile`` % (at least
    one), zero the rest; then ``p``: as is; ``b``: every kept value set to (sum before
    pruning) / k; ``s``: scaled by exp(sum before / sum after)."""
    n, d = a.shape
    k = _kept(d, percentile)
    if not isinstance(a, np.ndarray):  # a torch tensor
        values, idx = a.topk(k, dim=1)
        if variant == "b":
            fill = (a.sum(1) / k)[:, None].expand(-1, k)
            return a.new_zeros(a.shape).scatter_(1, idx, fill)
        kept = a.new_zeros(a.shape).scatter_(1, idx, values)
        if variant == "s":
            kept *= _sum_ratio(a.sum(1), kept.sum(1)).exp()[:, None]
        return kept
    idx = np.argpartition(-a, k - 1, axis=1)[:, :k]
    rows = np.arange(n)[:, None]
    out = np.zeros_like(a)
    s1 = a.sum(axis=1)
    if variant == "b":
        out[rows, idx] = (s1 / k)[:, None]
        return out
    out[rows, idx] = a[rows, idx]
    if variant == "s":
        out *= np.exp(_sum_ratio(s1, out.sum(axis=1)))[:, None]
    return out


def scale_shape(a: np.ndarray, percentile: float) -> np.ndarray:
    """SCALE on (N, D) activations: every activation times exp(s1 / s2), s1 the sum of all,
    s2 the sum of the top ``100 - percentile`` % (no pruning)."""
    k = _kept(a.shape[1], percentile)
    if not isinstance(a, np.ndarray):  # a torch tensor
        return a * _sum_ratio(a.sum(1), a.topk(k, dim=1).values.sum(1)).exp()[:, None]
    top = -np.partition(-a, k - 1, axis=1)[:, :k]
    return a * np.exp(_sum_ratio(a.sum(axis=1), top.sum(axis=1)))[:, None]


def _check_nonnegative(name: str, a: Any) -> None:
    low = float(a.min())
    if low < 0:
        raise ValueError(
            f"{name} assumes non-negative (post-ReLU) activations, as in the CNNs of its paper; "
            f"these have negative values (min {low:.3g}), e.g. a vision transformer's "
            "pre-logits. It is not defined for them: use a CNN backbone, or layer= an inner "
            "ReLU feature map."
        )


def _energy_through(
    model: ModelInputs, layer: str, fn: Callable[[np.ndarray], np.ndarray], owner: str
) -> np.ndarray:
    """Energy of the logits with ``fn`` applied, per sample, to the flattened activations of
    ``layer`` (non-negative ones only)."""
    import torch

    net = model.model
    out = []

    def shaped(act):
        flat = act.detach().double().reshape(act.shape[0], -1).cpu().numpy()
        _check_nonnegative(owner, flat)
        return torch.from_numpy(fn(flat)).to(act.dtype).to(act.device).reshape(act.shape)

    with torch.no_grad(), Hooked(net, layer, shaped, owner):
        for x, _ in model.batches():
            logits = net(x.to(model.device)).double().cpu().numpy()
            out.append(logsumexp(logits, axis=1))
    return np.concatenate(out)


class ODIN(oodlens.Scorer):
    r"""ODIN (Liang, Li & Srikant, ICLR 2018): temperature scaling plus an input perturbation.

    .. math::
        \tilde x = x - \varepsilon \operatorname{sign}\big(-\nabla_x \log S_{\hat y}(x; T)\big),
        \qquad s(x) = \max_c S_c(\tilde x; T), \quad S(x; T) = \operatorname{softmax}(f(x)/T)

    The step is taken on the [0, 1] pixel scale: the sign of the gradient is divided by the
    preprocessing's per-channel std, as in OpenOOD and pytorch-ood. Defaults T = 1000 and
    ε = 0.0014 are the paper's CIFAR-10 choice, also OpenOOD's and pytorch-ood's defaults
    (the paper tunes ε per dataset on validation data: ``tuning_grid``). Always model-aware
    (it needs input gradients); defined for any classifier, vision transformers included.
    Paper: https://arxiv.org/abs/1706.02690 ; code: https://github.com/facebookresearch/odin

    Args:
        temperature: T > 0.
        magnitude: ε >= 0, the perturbation on the pixel scale.
    """

    name = "odin"
    description = "softmax at temperature T after an input perturbation (Liang et al. 2018)"
    requires = frozenset({"logits", "model"})
    parameter_constraints = {
        "temperature": [Interval(float, 0, None, closed="neither")],
        "magnitude": [Interval(float, 0, None)],
    }
    tuning_grid = {"magnitude": [0.0, 0.0005, 0.001, 0.0014, 0.002, 0.004]}

    def __init__(self, temperature: float = 1000.0, magnitude: float = 0.0014) -> None:
        self.temperature = temperature
        self.magnitude = magnitude

    def _score(self, outputs: oodlens.Outputs, model: ModelInputs | None = None) -> np.ndarray:
        import torch
        from torch.nn import functional as F

        net, dev, t = model.model, model.device, float(self.temperature)
        std = torch.tensor(model.std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
        flags = [(p, p.requires_grad) for p in net.parameters()]
        was_training = net.training
        out = []
        try:
            net.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            for x, _ in model.batches():
                with torch.inference_mode(False), torch.enable_grad():
                    x = x.to(dev).clone().requires_grad_(True)
                    logits = net(x) / t
                    loss = F.cross_entropy(logits, logits.argmax(dim=1))
                    (grad,) = torch.autograd.grad(loss, x)
                with torch.no_grad():
                    step = grad.sign() / std[:, : x.shape[1]]
                    perturbed = net(x.detach() - self.magnitude * step) / t
                    out.append(torch.softmax(perturbed.double(), dim=1).max(dim=1).values.cpu())
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            net.train(was_training)
        return torch.cat(out).numpy()


class GradNorm(oodlens.Scorer):
    r"""GradNorm (Huang, Geng & Li, NeurIPS 2021): the L1 norm of the gradient of the KL
    divergence between the uniform distribution and the softmax, w.r.t. chosen weights.

    With ``layer="head"`` (default, the paper's choice: the last layer's weights W) the
    gradient has a closed form in the softmax :math:`p = \operatorname{softmax}(z/T)` and
    the penultimate features f, so the scorer is output-based:

    .. math:: s(x) = \Big\lVert \frac{\partial}{\partial W} \frac{-1}{C}\sum_c \log p_c
        \Big\rVert_1 = \frac1T \sum_c \big|p_c - \tfrac1C\big| \; \sum_d |f_d|

    With ``layer`` the dotted name of an inner module, the gradient w.r.t. that module's
    parameters is computed by autograd, one image at a time (model-aware). Defined for any
    network with a linear head. Paper: https://arxiv.org/abs/2110.00218 ; code:
    https://github.com/deeplearning-wisc/gradnorm_ood

    The KL divergence is the mean over the classes, as in the paper's formula; OpenOOD's
    implementation sums over them, so its scores are C times ours (the same ranking, the same
    AUROC).

    Args:
        temperature: T > 0 (default 1, the paper's).
        layer: ``"head"`` or the dotted name of a module whose parameters' gradients count.
    """

    name = "gradnorm"
    description = "L1 norm of the gradient of KL(uniform || softmax) (Huang et al. 2021)"
    requires = frozenset({"features", "head", "logits"})
    parameter_constraints = {"temperature": [Interval(float, 0, None, closed="neither")]}

    def __init__(self, temperature: float = 1.0, layer: str = "head") -> None:
        self.temperature = temperature
        self.layer = layer

    def requirements(self) -> frozenset[str]:
        """Features and head for the closed form; the model for an inner layer."""
        if self.layer == "head":
            return frozenset({"features", "head", "logits"})
        return frozenset({"logits", "model"})

    def _score(self, outputs: oodlens.Outputs, model: ModelInputs | None = None) -> np.ndarray:
        if self.layer != "head":
            return self._score_inner(model)
        out = np.empty(outputs.n_samples)
        c = outputs.n_classes
        w, b = fitted_arrays(outputs.head_weight, outputs.head_bias)
        for start, f in _blocks(outputs.features):
            z = (f @ w.T + b) / self.temperature
            logp = z - row_logsumexp(z)[:, None]
            probs = np.exp(logp) if isinstance(logp, np.ndarray) else logp.exp()
            spread = abs(probs - 1.0 / c).sum(1)
            out[start : start + len(f)] = to_numpy(spread * abs(f).sum(1) / self.temperature)
        return out

    def _score_inner(self, model: ModelInputs) -> np.ndarray:
        import torch

        net = model.model
        params = list(module_named(net, self.layer, "gradnorm").parameters())
        if not params:
            raise ValueError(f"gradnorm: layer {self.layer!r} has no parameters.")
        out = []
        net.eval()
        for x, _ in model.batches():
            for xi in x.to(model.device):
                with torch.inference_mode(False), torch.enable_grad():
                    logits = net(xi.unsqueeze(0)) / self.temperature
                    loss = -torch.log_softmax(logits, dim=1).mean()
                    grads = torch.autograd.grad(loss, params)
                out.append(float(sum(g.abs().sum() for g in grads)))
        return np.asarray(out)


class _Shaping(oodlens.Scorer):
    """Shared code of ASH and SCALE: shape the activations, then the energy of the logits."""

    requires = frozenset({"features", "head", "logits"})
    feature_domain = "nonnegative"
    layer: str
    percentile: float

    def requirements(self) -> frozenset[str]:
        """Features and head on the penultimate layer; the model for an inner layer."""
        if self.layer == "penultimate":
            return frozenset({"features", "head", "logits"})
        return frozenset({"logits", "model"})

    def applies_to(self, model: Any, input_size: tuple[int, int, int] | None = None) -> str | None:
        """Defined on post-ReLU activation maps: not on a CLIP model's unit embeddings nor on
        a transformer's tokens (the pooled features of a (B, C, H, W) map, or such a map)."""
        if getattr(model, "is_zero_shot", False):
            return "its features are unit CLIP embeddings, not post-ReLU activations"
        if input_size is None:
            return None
        layer = None if self.layer == "penultimate" else self.layer
        shape = output_shape(model, layer, input_size)
        if shape is None or len(shape) != 4:
            where = "its features" if layer is None else f"its layer {layer!r}"
            return (
                f"{where} are not a (B, C, H, W) activation map (a transformer's tokens?): the "
                "method assumes post-ReLU CNN activations"
            )
        return None

    def _shape(self, a: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _fit(self, train: oodlens.Outputs) -> None:
        if self.layer == "penultimate":
            for _, f in _blocks(train.features):
                _check_nonnegative(self.name, f)

    def _score(self, outputs: oodlens.Outputs, model: ModelInputs | None = None) -> np.ndarray:
        if self.layer != "penultimate":
            return _energy_through(model, self.layer, self._shape, self.name)
        w, b = fitted_arrays(outputs.head_weight, outputs.head_bias)
        out = np.empty(outputs.n_samples)
        for start, f in _blocks(outputs.features):
            _check_nonnegative(self.name, f)
            shaped = self._shape(f)
            if not isinstance(shaped, type(f)):  # shaped on the host (ASH "b")
                shaped = f.new_tensor(shaped)
            out[start : start + len(f)] = to_numpy(row_logsumexp(shaped @ w.T + b))
        return out

    def _torch_shape(self, a: Any) -> Any:
        """The shaping of a float64 tensor, differentiable where it is (piecewise)."""
        return self._shape(a)

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        weight, bias = head
        shaped = self._torch_shape(features.double())
        return row_logsumexp(shaped @ weight.double().T + bias.double())


class ASH(_Shaping):
    r"""Activation shaping (Djurisic, Bozanic, Ashok & Liu, ICLR 2023), then energy.

    Per sample, the activations a below the ``percentile``-th percentile are set to 0; the
    k kept are then left as they are (``variant="p"``), all set to
    :math:`s_1/k` (``"b"``), or scaled by :math:`e^{s_1/s_2}` (``"s"``), with :math:`s_1`,
    :math:`s_2` the sums before and after pruning; the score is
    :math:`\log\sum_c e^{z_c}` of the logits of the shaped activations.

    ``layer="penultimate"`` (default) shapes the pooled penultimate features, as OpenOOD does
    for every backbone (output-based, from the cached features and head); the paper shapes
    the last feature map before pooling, which ``layer="<its name>"`` (e.g. ``"layer4"`` of
    a timm ResNet) does in a model-aware pass. Defaults ``variant="s"``, ``percentile=65``:
    pytorch-ood's defaults (kept so that our published tables stay comparable with earlier
    runs). Neither is what the other references run: the official repository's ImageNet and
    CIFAR configurations run ASH-S at 90, and OpenOOD's evaluator applies ASH-B at 90 (its
    leaderboard's "ASH" rows are ``ash:variant=b,percentile=90``; ``--compare-published``
    marks our default as a variant of them). OpenOOD searches 65-95: ``tuning_grid``. Not defined for activations with negative values (see the module
    docstring). Paper: https://arxiv.org/abs/2209.09858 ; code:
    https://github.com/andrijazz/ash

    Args:
        variant: ``"p"``, ``"b"`` or ``"s"``.
        percentile: share of each sample's activations pruned, in percent [0, 100).
        layer: ``"penultimate"`` or the dotted name of a module with a (B, C, H, W) output.
    """

    name = "ash"
    description = "energy after pruning and shaping activations: ASH-P/-B/-S (Djurisic et al. 2023)"
    parameter_constraints = {
        "variant": [Options(("p", "b", "s"))],
        "percentile": [Interval(float, 0, 100, closed="left")],
    }
    tuning_grid = {"percentile": [65, 70, 75, 80, 85, 90, 95]}

    def __init__(
        self, variant: str = "s", percentile: float = 65.0, layer: str = "penultimate"
    ) -> None:
        self.variant = variant
        self.percentile = percentile
        self.layer = layer

    def _shape(self, a: Any) -> Any:
        if self.variant == "b" and not isinstance(a, np.ndarray):
            # ties at the cut (e.g. zeros) keep other positions with torch.topk than with
            # numpy's argpartition, and "b" gives them weight: shaped on the host, so that a
            # GPU run gives the CPU's numbers
            return ash_shape(to_numpy(a), self.percentile, "b")
        return ash_shape(a, self.percentile, self.variant)

    def _torch_shape(self, a: Any) -> Any:
        if self.variant != "b":
            return ash_shape(a, self.percentile, self.variant)
        # the kept positions as the host picks them (see _shape), the filled value s1/k
        # differentiable
        import torch

        k = _kept(a.shape[1], self.percentile)
        kept = np.argpartition(-to_numpy(a), k - 1, axis=1)[:, :k]
        index = torch.as_tensor(kept, device=a.device)
        fill = (a.sum(1, keepdim=True) / k).expand(-1, k)
        return a.new_zeros(a.shape).scatter(1, index, fill)


class SCALE(_Shaping):
    r"""SCALE (Xu, Chen, Franchi & Yao, ICLR 2024): ASH-S's scaling without the pruning.

    .. math:: s(x) = \log \sum_c \exp\big(W (a\, e^{s_1/s_2}) + b\big)_c

    with :math:`s_1` the sum of all activations and :math:`s_2` the sum of the top
    ``100 - percentile`` % of them. ``layer`` as for ``ash`` (default the pooled penultimate
    features, OpenOOD's setting). Default ``percentile=85``, the paper's ImageNet choice
    (pytorch-ood defaults to 65; OpenOOD searches 65-95: ``tuning_grid``). Not defined for
    activations with negative values. Paper: https://arxiv.org/abs/2310.00227 ; code:
    https://github.com/kai422/SCALE
    """

    name = "scale"
    description = "energy after scaling activations by exp(s1/s2) (Xu et al. 2024)"
    parameter_constraints = {"percentile": [Interval(float, 0, 100, closed="left")]}
    tuning_grid = {"percentile": [65, 70, 75, 80, 85, 90, 95]}

    def __init__(self, percentile: float = 85.0, layer: str = "penultimate") -> None:
        self.percentile = percentile
        self.layer = layer

    def _shape(self, a: np.ndarray) -> np.ndarray:
        return scale_shape(a, self.percentile)


class DICE(oodlens.Scorer):
    r"""DICE (Sun & Li, ECCV 2022): sparsify the classifier by weight contributions, then energy.

    The contribution of weight :math:`W_{cd}` is :math:`W_{cd}\,\bar f_d` with
    :math:`\bar f` the mean training feature; weights whose contribution is at or below the
    ``percentile``-th percentile of all contributions are set to 0:

    .. math:: s(x) = \log\sum_c \exp\big((M \odot W) f + b\big)_c

    Output-based (features and head); meant for non-negative (post-ReLU) features, whose
    mean contribution ranks the weights (on features centred at zero the ranking is noise);
    for a ViT it runs but is not the paper's setting. Default
    ``percentile=90``: the paper's CIFAR choice (it uses 70 for ImageNet; pytorch-ood has no
    default). Paper: https://arxiv.org/abs/2111.09805 ; code:
    https://github.com/deeplearning-wisc/dice

    Args:
        percentile: share of the weights masked, in percent [0, 100).
    """

    name = "dice"
    description = "energy of a head sparsified by mean weight contributions (Sun & Li 2022)"
    requires = frozenset({"features", "head", "logits"})
    feature_domain = "nonnegative"  # contributions of post-ReLU units, as in the paper
    parameter_constraints = {"percentile": [Interval(float, 0, 100, closed="left")]}
    tuning_grid = {"percentile": [10, 30, 50, 70, 90]}

    def __init__(self, percentile: float = 90.0) -> None:
        self.percentile = percentile

    def _fit(self, train: oodlens.Outputs) -> None:
        total = np.zeros(train.features.shape[1])
        for _, f in _blocks(train.features):
            total += to_numpy(f.sum(0))
        mean = total / train.n_samples
        w = np.asarray(train.head_weight, np.float64)
        contrib = w * mean[None, :]
        self.threshold_ = float(np.percentile(contrib, self.percentile))
        self.masked_weight_ = np.where(contrib > self.threshold_, w, 0.0)

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        out = np.empty(outputs.n_samples)
        w, b = fitted_arrays(self.masked_weight_, outputs.head_bias)
        for start, f in _blocks(outputs.features):
            out[start : start + len(f)] = to_numpy(row_logsumexp(f @ w.T + b))
        return out

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        (w,) = tensors_like(features, self.masked_weight_)
        return row_logsumexp(features.double() @ w.T + head[1].double())


@oodlens.hookimpl
def register_scorers(register: Callable[[Any], None]) -> None:
    """Register the model scorers with oodlens."""
    for cls in (ODIN, GradNorm, ASH, SCALE, DICE, *all_scorers()):
        register(cls)
