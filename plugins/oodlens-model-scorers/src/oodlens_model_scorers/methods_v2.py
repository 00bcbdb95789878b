r"""The model-aware scorers of "Methods v2 (b)": Monte-Carlo dropout, GradUncertainty,
RankFeat and i-ODIN (the ones that need the network itself, in their own passes over the
images; GradUncertainty's head form is output-based, as GradNorm's), and MCM for CLIP
zero-shot classifiers.

Higher scores mean more in-distribution (pytorch-ood's detectors return the negation).
torch is imported inside the functions that need it, so listing scorers stays light.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from scipy.special import logsumexp, softmax

import oodlens
from oodlens.arrays import iter_row_chunks, rows_per_chunk
from oodlens.params import Interval, ListOf, Options, Text
from oodlens.scorers import ModelInputs

from .layers import Hooked, module_named, output_shape

__all__ = [
    "MCD",
    "GradUncertainty",
    "RankFeat",
    "IODIN",
    "NAC",
    "AdaScale",
    "MCM",
    "GLMCM",
    "all_scorers",
]


def _dropout_layers(model: Any) -> list[str]:
    """The modules that drop activations in training mode: torch's dropout layers with
    p > 0, and timm modules with a ``drop_rate`` > 0 (timm's heads call
    ``F.dropout(x, drop_rate, self.training)`` without a module)."""
    from torch import nn

    found = []
    for name, module in model.named_modules():
        rate = (
            module.p
            if isinstance(module, nn.modules.dropout._DropoutNd)
            else getattr(module, "drop_rate", 0.0)
        )
        if isinstance(rate, int | float) and rate > 0:
            found.append(name or type(module).__name__)
    return found


@contextmanager
def _dropout_on(net: Any) -> Iterator[None]:
    """The network in training mode except its batch-norm layers (running statistics and
    normalisation stay those of evaluation), as pytorch-ood's MCD; restored afterwards."""
    from torch import nn

    was_training = net.training
    net.train()
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(False)
    try:
        yield
    finally:
        net.train(was_training)


class MCD(oodlens.Scorer):
    r"""Monte-Carlo dropout (Gal & Ghahramani, ICML 2016): ``samples`` forward passes with
    dropout active (batch normalisation kept in evaluation mode), and

    .. math::
        s(x) = \max_c \bar p_c \;\; (\texttt{mode="mean"}), \qquad
        s(x) = -\frac1C \sum_c \operatorname{Var}_n\big[p^{(n)}_c\big] \;\;
        (\texttt{mode="var"})

    with :math:`p^{(n)}` the softmax of pass n and :math:`\bar p` their mean (the variance
    with Bessel's correction). Model-aware, and defined only for networks with dropout (a
    dropout layer with p > 0, or a timm ``drop_rate`` > 0): on others it does not apply
    (``all+model`` skips it and says why). The masks are drawn from a generator seeded with
    ``seed`` for each call, so a score is reproducible (it still depends on which images
    share a batch: the masks are drawn per batch).

    Defaults: 30 samples (pytorch-ood's); ``mode="mean"``, the paper's predictive
    distribution and OpenOOD's dropout postprocessor (which averages logits over 10 passes);
    pytorch-ood's default is ``"var"``. Paper: https://arxiv.org/abs/1506.02142

    Args:
        samples: number of stochastic passes (>= 2).
        mode: ``"mean"`` or ``"var"``.
        seed: seed of the dropout masks.
    """

    name = "mcd"
    description = "Monte-Carlo dropout: mean softmax (or its variance) over passes (Gal 2016)"
    requires = frozenset({"logits", "model"})
    parameter_constraints = {
        "samples": [Interval(int, 2, None)],
        "mode": [Options(("mean", "var"))],
        "seed": [Interval(int, 0, None)],
    }

    def __init__(self, samples: int = 30, mode: str = "mean", seed: int = 0) -> None:
        self.samples = samples
        self.mode = mode
        self.seed = seed

    def applies_to(self, model: Any, input_size: tuple[int, int, int] | None = None) -> str | None:
        if _dropout_layers(model):
            return None
        return (
            "it has no dropout (no dropout layer with p > 0, timm drop_rate 0): Monte-Carlo "
            "dropout needs a network trained with dropout"
        )

    def _score(self, outputs: oodlens.Outputs, model: ModelInputs | None = None) -> np.ndarray:
        import torch

        reason = self.applies_to(model.model)
        if reason is not None:
            raise ValueError(f"mcd does not apply to this network: {reason}.")
        net, out = model.model, []
        with torch.random.fork_rng(devices=[]), _dropout_on(net), torch.no_grad():
            torch.manual_seed(int(self.seed))
            for x, _ in model.batches():
                x = x.to(model.device)
                probs = torch.stack(
                    [net(x).double().softmax(dim=1).cpu() for _ in range(int(self.samples))]
                )
                if self.mode == "mean":
                    out.append(probs.mean(0).max(dim=1).values)
                else:
                    out.append(-probs.var(0).mean(dim=1))
        return torch.cat(out).numpy()


