r"""Scorers on the penultimate features and the linear head: fDBD, NCI, pNML, LTS, VRA and
the class-conditional GMM (issue "Methods v2 (a)").

Every score is **higher = more in-distribution** (pytorch-ood's detectors return the
negation). They read the features in row blocks (:func:`oodlens.arrays.iter_row_chunks`), in
numpy; they have no torch form of their score (``oodlens scorers`` lists them as not
explainable).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp, softmax

import oodlens
from oodlens.arrays import check_fit_labels, iter_row_chunks, rows_per_chunk, streamed_percentile
from oodlens.errors import InvalidParameterError
from oodlens.params import Boolean, Interval, Options

__all__ = ["FDBD", "NCI", "PNML", "LTS", "VRA", "GMM", "Relation", "OpenMax"]


def _rows(n_cols: int) -> int:
    """Rows of a block of about the package's ``BLOCK_VALUES`` numbers (imported here: the
    package imports this module before it defines the constant)."""
    from . import BLOCK_VALUES

    return rows_per_chunk(n_cols, BLOCK_VALUES)


def _chunks(array: np.ndarray, extra_cols: int = 0):
    """``(start, float64 block)`` over the rows of ``array``."""
    for start, block in iter_row_chunks(array, _rows(array.shape[1] + extra_cols)):
        yield start, block.astype(np.float64, copy=False)


def _feature_mean(features: np.ndarray) -> np.ndarray:
    total = np.zeros(features.shape[1])
    for _, f in _chunks(features):
        total += f.sum(axis=0)
    return total / len(features)


def _head(outputs: oodlens.Outputs) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.asarray(outputs.head_weight, dtype=np.float64),
        np.asarray(outputs.head_bias, dtype=np.float64),
    )


class FDBD(oodlens.Scorer):
    r"""Fast decision-boundary distance (Liu & Qin, ICML 2024, "Fast Decision Boundary based
    Out-of-Distribution Detector").

    .. math:: s(x) = \frac{1}{C - 1} \sum_{c \ne \hat y}
        \frac{|z_{\hat y} - z_c|}{\lVert w_{\hat y} - w_c \rVert_2 \; \lVert f - \mu \rVert_2}

    the mean distance of the features ``f`` to the decision boundaries between the predicted
    class and the others (closed form for a linear head with logits ``z``, weights ``w``),
    normalised by the distance to the mean ``mu`` of the training features. Paper:
    https://arxiv.org/abs/2312.11536 ; code: https://github.com/litianliu/fDBD-OOD .

    Args:
        normalizer: ``"distance"`` (default: ``||f - mu||``, the paper's, OpenOOD's and
            pytorch-ood's default) or ``"norm"`` (``||f||``, OpenOOD's other choice, which its
            parameter search may pick).

    OpenOOD sums over the classes instead of averaging (the same ranking).
    """

    name = "fdbd"
    description = (
        "mean distance to the head's decision boundaries over ||f - mean|| (Liu & Qin 2024)"
    )
    requires = frozenset({"features", "head"})
    parameter_constraints = {"normalizer": [Options(("distance", "norm"))]}
    tuning_grid = {"normalizer": ["distance", "norm"]}

    def __init__(self, normalizer: str = "distance") -> None:
        self.normalizer = normalizer

    def _fit(self, train: oodlens.Outputs) -> None:
        self.mean_ = _feature_mean(train.features)
        w, _ = _head(train)
        gaps = np.linalg.norm(w[:, None, :] - w[None, :, :], axis=2)
        np.fill_diagonal(gaps, 1.0)  # the predicted class's own term is 0 / 1
        self.boundary_norms_ = gaps

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        w, b = _head(outputs)
        out = np.empty(outputs.n_samples)
        c = len(w)
        for start, f in _chunks(outputs.features, c):
            z = f @ w.T + b
            pred = z.argmax(axis=1)
            gap = np.abs(z - z[np.arange(len(z)), pred][:, None]) / self.boundary_norms_[pred]
            norm = np.linalg.norm(f - self.mean_ if self.normalizer == "distance" else f, axis=1)
            out[start : start + len(f)] = gap.sum(axis=1) / (c - 1) / np.maximum(norm, 1e-12)
        return out


class NCI(oodlens.Scorer):
    r"""Neural-collapse inspired detection (Liu & Qin, ICLR 2025, "Detecting Out-of-Distribution
    through the Lens of Neural Collapse").

    .. math:: s(x) = \frac{w_{\hat y}^\top (f - \mu)}{\lVert f - \mu \rVert_2}
        + \alpha \lVert f \rVert_1

    the alignment of the centred features with the weight vector of the predicted class
    (``mu``: the training features' mean), plus a feature-norm term. Code:
    https://github.com/litianliu/NCI-OOD .

    Args:
        alpha: weight of the L1 norm of the features (default 0.0001, OpenOOD's CIFAR
            setting; its search covers 0.0001-0.1: ``tuning_grid``; pytorch-ood's default is
            0, the alignment alone).
    """

    name = "nci"
    description = (
        "alignment of centred features with the predicted class's weights (Liu & Qin 2025)"
    )
    requires = frozenset({"features", "head"})
    parameter_constraints = {"alpha": [Interval(float, 0, None)]}
    tuning_grid = {"alpha": [0.0001, 0.001, 0.01, 0.1]}

    def __init__(self, alpha: float = 0.0001) -> None:
        self.alpha = alpha

    def _fit(self, train: oodlens.Outputs) -> None:
        self.mean_ = _feature_mean(train.features)

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        w, b = _head(outputs)
        out = np.empty(outputs.n_samples)
        for start, f in _chunks(outputs.features, len(w)):
            pred = (f @ w.T + b).argmax(axis=1)
            centred = f - self.mean_
            align = (w[pred] * centred).sum(axis=1) / np.maximum(
                np.linalg.norm(centred, axis=1), 1e-12
            )
            out[start : start + len(f)] = align + self.alpha * np.abs(f).sum(axis=1)
        return out


class PNML(oodlens.Scorer):
    r"""Single-layer predictive normalised maximum likelihood (Bibas et al., NeurIPS 2021,
    "Single Layer Predictive Normalized Maximum Likelihood for Out-of-Distribution
    Detection"): minus the pNML regret.

    .. math:: s(x) = -\frac{1}{\log C} \log \sum_c
        \frac{p_c}{p_c + (1 - p_c)\, p_c^{\kappa}},\qquad
        \kappa = \frac{\hat f^\top P \hat f}{1 + \hat f^\top P \hat f}

    with ``f^`` the L2-normalised features, ``P`` the pseudo-inverse of ``X^T X`` over the
    normalised training features ``X``, and ``p = softmax(W f^ + b)`` the head applied to the
    normalised features (as pytorch-ood and the authors' code do), clipped to [eps, 1 - eps].
    Code: https://github.com/kobybibas/pnml_ood_detection .

    Args:
        eps: probability clip (default 1e-12, pytorch-ood's).
    """

    name = "pnml"
    description = "minus the pNML regret of the head on normalised features (Bibas et al. 2021)"
    requires = frozenset({"features", "head"})
    parameter_constraints = {"eps": [Interval(float, 0, 0.5, closed="neither")]}

    def __init__(self, eps: float = 1e-12) -> None:
        self.eps = eps

    def _fit(self, train: oodlens.Outputs) -> None:
        d = train.features.shape[1]
        gram = np.zeros((d, d))
        for _, f in _chunks(train.features):
            x = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
            gram += x.T @ x
        self.projector_ = np.linalg.pinv(gram, hermitian=True)

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        w, b = _head(outputs)
        out = np.empty(outputs.n_samples)
        log_c = math.log(len(w))
        for start, f in _chunks(outputs.features, len(w) + outputs.features.shape[1]):
            x = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
            p = np.clip(softmax(x @ w.T + b, axis=1), self.eps, 1 - self.eps)
            proj = ((x @ self.projector_) * x).sum(axis=1)
            kappa = (proj / (1 + proj))[:, None]
            regret = np.log((p / (p + (1 - p) * p**kappa)).sum(axis=1)) / log_c
            out[start : start + len(f)] = -regret
        return out


class LTS(oodlens.Scorer):
    r"""Logit scaling (Djurisic et al. 2025, "Logit Scaling for Out-of-Distribution
    Detection"): the energy of the logits scaled per sample by

    .. math:: S(f) = \Big(\frac{\sum_i \max(0, f_i)}{\sum_{i \in \text{top-}k}
        \max(0, f_i)}\Big)^2, \qquad k = \max(1, D - \mathrm{round}((1 - p) D))

    (``p``: the fraction of the largest activations). Like SCALE it needs no fitting, but it
    scales the logits instead of the activations. Code: https://github.com/andrijazz/lts .

    Args:
        p: fraction of the largest activations in the denominator (default 0.05,
            pytorch-ood's default and the official code's percentile 95).
    """

    name = "lts"
    description = (
        "energy of the logits scaled by (activation mass / top-p mass)^2 (Djurisic et al. 2025)"
    )
    requires = frozenset({"features", "logits"})
    parameter_constraints = {"p": [Interval(float, 0, 1, closed="right")]}
    tuning_grid = {"p": [0.01, 0.05, 0.1, 0.2]}

    def __init__(self, p: float = 0.05) -> None:
        self.p = p

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        out = np.empty(outputs.n_samples)
        d = outputs.features.shape[1]
        k = max(1, d - round(d * (1 - self.p)))
        for start, f in _chunks(outputs.features):
            a = np.maximum(f, 0.0)
            top = -np.partition(-a, k - 1, axis=1)[:, :k]
            scale = (a.sum(axis=1) / np.maximum(top.sum(axis=1), 1e-12)) ** 2
            z = np.asarray(outputs.logits[start : start + len(f)], dtype=np.float64)
            out[start : start + len(f)] = logsumexp(z * scale[:, None], axis=1)
        return out


class VRA(oodlens.Scorer):
    r"""Variational rectified activation (Xu et al., NeurIPS 2023, "VRA: Variational Rectified
    Activation for Out-of-distribution Detection"), in the two-sided clipping form OpenOOD and
    pytorch-ood implement: the features clipped to ``[low, high]``, then the energy of the
    head.

    .. math:: s(x) = \log \sum_c \exp\big(W\,\mathrm{clip}(f, \tau_{lo}, \tau_{hi}) + b\big)_c

    Args:
        percentile_low, percentile_high: the clipping percentiles, in percent (default 10
            and 90, OpenOOD's; pytorch-ood's are 1 and 99).
        per_dimension: ``False`` (default, OpenOOD's): one pair of thresholds over all
            feature values; ``True`` (pytorch-ood's, on feature maps): a pair per feature
            dimension.
        percentile_on: ``"train"`` (default, as pytorch-ood and our ReAct) or ``"val"``
            (OpenOOD's: the held-out ID validation outputs).
    """

    name = "vra"
    description = (
        "energy of the head on features clipped at a low and a high percentile (Xu et al. 2023)"
    )
    requires = frozenset({"features", "head"})
    parameter_constraints = {
        "percentile_low": [Interval(float, 0, 100)],
        "percentile_high": [Interval(float, 0, 100)],
        "per_dimension": [Boolean()],
        "percentile_on": [Options(("train", "val"))],
    }
    tuning_grid = {"percentile_high": [85, 90, 95, 99], "percentile_low": [1, 5, 10, 15]}

    def __init__(
        self,
        percentile_low: float = 10.0,
        percentile_high: float = 90.0,
        per_dimension: bool = False,
        percentile_on: str = "train",
    ) -> None:
        self.percentile_low = percentile_low
        self.percentile_high = percentile_high
        self.per_dimension = per_dimension
        self.percentile_on = percentile_on

    def requirements(self) -> frozenset[str]:
        """Features and head; with ``percentile_on="val"`` also the ``val`` outputs."""
        return frozenset({"features", "head"} | ({"val"} if self.percentile_on == "val" else set()))

    def check_params(self) -> None:
        """The constraints, and ``percentile_low <= percentile_high``."""
        super().check_params()
        if self.percentile_low > self.percentile_high:
            raise InvalidParameterError(
                f"VRA: percentile_low={self.percentile_low} exceeds percentile_high="
                f"{self.percentile_high}; give the low one first."
            )

    def _fit(self, train: oodlens.Outputs, val: oodlens.Outputs | None = None) -> None:
        source = (val if self.percentile_on == "val" else train).features
        if self.per_dimension:
            f = np.asarray(source, dtype=np.float64)
            self.low_ = np.percentile(f, self.percentile_low, axis=0)
            self.high_ = np.percentile(f, self.percentile_high, axis=0)
        else:
            self.low_ = np.array(streamed_percentile(source, self.percentile_low))
            self.high_ = np.array(streamed_percentile(source, self.percentile_high))

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        w, b = _head(outputs)
        out = np.empty(outputs.n_samples)
        for start, f in _chunks(outputs.features, len(w)):
            clipped = np.clip(f, self.low_, self.high_)
            out[start : start + len(f)] = logsumexp(clipped @ w.T + b, axis=1)
        return out


class GMM(oodlens.Scorer):
    r"""Class-conditional Gaussian mixture on the features: one Gaussian per class with its
    own covariance, weighted by the class's share of the training rows; the score is the
    log-likelihood of the mixture (the classical baseline of OpenOOD's and pytorch-ood's
    tables; pytorch-ood's ``GMM``).

    .. math:: s(x) = \log \sum_k \pi_k\, \mathcal{N}(f \mid \mu_k, \Sigma_k + r I)

    Each class stores a D x D precision: K·D² numbers (10 classes of 512-d features: 21 MB;
    1000 classes of 2048-d: 34 GB, which is refused with the size named). OpenOOD's ``gmm``
    postprocessor is another method (EM-fitted clusters over feature statistics of several
    layers), not this one.

    Args:
        reg: added to the diagonal of each class covariance (default 1e-6, pytorch-ood's),
            so that it is invertible with fewer rows than dimensions.
    """

    name = "gmm"
    description = "log-likelihood under class-conditional Gaussians with their own covariances"
    requires = frozenset({"features", "labels"})
    parameter_constraints = {"reg": [Interval(float, 0, None, closed="neither")]}

    #: largest per-class precision state accepted, in bytes
    MAX_STATE_BYTES = 4 << 30

    def __init__(self, reg: float = 1e-6) -> None:
        self.reg = reg

    def _fit(self, train: oodlens.Outputs) -> None:
        counts = check_fit_labels("Scorer 'gmm'", train.labels, train.n_classes).astype(float)
        y = np.asarray(train.labels)
        n, d = len(counts), train.features.shape[1]
        size = n * d * d * 8
        if size > self.MAX_STATE_BYTES:
            raise ValueError(
                f"gmm stores one {d} x {d} precision per class: {n} classes take "
                f"{size / 2**30:.1f} GiB (limit {self.MAX_STATE_BYTES / 2**30:.0f} GiB); use "
                "mahalanobis (one shared covariance) for this many classes or dimensions."
            )
        sums = np.zeros((n, d))
        outer = np.zeros((n, d, d))
        for start, f in _chunks(train.features):
            rows = y[start : start + len(f)]
            for c in np.unique(rows):
                block = f[rows == c]
                sums[c] += block.sum(axis=0)
                outer[c] += block.T @ block
        means = sums / counts[:, None]
        precision = np.empty_like(outer)
        log_det = np.empty(n)
        for k in range(n):
            cov = outer[k] / counts[k] - np.outer(means[k], means[k]) + self.reg * np.eye(d)
            try:
                chol = np.linalg.cholesky(cov)
            except np.linalg.LinAlgError:
                raise ValueError(
                    f"gmm: the covariance of class {k} is not positive definite with "
                    f"reg={self.reg}; increase reg (e.g. reg={self.reg * 100:g})."
                ) from None
            inv = np.linalg.inv(chol)
            precision[k] = inv.T @ inv
            log_det[k] = 2 * np.log(np.diag(chol)).sum()
        self.means_ = means
        self.precisions_ = precision
        self.log_norm_ = np.log(counts / counts.sum()) - 0.5 * (log_det + d * math.log(2 * math.pi))

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        out = np.empty(outputs.n_samples)
        k = len(self.means_)
        for start, f in _chunks(outputs.features, k):
            log_like = np.empty((len(f), k))
            for c in range(k):
                diff = f - self.means_[c]
                log_like[:, c] = self.log_norm_[c] - 0.5 * (
                    (diff @ self.precisions_[c]) * diff
                ).sum(axis=1)
            out[start : start + len(f)] = logsumexp(log_like, axis=1)
        return out


class Relation(oodlens.Scorer):
    r"""Neural relation graph (Kim et al., NeurIPS 2023, "Neural Relation Graph: A Unified
    Framework for Identifying Label Noise and Outlier Data"), OpenOOD's ``relation``: the
    total weight of the edges between a sample and the training samples, an edge weighing

    .. math:: r(x, t) = \max(0, \hat f_x^	op \hat f_t)\; p_x^	op p_t

    (unit features times the agreement of the softmax vectors), edges of weight at most
    ``threshold`` dropped, each raised to ``power``: :math:`s(x) = \sum_t r(x, t)^{power}
    [r(x, t) > threshold]`. The bank holds every training row's unit features and softmax
    (float32, N x (D + C)); a bank over 4 GiB is refused with its size named. Code:
    https://github.com/snu-mllab/Neural-Relation-Graph .

    Args:
        power: the edge exponent (default 1, OpenOOD's; its search covers 1-8).
        threshold: edges of this weight or less are dropped (default 0.03, OpenOOD's).
    """

    name = "relation"
    description = "summed relation-graph edges to the training samples (Kim et al. 2023)"
    requires = frozenset({"features", "logits"})
    parameter_constraints = {
        "power": [Interval(float, 0, None, closed="neither")],
        "threshold": [Interval(float, 0, None)],
    }
    tuning_grid = {"power": [1, 2, 4, 6, 8]}
    large_state = ("bank_features_", "bank_probs_")

    #: largest bank accepted, in bytes
    MAX_BANK_BYTES = 4 << 30

    def __init__(self, power: float = 1.0, threshold: float = 0.03) -> None:
        self.power = power
        self.threshold = threshold

    @staticmethod
    def _unit_and_probs(features: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = features / np.sqrt((features**2).sum(axis=1, keepdims=True) + 1e-10)
        return f.astype(np.float32), softmax(logits, axis=1).astype(np.float32)

    def _fit(self, train: oodlens.Outputs) -> None:
        n, d = train.features.shape
        size = n * (d + train.n_classes) * 4
        if size > self.MAX_BANK_BYTES:
            raise ValueError(
                f"relation keeps every training row in memory: {n:,} rows of {d} features and "
                f"{train.n_classes} probabilities take {size / 2**30:.1f} GiB (limit "
                f"{self.MAX_BANK_BYTES / 2**30:.0f} GiB); use knn, which streams its bank."
            )
        feats, probs = [], []
        for start, f in _chunks(train.features):
            z = np.asarray(train.logits[start : start + len(f)], dtype=np.float64)
            unit, p = self._unit_and_probs(f, z)
            feats.append(unit)
            probs.append(p)
        self.bank_features_ = np.concatenate(feats)
        self.bank_probs_ = np.concatenate(probs)

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        out = np.empty(outputs.n_samples)
        for start, f in iter_row_chunks(outputs.features, _rows(len(self.bank_features_))):
            z = np.asarray(outputs.logits[start : start + len(f)], dtype=np.float64)
            unit, p = self._unit_and_probs(f.astype(np.float64), z)
            rel = np.maximum(unit @ self.bank_features_.T, 0.0) * (p @ self.bank_probs_.T)
            kept = np.where(rel > self.threshold, rel, 0.0).astype(np.float64)
            out[start : start + len(f)] = (kept**self.power).sum(axis=1)
        return out


class OpenMax(oodlens.Scorer):
    r"""OpenMax (Bendale & Boult, CVPR 2016, "Towards Open Set Deep Networks"): minus the
    probability OpenMax gives the unknown class.

    Fit: per class ``c``, the mean logit vector (MAV) ``m_c`` of its training rows (only the
    correctly classified ones with ``correct_only``, as the paper and OpenOOD), and a Weibull
    distribution fitted by scipy (``scipy.stats.exponweib.fit`` with ``a = 1``, ``loc = 0``:
    a Weibull, as libMR's ``FitHigh``) to the ``tailsize`` largest Euclidean distances
    ``||z - m_c||``, shifted by ``10000 - min`` as libMR does. Score: the ``alpha`` largest
    logits are recalibrated, the k-th by ``1 - w_k F_c(||z - m_c||)`` with
    ``w_k = (alpha + 1 - k) / alpha`` (``F_c``: the fitted Weibull CDF); the removed mass is
    the unknown class's activation, and ``s(x) = -softmax([v_0, revised logits])_0``.

    Args:
        tailsize: distances in each Weibull fit (default 20, OpenOOD's; pytorch-ood 25).
        alpha: logits recalibrated (default 3, OpenOOD's; pytorch-ood 10); at most C.
        correct_only: MAVs and distances from correctly classified training rows only
            (default True, the paper's and OpenOOD's; pytorch-ood uses every row).
    """

    name = "openmax"
    description = (
        "minus OpenMax's unknown-class probability, Weibull tails per class (Bendale & Boult 2016)"
    )
    requires = frozenset({"logits", "labels"})
    parameter_constraints = {
        "tailsize": [Interval(int, 2, None)],
        "alpha": [Interval(int, 1, None)],
        "correct_only": [Boolean()],
    }

    #: libMR's translation of the distances before the Weibull fit
    SHIFT = 10000.0

    def __init__(self, tailsize: int = 20, alpha: int = 3, correct_only: bool = True) -> None:
        self.tailsize = tailsize
        self.alpha = alpha
        self.correct_only = correct_only

    def _fit(self, train: oodlens.Outputs) -> None:
        from scipy.stats import exponweib

        check_fit_labels("Scorer 'openmax'", train.labels, train.n_classes)
        z = np.asarray(train.logits, dtype=np.float64)
        y = np.asarray(train.labels)
        keep = z.argmax(axis=1) == y if self.correct_only else np.ones(len(y), bool)
        c = train.n_classes
        self.means_ = np.empty((c, c))
        self.tail_min_ = np.empty(c)
        self.shape_ = np.empty(c)
        self.scale_ = np.empty(c)
        for k in range(c):
            rows = z[(y == k) & keep]
            if len(rows) < 2:
                raise ValueError(
                    f"openmax: class {k} has {len(rows)} correctly classified training row(s); a "
                    "Weibull fit needs at least 2 (use correct_only=False, or more data)."
                )
            self.means_[k] = rows.mean(axis=0)
            tail = np.sort(np.linalg.norm(rows - self.means_[k], axis=1))[-self.tailsize :]
            self.tail_min_[k] = tail.min()
            _, self.shape_[k], _, self.scale_[k] = exponweib.fit(
                tail + self.SHIFT - tail.min(), floc=0, f0=1
            )

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        from scipy.stats import exponweib

        out = np.empty(outputs.n_samples)
        c = outputs.n_classes
        alpha = min(self.alpha, c)
        weights = (alpha + 1 - np.arange(1, alpha + 1)) / alpha
        for start, z in _chunks(outputs.logits, c):
            rows = np.arange(len(z))
            top = np.argsort(-z, axis=1, kind="stable")[:, :alpha]
            ranked = np.zeros_like(z)
            ranked[rows[:, None], top] = weights
            dist = np.sqrt(
                np.maximum(
                    (z**2).sum(1)[:, None] - 2 * z @ self.means_.T + (self.means_**2).sum(1), 0
                )
            )
            cdf = exponweib.cdf(
                dist + self.SHIFT - self.tail_min_, a=1, c=self.shape_, loc=0, scale=self.scale_
            )
            keep = 1 - cdf * ranked
            revised = np.column_stack([(z * (1 - keep)).sum(axis=1), z * keep])
            out[start : start + len(z)] = -np.exp(revised[:, 0] - logsumexp(revised, axis=1))
        return out


def all_scorers() -> tuple[type[oodlens.Scorer], ...]:
    """The scorer classes of this module, for registration."""
    return (FDBD, NCI, PNML, LTS, VRA, GMM, Relation, OpenMax)
