r"""Feature-space OOD scorers for oodlens, registered through the ``oodlens`` entry point.

Only oodlens's public API is used. Every score is **higher = more in-distribution**.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import logsumexp

import oodlens

__all__ = ["Mahalanobis", "KNN", "ViM", "ReAct", "register_scorers"]

log = logging.getLogger(__name__)
_BLOCK = 1 << 22


def _labels_for_fit(name: str, train: oodlens.Outputs) -> tuple[np.ndarray, int]:
    c = train.n_classes
    y = train.labels
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"{name}: training labels must be in [0, {c}), got {y.min()}..{y.max()}.")
    counts = np.bincount(y, minlength=c)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(
            f"{name}: class(es) {empty.tolist()[:10]} have no training rows, so no class mean can be "
            "estimated. Fit on a training set that covers every class."
        )
    return y, c


class Mahalanobis(oodlens.Scorer):
    r"""Class-conditional Gaussians with a shared covariance (Lee et al., NeurIPS 2018).

    .. math::
        s(x) = -\min_c\, (f - \mu_c)^\top (\hat\Sigma + \lambda I)^{-1} (f - \mu_c),
        \qquad \hat\Sigma = \frac1N \sum_c \sum_{i: y_i = c} (f_i - \mu_c)(f_i - \mu_c)^\top

    on penultimate features :math:`f`, without the paper's input preprocessing and feature
    ensembles. Paper: https://arxiv.org/abs/1807.03888 ; reference code:
    https://github.com/pokaxpoka/deep_Mahalanobis_detector

    Regularisation: :math:`\lambda = \text{reg} \cdot \operatorname{tr}(\hat\Sigma)/D`
    (default ``reg=1e-6``) keeps the covariance invertible when it is singular (fewer
    training rows than feature dimensions, or dead ReLU units). A class with no training
    rows is an error; a class with one row contributes its mean and no covariance.

    Args:
        reg: relative ridge added to the covariance diagonal (>= 0).
    """

    name = "mahalanobis"
    description = (
        "Mahalanobis distance to the closest class mean, shared covariance (Lee et al. 2018)"
    )
    requires = frozenset({"features", "labels"})

    def __init__(self, reg: float = 1e-6) -> None:
        self.reg = reg

    def _fit(self, train: oodlens.Outputs) -> None:
        if not (np.isfinite(self.reg) and self.reg >= 0):
            raise ValueError(f"mahalanobis: reg={self.reg!r} must be a finite number >= 0.")
        y, c = _labels_for_fit("mahalanobis", train)
        f = np.asarray(train.features, dtype=np.float64)
        means = np.stack([f[y == k].mean(axis=0) for k in range(c)])
        centred = f - means[y]
        cov = centred.T @ centred / f.shape[0]
        d = cov.shape[0]
        ridge = self.reg * np.trace(cov) / d
        if ridge == 0.0 and np.linalg.matrix_rank(cov) < d:
            raise ValueError(
                f"mahalanobis: the feature covariance is singular (rank {np.linalg.matrix_rank(cov)} < {d}) "
                "and reg=0; use reg > 0 (default 1e-6)."
            )
        self.means_ = means
        self.precision_ = np.linalg.inv(cov + ridge * np.eye(d))

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        f = np.asarray(outputs.features, dtype=np.float64)
        # (f-mu)^T P (f-mu) = f^T P f - 2 f^T P mu + mu^T P mu, for all classes at once
        fp = f @ self.precision_
        quad_f = np.einsum("nd,nd->n", fp, f)
        quad_mu = np.einsum("cd,cd->c", self.means_ @ self.precision_, self.means_)
        dist = quad_f[:, None] - 2.0 * fp @ self.means_.T + quad_mu[None, :]
        return -np.maximum(dist.min(axis=1), 0.0)


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


class KNN(oodlens.Scorer):
    r"""Deep nearest neighbours (Sun et al., ICML 2022).

    .. math:: s(x) = -\lVert z - z_{(k)} \rVert_2, \qquad z = f / \lVert f \rVert_2

    where :math:`z_{(k)}` is the k-th nearest normalised training feature. Exact search by a
    chunked matrix product (:math:`\lVert z - t\rVert^2 = 2 - 2 z^\top t` for unit vectors);
    faiss (``IndexFlatL2``) is used instead when installed and ``use_faiss`` is true.
    Paper: https://arxiv.org/abs/2204.06507 ; code: https://github.com/deeplearning-wisc/knn-ood

    Args:
        k: which neighbour (default 50, the paper's choice for CIFAR-10); must not exceed the
            number of training rows.
        use_faiss: use faiss when it can be imported.
    """

    name = "knn"
    description = "distance to the k-th nearest normalised training feature (Sun et al. 2022)"
    requires = frozenset({"features"})

    def __init__(self, k: int = 50, use_faiss: bool = True) -> None:
        self.k = k
        self.use_faiss = use_faiss

    def _fit(self, train: oodlens.Outputs) -> None:
        n = train.n_samples
        if not (isinstance(self.k, int | np.integer) and 1 <= self.k <= n):
            raise ValueError(
                f"knn: k={self.k!r} must be an integer in [1, {n}] (the number of training rows)."
            )
        self.bank_ = _normalise(np.asarray(train.features, dtype=np.float32))
        self.index_ = None
        if self.use_faiss:
            try:
                import faiss
            except ImportError:
                faiss = None
            if faiss is not None:
                self.index_ = faiss.IndexFlatL2(self.bank_.shape[1])
                self.index_.add(self.bank_)

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        z = _normalise(np.asarray(outputs.features, dtype=np.float32))
        if self.index_ is not None:
            dist2, _ = self.index_.search(z, self.k)
            return -np.sqrt(np.maximum(dist2[:, -1].astype(np.float64), 0.0))
        out = np.empty(len(z))
        block = max(1, _BLOCK // self.bank_.shape[0])
        bank64 = self.bank_.astype(np.float64)
        for s in range(0, len(z), block):
            sim = z[s : s + block].astype(np.float64) @ bank64.T
            kth = -np.partition(-sim, self.k - 1, axis=1)[:, self.k - 1]
            out[s : s + block] = -np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))
        return out


class ViM(oodlens.Scorer):
    r"""Virtual-logit matching (Wang et al., CVPR 2022).

    With the head :math:`z = Wf + b`, the origin :math:`u = -W^{+} b`, and :math:`R` the
    eigenvectors of the covariance of :math:`f - u` (training features) outside the
    principal subspace of dimension ``dim``:

    .. math::
        s(x) = \log \sum_c e^{z_c} - \alpha \lVert R^\top (f - u) \rVert_2,
        \qquad \alpha = \frac{\operatorname{mean}_i \max_c z_{ic}}{\operatorname{mean}_i
        \lVert R^\top (f_i - u) \rVert_2}

    (the log of the ViM probability ratio, as in the official code). Paper:
    https://arxiv.org/abs/2203.10807 ; code: https://github.com/haoqiwang/vim

    Args:
        dim: principal subspace dimension; ``None`` uses the paper's rule (1000 for
            D >= 2048, 512 for D >= 768, else D // 2).
    """

    name = "vim"
    description = (
        "energy minus the scaled residual norm outside the principal subspace (Wang et al. 2022)"
    )
    requires = frozenset({"features", "head", "logits"})

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim

    def _fit(self, train: oodlens.Outputs) -> None:
        f = np.asarray(train.features, dtype=np.float64)
        d = f.shape[1]
        dim = (
            self.dim
            if self.dim is not None
            else (1000 if d >= 2048 else 512 if d >= 768 else d // 2)
        )
        if not (isinstance(dim, int | np.integer) and 1 <= dim < d):
            raise ValueError(
                f"vim: dim={dim!r} must be an integer in [1, {d - 1}] (feature dimension {d})."
            )
        w, b = np.asarray(train.head_weight, np.float64), np.asarray(train.head_bias, np.float64)
        self.origin_ = -np.linalg.pinv(w) @ b
        x = f - self.origin_
        eigval, eigvec = np.linalg.eigh(x.T @ x / len(x))
        self.residual_basis_ = np.ascontiguousarray(eigvec[:, : d - dim])
        vlogit = np.linalg.norm(x @ self.residual_basis_, axis=1)
        if vlogit.mean() <= 0:
            raise ValueError(
                "vim: the training features have no residual outside the principal subspace; lower dim."
            )
        logits = f @ w.T + b
        self.alpha_ = float(logits.max(axis=1).mean() / vlogit.mean())
        self.weight_, self.bias_ = w, b
        self.dim_ = int(dim)

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        f = np.asarray(outputs.features, dtype=np.float64)
        vlogit = np.linalg.norm((f - self.origin_) @ self.residual_basis_, axis=1) * self.alpha_
        return logsumexp(f @ self.weight_.T + self.bias_, axis=1) - vlogit


class ReAct(oodlens.Scorer):
    r"""Rectified activations, then energy (Sun et al., NeurIPS 2021).

    .. math:: s(x) = \log \sum_c \exp\big(W \min(f, \tau) + b\big)_c

    where :math:`\tau` is the ``percentile``-th percentile of all training feature values.
    Paper: https://arxiv.org/abs/2111.12797 ; code: https://github.com/deeplearning-wisc/react

    Args:
        percentile: clipping percentile in (0, 100] (default 90, as in the paper).
    """

    name = "react"
    description = (
        "energy of the head applied to features clipped at a training percentile (Sun et al. 2021)"
    )
    requires = frozenset({"features", "head"})

    def __init__(self, percentile: float = 90.0) -> None:
        self.percentile = percentile

    def _fit(self, train: oodlens.Outputs) -> None:
        if not (0 < self.percentile <= 100):
            raise ValueError(f"react: percentile={self.percentile!r} must be in (0, 100].")
        self.threshold_ = float(
            np.percentile(np.asarray(train.features, dtype=np.float64), self.percentile)
        )

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        f = np.minimum(np.asarray(outputs.features, dtype=np.float64), self.threshold_)
        return oodlens.functional.energy(
            f @ np.asarray(outputs.head_weight, np.float64).T + outputs.head_bias
        )


@oodlens.hookimpl
def register_scorers(register: Callable[[Any], None]) -> None:
    """Register the four feature-space scorers with oodlens."""
    for cls in (Mahalanobis, KNN, ViM, ReAct):
        register(cls)