class GradUncertainty(oodlens.Scorer):
    r"""GradUncertainty (Oberdiek, Rottmann & Gottschalk, 2018; Lee & AlRegib, ICIP 2020):
    the squared gradient norms of the binary cross-entropy between the softmax and the
    all-ones "confounding label", :math:`L = -\sum_c \log p_c`, over chosen parameters.
    Confident (in-distribution) inputs give large gradients.

    With ``layer="head"`` (default; OpenOOD's use of the method, and pytorch-ood's example)
    the gradient w.r.t. the logits is :math:`g = Cp - 1`, so the head's weight and bias
    gradients have a closed form and the scorer is output-based:

    .. math:: s(x) = \lVert Cp - \mathbf 1 \rVert_2^2 \, \big(\lVert f \rVert_2^2 + 1\big)

    With ``layer`` the dotted name of a module (or ``"all"``), the per-image gradients
    w.r.t. its parameters are computed by autograd (model-aware) and their squared norms
    summed. pytorch-ood's ``GradUncertainty`` returns the negation, over every parameter
    unless filtered. Paper: https://arxiv.org/abs/2008.08030

    Args:
        layer: ``"head"``, ``"all"``, or the dotted name of a module.
    """

    name = "grad_uncertainty"
    description = "squared gradient norm of BCE(softmax, all ones) (Lee & AlRegib 2020)"
    requires = frozenset({"logits", "features", "head"})
    parameter_constraints = {"layer": [Text()]}

    def __init__(self, layer: str = "head") -> None:
        self.layer = layer

    def requirements(self) -> frozenset[str]:
        """Features and head for the closed form; the model for any other layer."""
        if self.layer == "head":
            return frozenset({"logits", "features", "head"})
        return frozenset({"logits", "model"})

    def _score(self, outputs: oodlens.Outputs, model: ModelInputs | None = None) -> np.ndarray:
        if self.layer != "head":
            return self._score_inner(model)
        w = np.asarray(outputs.head_weight, dtype=np.float64)
        b = np.asarray(outputs.head_bias, dtype=np.float64)
        c = outputs.n_classes
        out = np.empty(outputs.n_samples)
        for start, f in iter_row_chunks(
            outputs.features, rows_per_chunk(outputs.features.shape[1])
        ):
            f = f.astype(np.float64, copy=False)
            g = c * softmax(f @ w.T + b, axis=1) - 1.0
            out[start : start + len(f)] = (g**2).sum(1) * ((f**2).sum(1) + 1.0)
        return out

    def _score_inner(self, model: ModelInputs) -> np.ndarray:
        import torch
        from torch.func import functional_call, grad, vmap

        net = model.model
        if self.layer == "all":
            prefix = ""
        else:
            module_named(net, self.layer, "grad_uncertainty")
            prefix = self.layer + "."
        chosen = {n: p.detach() for n, p in net.named_parameters() if n.startswith(prefix)}
        if not chosen:
            raise ValueError(f"grad_uncertainty: layer {self.layer!r} has no parameters.")
        fixed = {n: p.detach() for n, p in net.named_parameters() if n not in chosen}
        fixed.update(dict(net.named_buffers()))

        def loss(params, x):
            logits = functional_call(net, {**params, **fixed}, (x.unsqueeze(0),))
            return -torch.log_softmax(logits, dim=1).sum()

        was_training = net.training
        net.eval()
        out = []
        try:
            for x, _ in model.batches():
                with torch.inference_mode(False), torch.enable_grad():
                    grads = vmap(grad(loss), in_dims=(None, 0))(chosen, x.to(model.device))
                norms = sum((g.double() ** 2).flatten(1).sum(1) for g in grads.values())
                out.append(norms.detach().cpu())
        finally:
            net.train(was_training)
        return torch.cat(out).numpy()


