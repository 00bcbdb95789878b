"""Output-based scorers on the logits (MSP, energy, max-logit, entropy, GEN, KL matching,
temperature-scaled MSP); the maths lives in :mod:`oodlens.functional`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .. import functional as F
from ..arrays import check_fit_labels, iter_row_chunks, rows_per_chunk
from ..compute import tensors_like
from ..outputs import Outputs
from ..params import Interval, ListOf
from .base import Scorer

log = logging.getLogger(__name__)

__all__ = ["MSP", "Energy", "MaxLogit", "Entropy", "GEN", "KLMatching", "TemperatureMSP"]


class MSP(Scorer):
    r"""Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017).

    .. math:: s(x) = \max_c \operatorname{softmax}(z / T)_c

    Args:
        temperature: softmax temperature T > 0 (default 1.0).

    Example:
        >>> import numpy as np, oodlens
        >>> out = oodlens.Outputs(logits=np.array([[4.0, 0.0], [0.1, 0.0]]))
        >>> MSP().fit(out).score(out).round(3)
        array([0.982, 0.525])
    """

    name = "msp"
    description = "max softmax probability (Hendrycks & Gimpel 2017)"
    parameter_constraints = {"temperature": [Interval(float, 0, None, closed="neither")]}

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def _score(self, outputs: Outputs) -> np.ndarray:
        return F.msp(outputs.logits, self.temperature)

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        return F.msp(logits, self.temperature)


class Energy(Scorer):
    r"""Negative free energy (Liu et al., NeurIPS 2020).

    .. math:: s(x) = T \log \sum_c \exp(z_c / T)

    Args:
        temperature: T > 0 (default 1.0, as in the paper).
    """

    name = "energy"
    description = "negative free energy T*logsumexp(z/T) (Liu et al. 2020)"
    parameter_constraints = {"temperature": [Interval(float, 0, None, closed="neither")]}

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def _score(self, outputs: Outputs) -> np.ndarray:
        return F.energy(outputs.logits, self.temperature)

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        return F.energy(logits, self.temperature)


class WeightedEBO(Scorer):
    r"""Weighted energy (Du et al., ICLR 2022, "VOS: Learning What You Don't Know by Virtual
    Outlier Synthesis"; pytorch-ood's ``WeightedEBO``).

    .. math:: s(x) = \log \sum_c w_c \exp(z_c)

    VOS learns the weights ``w`` (one per class, non-negative) while training the network
    with virtual outliers; a post-hoc scorer cannot learn them, so they are a parameter here:
    give the weights your VOS training produced. ``None`` (default) weighs every class 1,
    which is the energy score.

    Args:
        weights: C non-negative class weights, at least one positive (``None``: all 1).
    """

    name = "weighted_ebo"
    description = "log of the class-weighted sum of exp(logits), weights from VOS (Du et al. 2022)"
    parameter_constraints = {"weights": [ListOf([Interval(float, 0, None)], min_length=1), None]}

    def __init__(self, weights: Any = None) -> None:
        self.weights = weights

    def _fit(self, train: Outputs) -> None:
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64)
            if len(w) != train.n_classes or not (w > 0).any():
                raise ValueError(
                    f"weighted_ebo: weights has {len(w)} value(s) for {train.n_classes} classes"
                    + ("" if (w > 0).any() else " and none is positive")
                    + "; give one non-negative weight per class, at least one positive."
                )

    def _log_weights(self, n_classes: int) -> np.ndarray:
        if self.weights is None:
            return np.zeros(n_classes)
        with np.errstate(divide="ignore"):
            return np.log(np.asarray(self.weights, dtype=np.float64))

    def _score(self, outputs: Outputs) -> np.ndarray:
        z = np.asarray(outputs.logits, dtype=np.float64)
        return F.energy(z + self._log_weights(z.shape[1]), 1.0)

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        (log_w,) = tensors_like(logits, self._log_weights(logits.shape[1]))
        return F.energy(logits + log_w, 1.0)


class MaxLogit(Scorer):
    r"""Maximum logit (Hendrycks et al., ICML 2022).

    .. math:: s(x) = \max_c z_c
    """

    name = "max_logit"
    description = "maximum logit (Hendrycks et al. 2022)"

    def __init__(self) -> None:
        pass

    def _score(self, outputs: Outputs) -> np.ndarray:
        return F.max_logit(outputs.logits)

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        return F.max_logit(logits)


class Entropy(Scorer):
    r"""Negative predictive entropy (the entropy baseline, e.g. Hendrycks & Gimpel 2017's
    companion measure; pytorch-ood's ``Entropy`` up to sign).

    .. math:: s(x) = \sum_c p_c \log p_c, \qquad p = \operatorname{softmax}(z)

    No hyperparameters, no fitting; low entropy = confident = in-distribution.
    """

    name = "entropy"
    description = "negative entropy of the softmax (confident = in-distribution)"

    def __init__(self) -> None:
        pass

    def _score(self, outputs: Outputs) -> np.ndarray:
        return F.neg_entropy(outputs.logits)

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        return F.neg_entropy(logits)


class GEN(Scorer):
    r"""Generalized entropy (Liu, Lochman & Zach, CVPR 2023).

    .. math:: s(x) = -\sum_{j \in \text{top-}M} p_j^{\gamma} (1 - p_j)^{\gamma}

    Args:
        gamma: exponent in (0, 1) (default 0.1, the paper's).
        top_m: number of largest probabilities summed (default None = all classes; the
            paper uses 100 for ImageNet-1k, where the tail of near-zero probabilities is long).

    pytorch-ood's ``GEN`` averages instead of summing (the same ranking), with the opposite
    sign. Paper: https://arxiv.org/abs/2303.16497 ; code:
    https://github.com/XixiLiu95/GEN
    """

    name = "gen"
    description = "generalized entropy of the top-M softmax probabilities (Liu et al. 2023)"
    parameter_constraints = {
        "gamma": [Interval(float, 0, 1, closed="neither")],
        "top_m": [Interval(int, 1, None), None],
    }
    tuning_grid = {"gamma": [0.01, 0.1, 0.5, 1.0 - 1e-6]}

    def __init__(self, gamma: float = 0.1, top_m: int | None = None) -> None:
        self.gamma = gamma
        self.top_m = top_m

    def _score(self, outputs: Outputs) -> np.ndarray:
        return F.gen(outputs.logits, self.gamma, self.top_m)

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        return F.gen(logits, self.gamma, self.top_m)


class KLMatching(Scorer):
    r"""KL matching (Hendrycks et al., ICML 2022, "Scaling out-of-distribution detection").

    For each class k, the typical posterior :math:`d_k` is the mean softmax of the training
    samples **predicted** as k (no labels needed); a sample scores

    .. math:: s(x) = -\min_k \mathrm{KL}\big(p(x) \,\|\, d_k\big)

    The paper fits :math:`d_k` on held-out validation data; here on the training outputs
    (the harness's usual fitting data), as pytorch-ood does with the data it is given.
    A class that no training sample is predicted as has no :math:`d_k` and is skipped.
    Paper: https://arxiv.org/abs/1911.11132
    """

    name = "kl_matching"
    description = (
        "minus the smallest KL divergence to a class's typical posterior (Hendrycks et al. 2022)"
    )

    def __init__(self) -> None:
        pass

    def _fit(self, train: Outputs) -> None:
        sums = np.zeros((train.n_classes, train.n_classes))
        counts = np.zeros(train.n_classes)
        for _, block in iter_row_chunks(train.logits, rows_per_chunk(train.n_classes)):
            p = np.exp(F.log_softmax(block))
            pred = p.argmax(axis=1)
            np.add.at(sums, pred, p)
            counts += np.bincount(pred, minlength=train.n_classes)
        seen = counts > 0
        self.typical_ = sums[seen] / counts[seen, None]
        self.classes_ = np.flatnonzero(seen)

    def _log_typical(self) -> np.ndarray:
        return np.log(np.maximum(self.typical_, np.finfo(np.float64).tiny))

    @staticmethod
    def _kl_score(logits: Any, log_typical: Any) -> Any:
        """``-min_k KL(p || d_k)`` of a block (numpy, or tensors: differentiable)."""
        logp = F.log_softmax(logits)
        p = logp.exp() if hasattr(logp, "detach") else np.exp(logp)
        kl = (p * logp).sum(1)[:, None] - p @ log_typical.T
        return -(kl.amin(1) if hasattr(kl, "detach") else kl.min(axis=1))

    def _score(self, outputs: Outputs) -> np.ndarray:
        logd = self._log_typical()
        out = np.empty(outputs.n_samples)
        for start, block in iter_row_chunks(outputs.logits, rows_per_chunk(outputs.n_classes)):
            out[start : start + len(block)] = self._kl_score(block, logd)
        return out

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        (logd,) = tensors_like(logits, self._log_typical())
        return self._kl_score(logits.double(), logd)


class TemperatureMSP(Scorer):
    r"""MSP with a temperature fitted on held-out ID validation data (Guo et al., ICML 2017's
    temperature scaling, used for OOD detection as in OpenOOD's ``temp_scaling``).

    .. math:: s(x) = \max_c \operatorname{softmax}(z / T)_c, \qquad
        T = \arg\min_T \; -\tfrac1n \sum_{i \in \text{val}} \log \operatorname{softmax}(z_i/T)_{y_i}

    The temperature minimises the negative log-likelihood of the labelled ``val`` outputs
    (bounded search over :math:`T \in [0.05, 100]`), never the training rows, on which a
    network is over-confident. Paper: https://arxiv.org/abs/1706.04599
    """

    name = "temperature_msp"
    description = "max softmax at a temperature fitted on ID validation data (Guo et al. 2017)"
    requires = frozenset({"logits", "labels", "val"})

    def __init__(self) -> None:
        pass

    def _fit(self, train: Outputs, val: Outputs | None = None) -> None:
        from scipy.optimize import minimize_scalar

        # one temperature for all classes: a small val split may miss a class
        check_fit_labels(
            "temperature_msp (its val outputs)", val.labels, val.n_classes, every_class=False
        )
        logits, labels = np.asarray(val.logits, dtype=np.float64), val.labels

        def nll(log_t: float) -> float:
            logp = F.log_softmax(logits, float(np.exp(log_t)))
            return float(-np.mean(logp[np.arange(len(labels)), labels]))

        lo, hi = np.log(0.05), np.log(100.0)
        res = minimize_scalar(nll, bounds=(lo, hi), method="bounded")
        self.temperature_ = float(np.exp(res.x))
        if min(res.x - lo, hi - res.x) < 1e-3:
            log.warning(
                "temperature_msp: the fitted temperature %.3g sits at the search bound: the "
                "val outputs are (almost) perfectly classified, so the likelihood has no "
                "interior optimum and the softmax saturates; MSP at T=1 may rank better.",
                self.temperature_,
            )

    def _score(self, outputs: Outputs) -> np.ndarray:
        return F.msp(outputs.logits, self.temperature_)

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        return F.msp(logits, self.temperature_)
