r"""Pure functions for OOD scores. Every function maps arrays (numpy, or torch tensors,
which stay differentiable) to a (N,) float64 score where **higher means more
in-distribution**.

These are usable without any scorer object; the classes in :mod:`oodlens.scorers` are thin
wrappers that add fitting, validation and the registry.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import logsumexp as _logsumexp

__all__ = ["msp", "energy", "max_logit", "neg_entropy", "gen", "log_softmax"]

# Every function takes numpy arrays or torch tensors and computes with what it is given: a
# tensor stays a tensor, on its device, differentiable (the scorers' ``torch_score``). The
# formulas are written once, on the few row operations below.


def _is_tensor(x: Any) -> bool:
    return not isinstance(x, np.ndarray) and hasattr(x, "detach")


def _lse(z: Any, keepdims: bool = False) -> Any:
    if _is_tensor(z):
        return z.logsumexp(1, keepdim=keepdims)
    return _logsumexp(z, axis=1, keepdims=keepdims)


def _rowmax(z: Any) -> Any:
    return z.amax(1) if _is_tensor(z) else z.max(axis=1)


def _rowsum(z: Any, keepdims: bool = False) -> Any:
    return z.sum(1, keepdim=keepdims) if _is_tensor(z) else z.sum(axis=1, keepdims=keepdims)


def _exp(z: Any) -> Any:
    return z.exp() if _is_tensor(z) else np.exp(z)


def _check_logits(logits: Any) -> Any:
    logits = logits.double() if _is_tensor(logits) else np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be a 2-D (N, C) array, got shape {tuple(logits.shape)}.")
    return logits


def _check_temperature(temperature: float) -> float:
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}.")
    return float(temperature)


def msp(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    r"""Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017).

    .. math:: s(x) = \max_c \frac{\exp(z_c / T)}{\sum_k \exp(z_k / T)}

    Computed as :math:`\exp(\max_c z_c/T - \operatorname{logsumexp}(z/T))`, stable for any
    logit magnitude. Paper: https://arxiv.org/abs/1610.02136

    Args:
        logits: (N, C) logits.
        temperature: softmax temperature T > 0 (1.0 = plain softmax; ODIN uses 1000).

    Returns:
        (N,) scores in (1/C, 1].
    """
    z = _check_logits(logits) / _check_temperature(temperature)
    return _exp(_rowmax(z) - _lse(z))


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    r"""Negative free energy (Liu et al., NeurIPS 2020).

    .. math:: s(x) = -E(x; T) = T \cdot \log \sum_c \exp(z_c / T)

    Paper: https://arxiv.org/abs/2010.03759

    Args:
        logits: (N, C) logits.
        temperature: T > 0 (the paper uses 1).

    Returns:
        (N,) scores; higher = lower energy = more in-distribution.
    """
    t = _check_temperature(temperature)
    return t * _lse(_check_logits(logits) / t)


def max_logit(logits: np.ndarray) -> np.ndarray:
    r"""Maximum logit (Hendrycks et al., ICML 2022, "Scaling OOD detection").

    .. math:: s(x) = \max_c z_c

    Paper: https://arxiv.org/abs/1911.11132

    Args:
        logits: (N, C) logits.

    Returns:
        (N,) scores.
    """
    return _rowmax(_check_logits(logits))


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N, C) log-probabilities of ``softmax(z / T)``, computed stably."""
    z = _check_logits(logits) / _check_temperature(temperature)
    return z - _lse(z, keepdims=True)


def neg_entropy(logits: np.ndarray) -> np.ndarray:
    r"""Negative predictive entropy: low entropy = confident = in-distribution.

    .. math:: s(x) = \sum_c p_c \log p_c, \qquad p = \operatorname{softmax}(z)

    Args:
        logits: (N, C) logits.

    Returns:
        (N,) scores in :math:`[-\log C, 0]`.
    """
    logp = log_softmax(logits)
    return _rowsum(_exp(logp) * logp)


def gen(logits: np.ndarray, gamma: float = 0.1, top_m: int | None = None) -> np.ndarray:
    r"""Generalized entropy score (Liu, Lochman, Zach, CVPR 2023, "GEN").

    .. math:: s(x) = -\sum_{j \in \text{top-}M} p_j^{\gamma} (1 - p_j)^{\gamma}

    over the M largest softmax probabilities (all C when ``top_m`` is None). Paper:
    https://openaccess.thecvf.com/content/CVPR2023/html/Liu_GEN_Pushing_the_Limits_of_Softmax-Based_Out-of-Distribution_Detection_CVPR_2023_paper.html

    Args:
        logits: (N, C) logits.
        gamma: exponent in (0, 1) (the paper's default 0.1).
        top_m: how many of the largest probabilities to sum (the paper uses 100 for
            ImageNet-1k; None = all classes).

    Returns:
        (N,) scores, higher = more in-distribution.
    """
    p = _exp(log_softmax(logits))
    if top_m is not None and top_m < p.shape[1]:
        if _is_tensor(p):
            p = p.topk(top_m, dim=1).values
        else:
            p = -np.partition(-p, top_m - 1, axis=1)[:, :top_m]
    return -_rowsum(p**gamma * (1.0 - p) ** gamma)