def _remove_rank1(maps: Any) -> Any:
    """(B, C, H, W) maps less each one's rank-1 part :math:`\\sigma_1 u_1 v_1^\top` of its
    (C, HW) matrix (its largest singular triplet)."""
    import torch

    b, c, h, w = maps.shape
    if h * w == 1:
        raise ValueError(
            "rankfeat: the layer gives a 1 x 1 map, a rank-1 matrix that the removal would "
            "empty; use larger images or an earlier layer (layer=...)."
        )
    m = maps.reshape(b, c, h * w)
    u, s, vh = torch.linalg.svd(m.double(), full_matrices=False)
    rank1 = s[:, :1, None] * (u[:, :, :1] @ vh[:, :1, :])
    return (m.double() - rank1).to(maps.dtype).reshape(b, c, h, w)


class RankFeat(oodlens.Scorer):
    r"""RankFeat (Song, Sebe & Wang, NeurIPS 2022): the energy of the logits after removing
    the rank-1 component of a stage's feature maps.

    .. math:: s(x) = \log \sum_c \exp z_c\big(X - \sigma_1 u_1 v_1^\top\big)

    with :math:`X` the (C, HW) map of the stage ``layer`` of one image and
    :math:`\sigma_1, u_1, v_1` its largest singular value and vectors (exact SVD, in
    float64), the rest of the network run on the modified map. Model-aware; needs (B, C, H,
    W) maps (a CNN stage). Default: the backbone's last stage (timm's ``feature_info``; the
    paper's block 4, pytorch-ood's example); OpenOOD averages the energies of blocks 3 and 4
    (two scorers here: ``rankfeat:layer=layer3`` and the default, or their fusion).
    Paper: https://arxiv.org/abs/2209.08590 ; code: https://github.com/KingJamesSong/RankFeat

    Args:
        layer: dotted module name, or ``None`` for the last stage.
    """

    name = "rankfeat"
    description = "energy after removing the rank-1 part of a stage's maps (Song et al. 2022)"
    requires = frozenset({"logits", "model"})
    parameter_constraints = {"layer": [Text(), None]}

    def __init__(self, layer: str | None = None) -> None:
        self.layer = layer

    def applies_to(self, model: Any, input_size: tuple[int, int, int] | None = None) -> str | None:
        info = getattr(model, "feature_info", None)
        if self.layer is None and not info:
            return "it does not name its stages (timm feature_info); give layer="
        if input_size is None:
            return None
        layer = self._layer(model)
        shape = output_shape(model, layer, input_size)
        if shape is None or len(shape) != 4:
            return f"its layer {layer!r} does not give (B, C, H, W) maps"
        if shape[-1] * shape[-2] == 1:
            return (
                f"at {input_size[-1]} px its layer {layer!r} gives a 1 x 1 map, a rank-1 "
                "matrix that the removal would empty (larger images, or layer= an earlier "
                "stage)"
            )
        return None

    def _layer(self, net: Any) -> str:
        return self.layer if self.layer is not None else net.feature_info[-1]["module"]

    def _score(self, outputs: oodlens.Outputs, model: ModelInputs | None = None) -> np.ndarray:
        import torch

        net = model.model
        reason = self.applies_to(net)
        if reason is not None:
            raise ValueError(f"rankfeat does not apply to this network: {reason}.")
        layer = self._layer(net)
        out = []
        net.eval()
        with torch.no_grad(), Hooked(net, layer, _remove_rank1, "rankfeat"):
            for x, _ in model.batches():
                logits = net(x.to(model.device)).double().cpu().numpy()
                out.append(logsumexp(logits, axis=1))
        return np.concatenate(out)


class IODIN(oodlens.Scorer):
    r"""i-ODIN (OpenOOD's ``iodin``): ODIN with its input perturbation confined to the one
    input element (pixel and channel) where the gradient is largest.

    .. math::
        \tilde x = x - \varepsilon\, m \odot \operatorname{sign}_{\ge 0}(\nabla_x L) / \sigma,
        \qquad s(x) = \max_c \operatorname{softmax}\big(f(\tilde x)/T\big)_c

    with :math:`L` the cross-entropy of :math:`f(x)/T` against the predicted class,
    :math:`m` the indicator of the element of largest :math:`|\nabla_x L|` of each image,
    :math:`\operatorname{sign}_{\ge 0}` +1 where the gradient is >= 0 and -1 elsewhere, and
    :math:`\sigma` the preprocessing's per-channel std (the step on the pixel scale, as
    ODIN's). Defaults T = 1000 and ε = 0.0014, OpenOOD's (``configs/postprocessors/
    iodin.yml``; it sweeps T over 1-1000 and ε over 0.0014, 0.0028: ``tuning_grid``).
    Model-aware. OpenOOD only (pytorch-ood has no such detector).

    Args:
        temperature: T > 0.
        magnitude: ε >= 0.
    """

    name = "iodin"
    description = "ODIN perturbing only the input element of largest gradient (OpenOOD's i-ODIN)"
    requires = frozenset({"logits", "model"})
    parameter_constraints = {
        "temperature": [Interval(float, 0, None, closed="neither")],
        "magnitude": [Interval(float, 0, None)],
    }
    tuning_grid = {"temperature": [1.0, 10.0, 100.0, 1000.0], "magnitude": [0.0014, 0.0028]}

    def __init__(self, temperature: float = 1000.0, magnitude: float = 0.0014) -> None:
        self.temperature = temperature
        self.magnitude = magnitude

    def _score(self, outputs: oodlens.Outputs, model: ModelInputs | None = None) -> np.ndarray:
        import torch
        from torch.nn import functional as F

        net, dev, t = model.model, model.device, float(self.temperature)
        std = torch.tensor(model.std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
        was_training = net.training
        out = []
        try:
            net.eval()
            for x, _ in model.batches():
                with torch.inference_mode(False), torch.enable_grad():
                    x = x.to(dev).clone().requires_grad_(True)
                    logits = net(x)
                    loss = F.cross_entropy(logits / t, logits.detach().argmax(dim=1))
                    (gradient,) = torch.autograd.grad(loss, x)
                with torch.no_grad():
                    flat = gradient.abs().flatten(1)
                    mask = torch.zeros_like(flat).scatter_(1, flat.argmax(1, keepdim=True), 1.0)
                    step = torch.where(gradient >= 0, 1.0, -1.0) / std[:, : x.shape[1]]
                    moved = net(x.detach() - self.magnitude * step * mask.view_as(x)) / t
                    out.append(torch.softmax(moved.double(), dim=1).max(dim=1).values.cpu())
        finally:
            net.train(was_training)
        return torch.cat(out).numpy()


def _geometric_bins(z: Any, m: int, eps: float = 1e-6) -> Any:
    """Bin indices in [0, m) of values in (0, 1) on bins that are geometric towards both 0
    and 1 (edges from ``eps`` to 0.5 evenly spaced in log, mirrored above 0.5), as
    pytorch-ood's NACUE bins them."""
    import torch

    z = z.clamp(eps, 1 - eps)
    half = m // 2
    left = torch.logspace(np.log10(eps), np.log10(0.5), steps=half + 1, dtype=z.dtype)
    edges = torch.cat([left, (1.0 - left.flip(0))[1:]]).to(z.device)
    return (torch.bucketize(z, edges, right=False) - 1).clamp(0, m - 1)


class NAC(oodlens.Scorer):
    r"""Neuron activation coverage (Liu et al., ICLR 2024, "Neuron Activation Coverage:
    Rethinking Out-of-distribution Detection and Generalization"), as pytorch-ood's NACUE.

    For each neuron of the chosen layers (a channel of a (B, C, H, W) map, spatially
    averaged), its state :math:`\hat z = \sigma\big(\alpha\,
    \overline{z \odot \partial \mathrm{KL}(u \,\|\, p)/\partial z}\big)` (the
    activation times the gradient of the KL divergence between the uniform distribution
    and the softmax) falls in one of M bins, geometric towards 0 and 1. Fitting counts, over
    the training images, how often each neuron's bin is hit; a sample's score is its
    coverage, summed over layers:

    .. math:: s(x) = \sum_l \frac{1}{N_l} \sum_{n} \min\big(\mathrm{count}_{l,n}
        (\mathrm{bin}(\hat z_n(x))) / O^*, 1\big)

    Model-aware, in fit too (a forward and a backward pass over the training images).
    Defaults: M = 50 bins, α = 100, O* = 50 (pytorch-ood's); layers: the backbone's last two
    stages (timm's ``feature_info``; pytorch-ood's example, ``[layer3, layer4]`` of a
    ResNet). OpenOOD's NAC uses uniform bins and its own per-layer settings (its ResNet-18
    configuration reads four layers with separate α, M and O*): these scores follow
    pytorch-ood's definition. Paper: https://arxiv.org/abs/2306.02879

    Args:
        layers: dotted module names, or ``None`` for the last two stages.
        bins: M, the bins per neuron (>= 2).
        alpha: α > 0, the sigmoid's steepness.
        o_star: O* >= 1, the count at which a bin is fully covered.
    """

    name = "nac"
    description = "neuron activation coverage of gradient-weighted states (Liu et al. 2024)"
    requires = frozenset({"logits", "model"})
    parameter_constraints = {
        "layers": [ListOf([Text()], min_length=1, single=True), None],
        "bins": [Interval(int, 2, None)],
        "alpha": [Interval(float, 0, None, closed="neither")],
        "o_star": [Interval(int, 1, None)],
    }

    def __init__(
        self,
        layers: list[str] | None = None,
        bins: int = 50,
        alpha: float = 100.0,
        o_star: int = 50,
    ) -> None:
        self.layers = layers
        self.bins = bins
        self.alpha = alpha
        self.o_star = o_star

    def applies_to(self, model: Any, input_size: tuple[int, int, int] | None = None) -> str | None:
        if self.layers is None and len(getattr(model, "feature_info", None) or ()) < 2:
            return "it does not name two stages (timm feature_info); give layers="
        return None

    def _layer_names(self, net: Any) -> list[str]:
        if self.layers is None:
            return [str(f["module"]) for f in net.feature_info[-2:]]
        return [self.layers] if isinstance(self.layers, str) else list(self.layers)

    def _states(self, model: ModelInputs) -> Iterator[list[Any]]:
        """Per batch, the binned neuron states of each layer ((B, N_l) index tensors)."""
        import torch

        net = model.model
        reason = self.applies_to(net)
        if reason is not None:
            raise ValueError(f"nac does not apply to this network: {reason}.")
        modules = [module_named(net, n, "nac") for n in self._layer_names(net)]
        captured: list[Any] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: captured.append(out)) for m in modules]
        was_training = net.training
        try:
            net.eval()
            for x, _ in model.batches():
                captured.clear()
                with torch.inference_mode(False), torch.enable_grad():
                    # the input requires a gradient, so that every activation is in the
                    # graph whatever the parameters' requires_grad
                    x = x.to(model.device).clone().requires_grad_(True)
                    p = torch.softmax(net(x), dim=1)
                    loss = -torch.log(p + 1e-12).mean(dim=1).sum()
                    grads = torch.autograd.grad(loss, captured)
                states = []
                for z, g in zip(captured, grads, strict=True):
                    prod = (z * g).detach()
                    prod = prod.mean(dim=(2, 3)) if prod.ndim == 4 else prod.flatten(1)
                    states.append(_geometric_bins(torch.sigmoid(self.alpha * prod), self.bins))
                yield states
        finally:
            for h in hooks:
                h.remove()
            net.train(was_training)

    def _fit(self, train: oodlens.Outputs, model: ModelInputs | None = None) -> None:
        import torch

        counts: list[Any] = []
        for states in self._states(model):
            for li, idx in enumerate(states):
                n = idx.shape[1]
                if len(counts) <= li:
                    counts.append(torch.zeros(n * self.bins, dtype=torch.long))
                flat = (idx + torch.arange(n, device=idx.device)[None, :] * self.bins).flatten()
                counts[li].scatter_add_(0, flat.cpu(), torch.ones_like(flat.cpu()))
        self.counts_ = tuple(c.view(-1, self.bins).numpy() for c in counts)

    def _score(self, outputs: oodlens.Outputs, model: ModelInputs | None = None) -> np.ndarray:
        import torch

        out = []
        for states in self._states(model):
            total = torch.zeros(states[0].shape[0], dtype=torch.float64)
            for idx, counts in zip(states, self.counts_, strict=True):
                hits = torch.as_tensor(counts).gather(1, idx.cpu().T).T.double()
                total += (hits / float(self.o_star)).clamp(max=1.0).mean(dim=1)
            out.append(total)
        return torch.cat(out).numpy()


class AdaScale(oodlens.Scorer):
    r"""AdaScale (Regmi et al., 2025, "AdaSCALE: Adaptive Scaling for OOD Detection"),
    OpenOOD's ``adascale_a`` / ``adascale_l``: SCALE with a percentile adapted per sample to
    how much its strongest activations move under a small input perturbation.

    For an image x with penultimate features f: the gradient g of its top logit w.r.t. the
    input; :math:`\tilde x` = x + 0.5 sign(g) on the fraction ``o`` of input elements where
    |g| is *smallest*; :math:`\tilde f` its features. With :math:`T_k(f)` the indices of the k%
    largest entries of f,

    .. math::
        Q(x) = \sum_{j \in T_{k_1}(f)} \max(\tilde f_j, 0)
            + \lambda \sum_{j \in T_{k_2}(f)} |f_j - \tilde f_j|, \qquad
        p(x) = p_{\min} + \big(1 - F(Q(x))\big)(p_{\max} - p_{\min})

    with F the empirical CDF of Q over the fitting images. Then
    :math:`r = \sum_j a_j / \sum_{\text{top } n - \mathrm{round}(n p / 100)} a_j` on
    :math:`a = \max(f, 0)`, and the score is the energy of :math:`W(f e^{r}) + b` (variant
    ``"a"``) or of :math:`r^2 (W f + b)` (``"l"``). Model-aware: fit and score each take a
    backward and two forward passes per image.

    Defaults are OpenOOD's configuration (percentiles (75, 85), k1 = 5%, k2 = 1%, λ = 10,
    o = 0.05, 5,000 fitting images). OpenOOD fits F on a random 5,000 of its ID val split;
    here on a random ``num_samples`` of the training images (the images model-aware scorers
    are fitted on). OpenOOD only (no pytorch-ood detector). Paper:
    https://arxiv.org/abs/2503.08023

    Args:
        variant: ``"a"`` (activation scaling) or ``"l"`` (logit scaling).
        percentiles: (p_min, p_max), 0 < p_min <= p_max < 100.
        k1: percent of the features whose perturbed activations count.
        k2: percent of the features whose shift counts.
        lmbda: λ >= 0.
        o: fraction of input elements perturbed, in (0, 1).
        num_samples: fitting images drawn (at most the training set).
        seed: seed of that draw.
    """

    name = "adascale"
    description = "SCALE with a per-sample percentile from a perturbation's shift (AdaSCALE)"
    requires = frozenset({"logits", "model"})
    parameter_constraints = {
        "variant": [Options(("a", "l"))],
        "percentiles": [
            ListOf([Interval(float, 0, 100, closed="neither")], min_length=2, max_length=2)
        ],
        "k1": [Interval(float, 0, 100, closed="right")],
        "k2": [Interval(float, 0, 100, closed="right")],
        "lmbda": [Interval(float, 0, None)],
        "o": [Interval(float, 0, 1, closed="neither")],
        "num_samples": [Interval(int, 1, None)],
        "seed": [Interval(int, 0, None)],
    }

    def __init__(
        self,
        variant: str = "a",
        percentiles: tuple[float, float] = (75.0, 85.0),
        k1: float = 5.0,
        k2: float = 1.0,
        lmbda: float = 10.0,
        o: float = 0.05,
        num_samples: int = 5000,
        seed: int = 0,
    ) -> None:
        self.variant = variant
        self.percentiles = percentiles
        self.k1 = k1
        self.k2 = k2
        self.lmbda = lmbda
        self.o = o
        self.num_samples = num_samples
        self.seed = seed

    def _passes(self, model: ModelInputs, keep: np.ndarray | None = None) -> Iterator[Any]:
        """Per batch (only the rows ``keep`` selects, when given): the features f and the
        features of the perturbed images."""
        import torch

        from oodlens.network import forward_all

        net, start = model.model, 0
        was_training = net.training
        try:
            net.eval()
            for x, _ in model.batches():
                rows = np.arange(start, start + len(x))
                start += len(x)
                if keep is not None:
                    chosen = keep[rows]
                    if not chosen.any():
                        continue
                    x = x[torch.as_tensor(chosen)]
                with torch.inference_mode(False), torch.enable_grad():
                    x = x.to(model.device).clone().requires_grad_(True)
                    logits, f = forward_all(net, x)
                    top = logits.gather(1, logits.detach().argmax(1, keepdim=True)).sum()
                    (g,) = torch.autograd.grad(top, x)
                with torch.no_grad():
                    flat = g.abs().flatten(1)
                    n = int(flat.shape[1] * self.o)
                    mask = torch.zeros_like(flat)
                    if n:
                        mask.scatter_(1, flat.topk(n, dim=1, largest=False).indices, 1.0)
                    moved = x.detach() + g.sign() * mask.view_as(x) * 0.5
                    _, f_moved = forward_all(net, moved)
                yield f.detach().double(), f_moved.double()
        finally:
            net.train(was_training)

    def _q(self, f: Any, f_moved: Any) -> Any:
        import torch

        d = f.shape[1]
        k1, k2 = int(d * self.k1 / 100), int(d * self.k2 / 100)
        top1 = f.topk(k1, dim=1).indices
        top2 = f.topk(k2, dim=1).indices
        return torch.relu(f_moved).gather(1, top1).sum(1) + self.lmbda * (
            (f - f_moved).abs().gather(1, top2).sum(1)
        )

    def _fit(self, train: oodlens.Outputs, model: ModelInputs | None = None) -> None:
        rng = np.random.default_rng(int(self.seed))
        n = model.n_samples
        keep = np.zeros(n, bool)
        keep[rng.permutation(n)[: min(int(self.num_samples), n)]] = True
        q = [self._q(f, fm).cpu().numpy() for f, fm in self._passes(model, keep)]
        self.reference_ = np.sort(np.concatenate(q))

    def _score(self, outputs: oodlens.Outputs, model: ModelInputs | None = None) -> np.ndarray:
        import torch

        low, high = (float(p) for p in self.percentiles)
        head = model.model.get_classifier()
        out = []
        for f, f_moved in self._passes(model):
            q = self._q(f, f_moved).cpu().numpy()
            below = np.searchsorted(self.reference_, q, side="right") / len(self.reference_)
            p = torch.as_tensor(low + (1.0 - below) * (high - low), device=f.device)
            a = torch.relu(f)
            d = a.shape[1]
            ks = d - torch.round(d * p / 100.0).long()
            ranked = a.sort(dim=1, descending=True).values
            kept = torch.arange(d, device=f.device)[None, :] < ks[:, None]
            r = a.sum(1) / (ranked * kept).sum(1)
            with torch.no_grad():
                w = head.weight.double()
                b = head.bias.double() if head.bias is not None else 0.0
                if self.variant == "a":
                    z = (f * torch.exp(r)[:, None]) @ w.T + b
                else:
                    z = (f @ w.T + b) * (r**2)[:, None]
                out.append(torch.logsumexp(z, dim=1).cpu())
        return torch.cat(out).numpy()


class MCM(oodlens.Scorer):
    r"""Maximum concept matching (Ming et al., NeurIPS 2022), for CLIP zero-shot classifiers
    (``--model clip:ARCH``): the largest softmax of the cosine similarities between the
    image embedding and the class text embeddings, at temperature :math:`\tau`.

    .. math:: s(x) = \max_c \operatorname{softmax}_c\big(\cos(f, t_c) / \tau\big)

    with :math:`f` the image embedding (the features) and :math:`t_c` the rows of the head
    (the class text embeddings, scaled by the logit scale, which the cosine removes).
    Output-based; applies only to zero-shot classifiers (a trained head's rows are not
    concept embeddings). Default :math:`\tau = 1`, the paper's and pytorch-ood's. With local
    (per-patch) matches added: ``gl_mcm``. Paper: https://arxiv.org/abs/2211.13445

    Args:
        temperature: :math:`\tau > 0`.
    """

    name = "mcm"
    description = "max softmax of image-text cosine similarities / T, CLIP (Ming et al. 2022)"
    requires = frozenset({"features", "head"})
    parameter_constraints = {"temperature": [Interval(float, 0, None, closed="neither")]}

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def applies_to(self, model: Any, input_size: tuple[int, int, int] | None = None) -> str | None:
        if getattr(model, "is_zero_shot", False):
            return None
        return "it is not a CLIP zero-shot classifier (--model clip:ARCH): MCM needs class text embeddings"

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        w = np.asarray(outputs.head_weight, dtype=np.float64)
        w = w / np.linalg.norm(w, axis=1, keepdims=True)
        out = np.empty(outputs.n_samples)
        for start, f in iter_row_chunks(
            outputs.features, rows_per_chunk(outputs.features.shape[1])
        ):
            f = f.astype(np.float64, copy=False)
            f = f / np.linalg.norm(f, axis=1, keepdims=True)
            sims = f @ w.T / self.temperature
            out[start : start + len(f)] = softmax(sims, axis=1).max(axis=1)
        return out


def _unit_rows(w: Any) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    return w / np.linalg.norm(w, axis=1, keepdims=True)


class GLMCM(MCM):
    r"""GL-MCM (Miyai et al., 2023, "Zero-Shot In-Distribution Detection in Multi-Object
    Settings Using Vision-Language Foundation Models"): MCM of the image embedding plus MCM
    of its best-matching patch, for CLIP zero-shot classifiers with a ViT image encoder.

    .. math:: s(x) = \max_c \operatorname{softmax}_c\big(\cos(f, t_c)/\tau\big)
        + \max_{p} \max_c \operatorname{softmax}_c\big(\cos(f_p, t_c)/\tau\big)

    with :math:`f_p` the patch embeddings (the ViT's patch tokens after its final norm,
    through its projection: :meth:`oodlens.clip.ZeroShotClassifier.local_features`).
    Model-aware: the patch embeddings are not cached (P per image), so it makes its own
    forward pass. Default :math:`\tau = 1` (the paper's). Neither anchor has it. Paper:
    https://arxiv.org/abs/2304.04521 ; code: https://github.com/AtsuMiyai/GL-MCM

    Args:
        temperature: :math:`\tau > 0`.
    """

    name = "gl_mcm"
    description = "MCM of the image plus MCM of its best patch, CLIP ViT (Miyai et al. 2023)"
    requires = frozenset({"features", "head", "model"})

    def applies_to(self, model: Any, input_size: tuple[int, int, int] | None = None) -> str | None:
        reason = super().applies_to(model, input_size)
        if reason is None and not getattr(model, "has_local_features", False):
            return "its CLIP image encoder gives no patch embeddings (GL-MCM needs a ViT)"
        return reason

    def _score(self, outputs: oodlens.Outputs, model: ModelInputs | None = None) -> np.ndarray:
        import torch

        reason = self.applies_to(model.model)
        if reason is not None:
            raise ValueError(f"gl_mcm does not apply to this network: {reason}.")
        text = torch.as_tensor(_unit_rows(outputs.head_weight), device=model.device)
        local = []
        with torch.no_grad():
            for x, _ in model.batches():
                patches = model.model.local_features(x.to(model.device)).double()
                sims = patches @ text.T / self.temperature
                local.append(sims.softmax(dim=-1).amax(dim=(1, 2)).cpu())
        return super()._score(outputs) + torch.cat(local).numpy()


def all_scorers() -> tuple[type[oodlens.Scorer], ...]:
    """The scorer classes of this module, for registration."""
    return (MCD, GradUncertainty, RankFeat, IODIN, NAC, AdaScale, MCM, GLMCM)
