r"""Feature-space OOD scorers for oodlens, registered through the ``oodlens`` entry point.

Only oodlens's public API is used. Every score is **higher = more in-distribution**.

Features may be memory-mapped (``np.load(..., mmap_mode="r")``, or outputs cached by
oodlens): fitting and scoring read them in row blocks of about :data:`BLOCK_VALUES` numbers
(see :func:`oodlens.arrays.iter_row_chunks`) and never convert the whole matrix to float64;
KNN and NNGuide keep a reference to the training features instead of a copy once the bank
would exceed :data:`IN_MEMORY_BANK_BYTES`.

Inside :func:`oodlens.compute.compute_device` (the harness enters it with its device when
that is not the CPU), the heavy parts run in torch on that device, in float64 except the
nearest-neighbour similarities (float32); outside it they run in numpy, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp

import oodlens
from oodlens.arrays import check_fit_labels, iter_row_chunks, rows_per_chunk, streamed_percentile
from oodlens.compute import (
    current_device,
    device_blocks,
    device_memory_budget,
    fitted_arrays,
    row_blocks,
    row_logsumexp,
    tensors_like,
    to_numpy,
)
from oodlens.params import Boolean, Interval, ListOf, Options

from .head_methods import FDBD, GMM, LTS, NCI, PNML, VRA, OpenMax, Relation, all_scorers
from .stage_methods import Gram, StageScorer

__all__ = [
    "Mahalanobis",
    "KNN",
    "ViM",
    "ReAct",
    "RMD",
    "SHE",
    "NNGuide",
    "FDBD",
    "NCI",
    "PNML",
    "LTS",
    "VRA",
    "GMM",
    "Relation",
    "OpenMax",
    "MultiMahalanobis",
    "MahalanobisODIN",
    "Gram",
    "register_scorers",
    "BLOCK_VALUES",
    "IN_MEMORY_BANK_BYTES",
]

log = logging.getLogger(__name__)

#: About how many numbers one row block holds while fitting and scoring (bounds the memory
#: taken beyond the fitted state).
BLOCK_VALUES = 1 << 22


def _blocks(array: np.ndarray, rows: int | None = None) -> Iterator[tuple[int, Any]]:
    """``(start, float64 block)`` over the rows of ``array``, about BLOCK_VALUES numbers
    each: numpy arrays, or torch tensors on the compute device when one is set."""
    if rows is None:
        rows = rows_per_chunk(array.shape[1], BLOCK_VALUES)
    yield from row_blocks(array, rows)


def _index(values: np.ndarray, like: Any) -> Any:
    """Integer ``values`` where ``like`` lives: as they are for numpy, else a tensor on its
    device."""
    if isinstance(like, np.ndarray):
        return values
    import torch

    return torch.as_tensor(np.array(values), device=like.device)


@dataclass
class _GaussianPass:
    """One pass over the training features: per-class row counts, the per-class sums of
    ``g = f - shift`` and ``sum g g^T`` (``shift`` = the first training row, which keeps the
    subtraction well conditioned). The arrays stay where the pass ran (float64 tensors on
    the compute device, else numpy), so that the covariance algebra runs there too."""

    counts: Any
    shift: Any
    sums: Any
    outer: Any
    n: int

    @classmethod
    def run(
        cls, owner: str, train: oodlens.Outputs, features: np.ndarray | None = None
    ) -> _GaussianPass:
        """The pass over ``features`` (default: the penultimate ones) of ``train``'s rows."""
        counts = check_fit_labels(owner, train.labels, train.n_classes)
        features = train.features if features is None else features
        labels = train.labels
        c, d = train.n_classes, features.shape[1]
        shift = np.asarray(features[0], dtype=np.float64)
        shift_, sums_, outer_ = fitted_arrays(shift, np.zeros((c, d)), np.zeros((d, d)))
        for start, f in _blocks(features):
            g = f - shift_
            outer_ += g.T @ g
            yb = np.asarray(labels[start : start + len(g)])
            if isinstance(g, np.ndarray):
                order = np.argsort(yb, kind="stable")
                classes, first = np.unique(yb[order], return_index=True)
                sums_[classes] += np.add.reduceat(g[order], first, axis=0)
            else:
                sums_.index_add_(0, _index(yb, g), g)
        (counts_,) = fitted_arrays(counts.astype(np.float64))
        return cls(counts_, shift_, sums_, outer_, int(counts.sum()))


def _block_min_distance(f: Any, mu: Any, p: Any, quad_mu: Any) -> Any:
    """``min_c (f - mu_c)^T P (f - mu_c)`` of a row block (numpy, or tensors: differentiable),
    as ``f^T P f - 2 f^T P mu + mu^T P mu`` for all classes at once (not yet clipped at 0)."""
    fp = f @ p
    return _row_min((fp * f).sum(1)[:, None] - 2.0 * fp @ mu.T + quad_mu[None, :])


def _quad(means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    return np.einsum("cd,cd->c", means @ precision, means)


def _min_distance(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``min_c (f - mu_c)^T P (f - mu_c)`` for every row, clipped at 0, in row blocks."""
    rows = rows_per_chunk(features.shape[1] + len(means), BLOCK_VALUES)
    out = np.empty(features.shape[0])
    mu, p, qm = fitted_arrays(means, precision, _quad(means, precision))
    for start, f in _blocks(features, rows):
        out[start : start + len(f)] = np.maximum(to_numpy(_block_min_distance(f, mu, p, qm)), 0)
    return out


def _torch_min_distance(f: Any, means: np.ndarray, precision: np.ndarray) -> Any:
    """:func:`_min_distance` of a (N, D) float64 tensor, differentiable."""
    mu, p, qm = tensors_like(f, means, precision, _quad(means, precision))
    return _block_min_distance(f, mu, p, qm).clamp(min=0.0)


def _row_min(x: Any) -> Any:
    return x.min(axis=1) if isinstance(x, np.ndarray) else x.amin(1)


def _row_max(x: Any) -> Any:
    return x.max(axis=1) if isinstance(x, np.ndarray) else x.amax(1)


def _row_norm(x: Any) -> Any:
    return np.linalg.norm(x, axis=1) if isinstance(x, np.ndarray) else x.norm(dim=1)


class Mahalanobis(oodlens.Scorer):
    r"""Class-conditional Gaussians with a shared covariance (Lee et al., NeurIPS 2018).

    .. math::
        s(x) = -\min_c\, (f - \mu_c)^\top (\hat\Sigma + \lambda I)^{-1} (f - \mu_c),
        \qquad \hat\Sigma = \frac1N \sum_c \sum_{i: y_i = c} (f_i - \mu_c)(f_i - \mu_c)^\top

    on penultimate features :math:`f`, without the paper's input preprocessing and feature
    ensembles. Paper: https://arxiv.org/abs/1807.03888 ; reference code:
    https://github.com/pokaxpoka/deep_Mahalanobis_detector

    The means and the covariance are accumulated over row blocks in one pass
    (:math:`N\hat\Sigma = \sum_i g_i g_i^\top - \sum_c n_c \bar g_c \bar g_c^\top` with
    :math:`g = f - f_0` shifted by the first training row, which keeps the subtraction well
    conditioned).

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
    parameter_constraints = {"reg": [Interval(float, 0, None, closed="left")]}

    def __init__(self, reg: float = 1e-6) -> None:
        self.reg = reg

    def _fit(self, train: oodlens.Outputs) -> None:
        self._fit_classes(_GaussianPass.run(self.name, train))

    def _fit_classes(self, stats: _GaussianPass) -> None:
        self.means_, self.precision_ = _class_gaussians(self.name, self.reg, stats)

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        return -_min_distance(outputs.features, self.means_, self.precision_)

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        return -_torch_min_distance(features.double(), self.means_, self.precision_)


def _class_gaussians(owner: str, reg: float, stats: _GaussianPass) -> tuple[np.ndarray, np.ndarray]:
    """The class means and the ridged inverse of the shared covariance of one pass."""
    d = stats.outer.shape[0]
    means_g = stats.sums / stats.counts[:, None]
    cov = (stats.outer - (means_g * stats.counts[:, None]).T @ means_g) / stats.n
    cov = (cov + cov.T) / 2.0
    ridge = reg * float(cov.trace()) / d
    if ridge == 0.0 and np.linalg.matrix_rank(to_numpy(cov)) < d:
        raise ValueError(
            f"{owner}: the feature covariance is singular (rank "
            f"{np.linalg.matrix_rank(to_numpy(cov))} < {d}) and reg=0; use reg > 0 "
            "(default 1e-6)."
        )
    return to_numpy(means_g + stats.shift), _ridged_inverse(cov, ridge)


def _ridged_inverse(cov: Any, ridge: float) -> np.ndarray:
    """``inv(cov + ridge I)`` as numpy: numpy's, or torch's on the device ``cov`` lives on
    (a 2048 x 2048 inverse takes ~0.2 s on CPU cores, ~0.01 s on a GPU)."""
    if isinstance(cov, np.ndarray):
        return np.linalg.inv(cov + ridge * np.eye(cov.shape[0]))
    import torch

    return to_numpy(
        torch.linalg.inv(cov + ridge * torch.eye(len(cov), dtype=cov.dtype, device=cov.device))
    )


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


#: Up to this many bytes, the nearest-neighbour scorers keep their scaled training bank in
#: memory as float32 (fastest on a CPU); above it (e.g. 1.28M x 2048 features, 10 GB) they
#: keep a reference to the features and one scale per row, and stream the bank in blocks.
IN_MEMORY_BANK_BYTES = 1 << 30


class _NeighbourBank:
    """Training rows ``scale_i * f_i`` for exact top-k inner-product search: in memory (as
    ``dtype``) when they fit :data:`IN_MEMORY_BANK_BYTES`, else a reference to the features
    (a memory map stays on disk) and the per-row scales.

    numpy: float64 products over bank blocks. On a compute device the bank is always the
    reference and the scales (the features' copy on the device, kept by
    :mod:`oodlens.compute` for every scorer of the run, is scaled there; building a bank on
    the host meant copying every row back): float32 products against the whole bank when it
    fits the device's memory budget, else block by block."""

    def __init__(
        self, features: np.ndarray, weights: np.ndarray | None = None, dtype: type = np.float32
    ) -> None:
        """Rows ``weights_i * f_i / ||f_i||`` (weights default to 1), in one pass."""
        n, d = features.shape
        in_memory = (
            current_device() is None and n * d * np.dtype(dtype).itemsize <= IN_MEMORY_BANK_BYTES
        )
        bank = np.empty((n, d), dtype=dtype) if in_memory else None
        scale = np.empty(n)
        blocks: Iterator[tuple[int, Any]] = (
            _blocks(features)
            if current_device() is not None
            else (  # numpy: in the bank's own precision (float32 for KNN, as it always was)
                (start, np.asarray(block, dtype=dtype))
                for start, block in iter_row_chunks(features, rows_per_chunk(d, BLOCK_VALUES))
            )
        )
        for start, f in blocks:
            rows = slice(start, start + len(f))
            norms = to_numpy(_row_norm(f)).astype(np.float64)
            scale[rows] = (1.0 if weights is None else weights[rows]) / np.maximum(norms, 1e-12)
            if bank is not None:
                bank[rows] = to_numpy(f) * scale[rows, None].astype(bank.dtype)
        self.features: np.ndarray = features if bank is None else bank
        self.scale: np.ndarray | None = None if bank is not None else scale

    def state(self) -> dict[str, Any]:
        """What a saved state stores: the rows (the scaled bank, or for a reference the
        features themselves, copied out of the cache that may be gone) and the scales
        (``None`` for a scaled bank), so that the loaded bank searches exactly as this one."""
        return {"rows": np.asarray(self.features), "scale": self.scale}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _NeighbourBank:
        """The bank :meth:`state` describes (its rows may be memory-mapped, or float16)."""
        bank = cls.__new__(cls)
        bank.features, bank.scale = state["rows"], state["scale"]
        return bank

    def _device_blocks(self, device: str, dtype: Any = None) -> Iterator[Any]:
        """The bank rows on ``device`` as ``dtype`` (default float32): in one block when
        they fit the device's memory budget (read from the copy :mod:`oodlens.compute`
        keeps for every scorer of the run), else block by block."""
        import torch

        dtype = torch.float32 if dtype is None else dtype
        n, d = self.features.shape
        fits = n * d * 4 <= device_memory_budget(device)
        rows = n if fits else rows_per_chunk(d, BLOCK_VALUES)
        scale = None if self.scale is None else torch.as_tensor(self.scale, device=device)
        for s, f in device_blocks(self.features, rows, device, dtype):
            yield f if scale is None else f * scale[s : s + len(f), None].to(dtype)

    def tensor_top_k(self, queries: Any, k: int) -> Any:
        """(Q, k) largest inner products of the normalised query tensor with the bank rows,
        on its device and in its precision (float32 search on a compute device; float64
        for a differentiable score, whose gradients reach the queries through the selected
        products: the neighbours are those of the forward pass)."""
        import torch

        q = queries / queries.norm(dim=1, keepdim=True).clamp_min(1e-12)
        top = q.new_empty((len(q), 0))
        for bank in self._device_blocks(str(q.device), q.dtype):
            top = torch.cat([top, q @ bank.T], dim=1)
            if top.shape[1] > k:
                top = top.topk(k, dim=1, sorted=False).values
        return top

    def top_k(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(Q, k) largest inner products of the normalised queries with the bank rows."""
        n, d = self.features.shape
        bank_rows = min(n, rows_per_chunk(d, BLOCK_VALUES))
        query_rows = rows_per_chunk(max(d, bank_rows + k), BLOCK_VALUES)
        out = np.empty((queries.shape[0], k))
        device = current_device()
        if device is not None:
            import torch

            query_rows = rows_per_chunk(max(d, min(n, 1 << 16)), 1 << 26)
            for start, q in device_blocks(queries, query_rows, device, torch.float32):
                top = self.tensor_top_k(q, k)
                out[start : start + len(q)] = top.double().cpu().numpy()
            return out
        for start, block in iter_row_chunks(queries, query_rows):
            z = _normalise(np.asarray(block, dtype=np.float64))
            top = np.empty((len(z), 0))  # the k largest products so far, unordered
            for b, f in iter_row_chunks(self.features, bank_rows):
                # no name for the float64 copy: freed right after the product, its memory
                # is reused by the next block's copy (holding it costs ~5% in page faults)
                if self.scale is None:
                    sim = z @ f.astype(np.float64).T
                else:
                    sim = z @ (f * self.scale[b : b + len(f), None]).T
                top = np.concatenate([top, sim], axis=1)
                if top.shape[1] > k:
                    top = -np.partition(-top, k - 1, axis=1)[:, :k]
            out[start : start + len(z)] = top
        return out


class KNN(oodlens.Scorer):
    r"""Deep nearest neighbours (Sun et al., ICML 2022).

    .. math:: s(x) = -\lVert z - z_{(k)} \rVert_2, \qquad z = f / \lVert f \rVert_2

    where :math:`z_{(k)}` is the k-th nearest normalised training feature. The fitted bank
    holds the normalised training features as float32 up to
    :data:`IN_MEMORY_BANK_BYTES` (1 GiB), and above it (or on a compute device) only their
    inverse norms and a reference to the features (a memory-mapped matrix stays on disk, read in blocks). Exact search by blocked matrix products
    (:math:`\lVert z - t\rVert^2 = 2 - 2 z^\top t` for unit vectors) in float64 (float32
    on a compute device), keeping the running k largest similarities per query, so memory
    stays bounded; faiss (``IndexFlatL2``) is used instead when installed and ``use_faiss``
    is true. Paper: https://arxiv.org/abs/2204.06507 ; code:
    https://github.com/deeplearning-wisc/knn-ood

    Args:
        k: which neighbour (default 50, the paper's choice for CIFAR-10); must not exceed the
            number of training rows.
        use_faiss: use faiss when it can be imported.
    """

    name = "knn"
    large_state = ("bank_/rows",)
    tuning_grid = {"k": [1, 10, 20, 50, 100, 200, 500, 1000]}  # OpenOOD's search
    description = "distance to the k-th nearest normalised training feature (Sun et al. 2022)"
    requires = frozenset({"features"})
    parameter_constraints = {"k": [Interval(int, 1, None)], "use_faiss": [Boolean()]}

    def __init__(self, k: int = 50, use_faiss: bool = True) -> None:
        self.k = k
        self.use_faiss = use_faiss

    def _fit(self, train: oodlens.Outputs) -> None:
        n, d = train.features.shape
        if self.k > n:
            raise ValueError(
                f"knn: k={self.k!r} must be an integer in [1, {n}] (the number of training rows)."
            )
        self.bank_ = _NeighbourBank(train.features)
        self.index_ = None
        if self.use_faiss:
            try:
                import faiss
            except ImportError:
                faiss = None
            if faiss is not None:
                self.index_ = faiss.IndexFlatL2(d)
                for _, block in iter_row_chunks(train.features, rows_per_chunk(d)):
                    self.index_.add(_normalise(np.asarray(block, dtype=np.float32)))

    def get_state(self) -> dict[str, Any]:
        """As :meth:`oodlens.Scorer.get_state`, with the bank's arrays (not a reference into
        a cache that may be gone) and, with faiss, the vectors of its index."""
        state = super().get_state()
        fitted = state["fitted"]
        fitted["bank_"] = fitted["bank_"].state()
        index = fitted.pop("index_")
        if index is not None:
            fitted["index_rows_"] = index.reconstruct_n(0, index.ntotal)
        return state

    def set_state(self, fitted: Mapping[str, Any]) -> None:
        fitted = dict(fitted)
        self.bank_ = _NeighbourBank.from_state(fitted.pop("bank_"))
        rows = fitted.pop("index_rows_", None)
        self.index_ = None
        if rows is not None:
            try:
                import faiss
            except ImportError:
                faiss = None
            if faiss is not None:  # without faiss, the exact search of the bank
                self.index_ = faiss.IndexFlatL2(rows.shape[1])
                self.index_.add(np.ascontiguousarray(rows, dtype=np.float32))
        super().set_state(fitted)

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        k = int(self.k)
        if self.index_ is not None:
            out = np.empty(outputs.n_samples)
            rows = rows_per_chunk(outputs.features.shape[1], BLOCK_VALUES)
            for start, block in iter_row_chunks(outputs.features, rows):
                dist2, _ = self.index_.search(_normalise(np.asarray(block, dtype=np.float32)), k)
                out[start : start + len(block)] = -np.sqrt(np.maximum(dist2[:, -1], 0.0))
            return out
        kth = self.bank_.top_k(outputs.features, k).min(axis=1)
        return -np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        """The exact search in torch (also when faiss scores), the k-th neighbour fixed at
        the forward pass; differentiable in the features."""
        kth = self.bank_.tensor_top_k(features.double(), int(self.k)).amin(1)
        return -(2.0 - 2.0 * kth).clamp(min=0.0).sqrt()


class ViM(oodlens.Scorer):
    r"""Virtual-logit matching (Wang et al., CVPR 2022).

    With the head :math:`z = Wf + b`, the origin :math:`u = -W^{+} b`, and :math:`R` the
    eigenvectors of the covariance of :math:`f - u` (training features) outside the
    principal subspace of dimension ``dim``:

    .. math::
        s(x) = \log \sum_c e^{z_c} - \alpha \lVert R^\top (f - u) \rVert_2,
        \qquad \alpha = \frac{\operatorname{mean}_i \max_c z_{ic}}{\operatorname{mean}_i
        \lVert R^\top (f_i - u) \rVert_2}

    (the log of the ViM probability ratio, as in the official code). :math:`W^{+}` is the
    pseudo-inverse with the singular-value cut-off :math:`\max(C, D)\,\varepsilon` (as
    ``torch.linalg.pinv`` and pytorch-ood), so :math:`u` is the minimum-norm solution even for
    a rank-deficient head (e.g. rows summing to zero, as in any softmax-equivalent head,
    whose smallest singular value is ~1e-14 and is dropped rather than inverted; the
    official code's ``np.linalg.pinv`` default would invert it). Paper:
    https://arxiv.org/abs/2203.10807 ; code: https://github.com/haoqiwang/vim

    Args:
        dim: principal subspace dimension, smaller than the feature dimension D; ``None``
            uses the paper's rule (1000 for D >= 2048, 512 for D >= 768, else D // 2).
    """

    name = "vim"
    tuning_grid = {"dim": [64, 128, 256, 512, 1000]}  # values >= D are skipped when tuning
    description = (
        "energy minus the scaled residual norm outside the principal subspace (Wang et al. 2022)"
    )
    requires = frozenset({"features", "head", "logits"})
    parameter_constraints = {"dim": [Interval(int, 1, None), None]}

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim

    def _fit(self, train: oodlens.Outputs) -> None:
        n, d = train.features.shape
        dim = (
            self.dim
            if self.dim is not None
            else (1000 if d >= 2048 else 512 if d >= 768 else d // 2)
        )
        if not 1 <= dim < d:
            raise ValueError(
                f"vim: dim={dim!r} must be an integer in [1, {d - 1}] (feature dimension {d})."
            )
        w, b = np.asarray(train.head_weight, np.float64), np.asarray(train.head_bias, np.float64)
        # minimum-norm solution of W u = -b; the cut-off max(C, D) * eps drops the ~1e-14
        # singular value of a head whose rows sum to zero (softmax-equivalent heads), which
        # numpy's default cut-off (1e-15) would invert, throwing the origin far away
        self.origin_ = -np.linalg.pinv(w, rcond=max(w.shape) * np.finfo(np.float64).eps) @ b
        origin, w_, b_ = fitted_arrays(self.origin_, w, b)
        xtx = 0.0
        max_logit_sum = 0.0
        for _, f in _blocks(train.features):
            x = f - origin
            xtx = xtx + x.T @ x
            max_logit_sum += float(_row_max(f @ w_.T + b_).sum())
        if isinstance(xtx, np.ndarray):
            eigval, eigvec = np.linalg.eigh(xtx / n)
        else:  # on the compute device (cuSOLVER on CUDA)
            import torch

            eigval, eigvec = (to_numpy(t) for t in torch.linalg.eigh(xtx / n))
        # the residual is the complement of the top-dim eigenvectors: it holds signal only
        # when the centred training features span more than dim directions (their rank is
        # at most the number of rows); else it is rounding noise and alpha explodes
        rank = int(np.sum(eigval > eigval.max() * d * np.finfo(np.float64).eps))
        if rank <= dim:
            raise ValueError(
                f"vim: the {n} training rows span {rank} dimension(s) around the origin, not "
                f"more than dim={dim}, so nothing is left outside the principal subspace but "
                f"rounding noise. Fit on more rows than dim (at least {dim + 1}, many more in "
                f"practice) or use dim < {rank}."
            )
        self.residual_basis_ = np.ascontiguousarray(eigvec[:, : d - dim])
        (basis,) = fitted_arrays(self.residual_basis_)
        vlogit_sum = 0.0
        for _, f in _blocks(train.features):
            vlogit_sum += float(_row_norm((f - origin) @ basis).sum())
        if vlogit_sum / n <= 0:
            raise ValueError(
                "vim: the training features have no residual outside the principal subspace; lower dim."
            )
        self.alpha_ = float((max_logit_sum / n) / (vlogit_sum / n))
        self.weight_, self.bias_ = w, b
        self.dim_ = int(dim)

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        rows = rows_per_chunk(outputs.features.shape[1] + len(self.bias_), BLOCK_VALUES)
        out = np.empty(outputs.n_samples)
        origin, basis, w, b = fitted_arrays(
            self.origin_, self.residual_basis_, self.weight_, self.bias_
        )
        for start, f in _blocks(outputs.features, rows):
            out[start : start + len(f)] = to_numpy(self._block(f, origin, basis, w, b))
        return out

    def _block(self, f: Any, origin: Any, basis: Any, w: Any, b: Any) -> Any:
        """The score of a row block (numpy, or tensors: differentiable)."""
        return row_logsumexp(f @ w.T + b) - _row_norm((f - origin) @ basis) * self.alpha_

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        f = features.double()
        arrays = tensors_like(f, self.origin_, self.residual_basis_, self.weight_, self.bias_)
        return self._block(f, *arrays)


def _percentile(features: np.ndarray, q: float) -> float:
    """``np.percentile(features, q)``, exactly: sorted on a CUDA compute device when the
    values fit its memory budget, else :func:`oodlens.arrays.streamed_percentile`."""
    device = current_device()
    if device is None or features.size * 32 > device_memory_budget(device):
        return float(streamed_percentile(features, q))
    import torch

    flat = torch.cat([f.flatten() for _, f in _blocks(features)]).sort().values
    pos = (flat.numel() - 1) * q / 100.0
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))
    a, b = float(flat[lo]), float(flat[hi])
    return a + (b - a) * (pos - lo)


class ReAct(oodlens.Scorer):
    r"""Rectified activations, then energy (Sun et al., NeurIPS 2021).

    .. math:: s(x) = \log \sum_c \exp\big(W \min(f, \tau) + b\big)_c

    where :math:`\tau` is the ``percentile``-th percentile of all feature values of the
    training outputs (``percentile_on="train"``, the paper's choice) or of the held-out ID
    validation outputs (``percentile_on="val"``, OpenOOD's choice, which also tunes the
    percentile over 85-99 on validation data: ``tuning_grid``). Exact, computed by
    :func:`oodlens.arrays.streamed_percentile` without loading the features whole. Paper:
    https://arxiv.org/abs/2111.12797 ; code: https://github.com/deeplearning-wisc/react

    Args:
        percentile: clipping percentile in (0, 100], in percent like every percentile
            parameter of oodlens (default 90, as in the paper).
        percentile_on: ``"train"`` (default) or ``"val"``: whose features set the clip.
    """

    name = "react"
    description = (
        "energy of the head applied to features clipped at a training percentile (Sun et al. 2021)"
    )
    requires = frozenset({"features", "head"})
    parameter_constraints = {
        "percentile": [Interval(float, 0, 100, closed="right")],
        "percentile_on": [Options(("train", "val"))],
    }
    tuning_grid = {"percentile": [85, 90, 95, 99]}

    def __init__(self, percentile: float = 90.0, percentile_on: str = "train") -> None:
        self.percentile = percentile
        self.percentile_on = percentile_on

    def requirements(self) -> frozenset[str]:
        """Features and head; with ``percentile_on="val"`` also the ``val`` outputs."""
        extra = {"val"} if self.percentile_on == "val" else set()
        return frozenset({"features", "head"} | extra)

    def _fit(self, train: oodlens.Outputs, val: oodlens.Outputs | None = None) -> None:
        source = val if self.percentile_on == "val" else train
        self.threshold_ = _percentile(source.features, self.percentile)

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        w, b = fitted_arrays(outputs.head_weight, outputs.head_bias)
        rows = rows_per_chunk(outputs.features.shape[1] + len(w), BLOCK_VALUES)
        out = np.empty(outputs.n_samples)
        for start, f in _blocks(outputs.features, rows):
            out[start : start + len(f)] = to_numpy(self._block(f, w, b))
        return out

    def _block(self, f: Any, w: Any, b: Any) -> Any:
        """The energy of the clipped features of a row block (numpy, or tensors)."""
        return row_logsumexp(f.clip(max=self.threshold_) @ w.T + b)

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        weight, bias = head
        return self._block(features.double(), weight.double(), bias.double())


class RMD(Mahalanobis):
    r"""Relative Mahalanobis distance (Ren et al., 2021, "A simple fix to Mahalanobis distance
    for improving near-OOD detection").

    .. math:: s(x) = -\min_k \big( d_k(f) - d_0(f) \big)

    with :math:`d_k` the Mahalanobis distance to class k under the shared covariance (as
    ``mahalanobis``) and :math:`d_0` the distance under one Gaussian fitted to all training
    features (the "background"), which removes the directions every class shares.
    Regularisation as in ``mahalanobis`` (``reg``, relative ridge), for both covariances.
    pytorch-ood's ``RMD`` does not divide the covariances by N: the same ranking.
    Paper: https://arxiv.org/abs/2106.09022
    """

    name = "rmd"
    description = "class Mahalanobis distance minus a background Gaussian's (Ren et al. 2021)"

    def _fit(self, train: oodlens.Outputs) -> None:
        stats = _GaussianPass.run(self.name, train)
        self._fit_classes(stats)
        d, n = stats.outer.shape[0], stats.n
        mean_g = stats.sums.sum(0) / n
        cov = (stats.outer - n * (mean_g[:, None] * mean_g[None, :])) / n
        cov = (cov + cov.T) / 2.0
        self.background_mean_ = to_numpy(mean_g + stats.shift)
        self.background_precision_ = _ridged_inverse(cov, self.reg * float(cov.trace()) / d)

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        class_part = super()._score(outputs)  # -min_k d_k
        d0 = _min_distance(
            outputs.features, self.background_mean_[None, :], self.background_precision_
        )
        return class_part + d0  # -(min_k d_k - d_0)

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        f = features.double()
        d0 = _torch_min_distance(f, self.background_mean_[None, :], self.background_precision_)
        return super()._torch_score(logits, f, head) + d0


class MahalanobisODIN(Mahalanobis):
    r"""Mahalanobis with Lee et al.'s input preprocessing (NeurIPS 2018): each image is moved
    a step against the gradient of its distance to the closest class mean, and scored as
    ``mahalanobis`` at the moved point.

    .. math::
        \tilde x = x - \varepsilon \operatorname{sign}\big(\nabla_x \tfrac12
            (f(x) - \mu_{\hat c})^\top P (f(x) - \mu_{\hat c})\big) / \sigma, \qquad
        s(x) = -\min_c (f(\tilde x) - \mu_c)^\top P (f(\tilde x) - \mu_c)

    with the class means and precision :math:`P` of ``mahalanobis`` (fitted on the cached
    training features, without the network), :math:`\hat c` the closest class and
    :math:`\sigma` the preprocessing's per-channel std (the step on the pixel scale, as
    ODIN's). Model-aware: a forward and a backward pass, then a forward pass, per image.
    Default ε = 0.0014 (OpenOOD's MDS-ensemble noise; the paper tunes it over
    0-0.005 on validation data: ``tuning_grid``); pytorch-ood's ``MahalanobisODIN``
    defaults to 0.002. In this distribution (not oodlens-model-scorers) because it is
    ``mahalanobis`` with a step before it. Paper: https://arxiv.org/abs/1807.03888

    Args:
        reg: relative ridge of the covariance (as ``mahalanobis``).
        magnitude: ε >= 0, the step on the pixel scale.
    """

    name = "mahalanobis_odin"
    description = "Mahalanobis after an input step toward the closest class (Lee et al. 2018)"
    requires = frozenset({"features", "labels", "model"})
    parameter_constraints = {
        "reg": [Interval(float, 0, None, closed="left")],
        "magnitude": [Interval(float, 0, None)],
    }
    tuning_grid = {"magnitude": [0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005]}

    def __init__(self, reg: float = 1e-6, magnitude: float = 0.0014) -> None:
        super().__init__(reg=reg)
        self.magnitude = magnitude

    def _score(self, outputs: oodlens.Outputs, model: Any = None) -> np.ndarray:
        import torch

        from oodlens.network import forward_all

        net, dev = model.model, model.device
        std = torch.tensor(model.std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
        mu = torch.as_tensor(self.means_, dtype=torch.float64, device=dev)
        precision = torch.as_tensor(self.precision_, dtype=torch.float64, device=dev)
        quad = ((mu @ precision) * mu).sum(1)

        def distances(f):
            fp = f @ precision
            return (fp * f).sum(1)[:, None] - 2.0 * fp @ mu.T + quad[None, :]

        was_training = net.training
        out = []
        try:
            net.eval()
            for x, _ in model.batches():
                with torch.inference_mode(False), torch.enable_grad():
                    x = x.to(dev).clone().requires_grad_(True)
                    f = forward_all(net, x)[1].double()
                    centred = f - mu[distances(f.detach()).argmin(1)]
                    loss = 0.5 * ((centred @ precision) * centred).sum(1).mean()
                    (gradient,) = torch.autograd.grad(loss, x)
                with torch.no_grad():
                    moved = x.detach() - self.magnitude * gradient.sign() / std[:, : x.shape[1]]
                    d = distances(forward_all(net, moved)[1].double())
                    out.append(-d.min(1).values.clamp(min=0.0).cpu())
        finally:
            net.train(was_training)
        return torch.cat(out).numpy()


class MultiMahalanobis(StageScorer):
    r"""Lee et al.'s feature ensemble (NeurIPS 2018): ``mahalanobis`` on the pooled features
    of several stages of the backbone, averaged.

    .. math::
        s(x) = -\frac1L \sum_{l=1}^{L} \min_c\, (f_l - \mu_{lc})^\top
            (\hat\Sigma_l + \lambda_l I)^{-1} (f_l - \mu_{lc})

    with :math:`f_l` the spatially averaged output of stage :math:`l` (timm's
    ``feature_info``: stem and residual stages of a ResNet, blocks of a ViT; recorded in the
    same forward pass as the penultimate features, see ``--stages``), and per stage the
    class means, the shared covariance and the ridge of ``mahalanobis``.

    The stage weights are **averaged** (each :math:`1/L`), not fitted: the paper fits them by
    logistic regression on validation OOD (or adversarial) samples, which would fit the
    detector on OOD data. pytorch-ood's ``MultiMahalanobis`` weighs every stage 1 by
    default (a sum: the same ranking) and does not divide its covariances by N (the same
    ranking per stage, each scaled by N); OpenOOD's MDS-ensemble fits the weights on its
    validation OOD set and adds input preprocessing (noise 0.0014; that is
    ``mahalanobis_odin``, a model-aware scorer). Paper: https://arxiv.org/abs/1807.03888

    Args:
        stages: the stages (indices into the backbone's ``feature_info``); ``None``
            (default): every stage the outputs carry, and the harness extracts every stage
            of the backbone (the paper's choice: all residual stages and the stem).
        reg: relative ridge of each stage's covariance (as ``mahalanobis``).
    """

    name = "multi_mahalanobis"
    description = "Mahalanobis on the pooled features of several stages, averaged (Lee et al. 2018)"
    requires = frozenset({"labels", "stages"})
    parameter_constraints = {
        "stages": [ListOf([Interval(int, 0, None)], min_length=1, single=True), None],
        "reg": [Interval(float, 0, None, closed="left")],
    }

    def __init__(self, stages: list[int] | None = None, reg: float = 1e-6) -> None:
        self.stages = stages
        self.reg = reg

    def requirements(self) -> frozenset[str]:
        return frozenset({"labels", *self._block_requirements()})

    def _fit(self, train: oodlens.Outputs) -> None:
        names = self._block_names(train)
        fitted = [
            _class_gaussians(
                self.name, self.reg, _GaussianPass.run(self.name, train, train.block(n))
            )
            for n in names
        ]
        self.stages_ = tuple(names)
        self.means_ = tuple(m for m, _ in fitted)
        self.precision_ = tuple(p for _, p in fitted)

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        total = np.zeros(outputs.n_samples)
        for name, means, precision in zip(self.stages_, self.means_, self.precision_, strict=True):
            block = outputs.block(name)
            if block.shape[1] != means.shape[1]:
                raise ValueError(
                    f"Scorer {self.name!r} was fitted on {means.shape[1]} features of {name} "
                    f"but these Outputs have {block.shape[1]}; use outputs of the same model."
                )
            total += _min_distance(block, means, precision)
        return -total / len(self.stages_)


class SHE(oodlens.Scorer):
    r"""Simplified Hopfield energy (Zhang, Fu, Lü, Zhang, ICLR 2023).

    The stored pattern of class k is the mean penultimate feature of the training samples
    that are labelled k **and** predicted k; a sample scores the inner product with the
    pattern of its predicted class:

    .. math:: s(x) = \langle f(x), \bar f_{\hat y(x)} \rangle

    A class without a correctly predicted training sample is an error naming it.
    Paper: https://openreview.net/forum?id=KkazG4lgKL
    """

    name = "she"
    description = (
        "inner product with the stored mean feature of the predicted class (Zhang et al. 2023)"
    )
    requires = frozenset({"features", "labels", "logits"})

    def __init__(self) -> None:
        pass

    def _fit(self, train: oodlens.Outputs) -> None:
        check_fit_labels("she", train.labels, train.n_classes)
        c, d = train.n_classes, train.features.shape[1]
        (sums,), counts = fitted_arrays(np.zeros((c, d))), np.zeros(c)
        rows = rows_per_chunk(d, BLOCK_VALUES)
        # the logits in the same row blocks, read (not mapped) like the features
        logit_blocks = iter_row_chunks(train.logits, rows)
        for (start, f), (_, z) in zip(_blocks(train.features, rows), logit_blocks, strict=True):
            y = np.asarray(train.labels[start : start + len(f)])
            pred = z.argmax(axis=1)
            ok = np.flatnonzero(pred == y)
            counts += np.bincount(y[ok], minlength=c)
            if isinstance(f, np.ndarray):
                np.add.at(sums, y[ok], f[ok])
            else:
                sums.index_add_(0, _index(y[ok], f), f[_index(ok, f)])
        sums = to_numpy(sums)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            raise ValueError(
                f"she: class(es) {empty.tolist()[:10]} have no correctly predicted training "
                "sample, so no stored pattern; fit on outputs of a model that gets each class "
                "right at least once."
            )
        self.patterns_ = sums / counts[:, None]

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        out = np.empty(outputs.n_samples)
        (patterns,) = fitted_arrays(self.patterns_)
        rows = rows_per_chunk(outputs.features.shape[1], BLOCK_VALUES)
        logit_blocks = iter_row_chunks(outputs.logits, rows)
        for (start, f), (_, z) in zip(_blocks(outputs.features, rows), logit_blocks, strict=True):
            pred = z.argmax(axis=1)
            out[start : start + len(f)] = to_numpy((f * patterns[_index(pred, f)]).sum(1))
        return out

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        f = features.double()
        (patterns,) = tensors_like(f, self.patterns_)
        return (f * patterns[logits.argmax(1)]).sum(1)


class NNGuide(oodlens.Scorer):
    r"""Nearest-neighbour guidance (Park, Jung, Teoh, ICCV 2023).

    The bank holds the training features normalised to unit length and scaled by their
    energy :math:`E = \log\sum_c e^{z_c}`; a sample scores its own energy times the mean of
    its k largest inner products with the bank:

    .. math:: s(x) = E(x) \cdot \frac1k \sum_{j \in \text{top-}k}
        \Big\langle \frac{f(x)}{\lVert f(x)\rVert}, E_j \frac{f_j}{\lVert f_j\rVert}
        \Big\rangle

    Args:
        k: number of neighbours (default 10, pytorch-ood's; the paper uses 100 with a
            subsampled ImageNet bank); at most the number of training rows.

    Exact search in blocks, as KNN's (the bank is in memory up to
    :data:`IN_MEMORY_BANK_BYTES` on the CPU, else a reference to the features and one
    scale per row). Paper:
    https://arxiv.org/abs/2309.14888 ; code: https://github.com/roomo7time/nnguide
    """

    name = "nnguide"
    large_state = ("bank_/rows",)
    description = "energy times similarity to energy-scaled training features (Park et al. 2023)"
    requires = frozenset({"features", "logits"})
    parameter_constraints = {"k": [Interval(int, 1, None)]}
    tuning_grid = {"k": [1, 10, 50, 100]}

    def __init__(self, k: int = 10) -> None:
        self.k = k

    def _fit(self, train: oodlens.Outputs) -> None:
        n, d = train.features.shape
        if self.k > n:
            raise ValueError(f"nnguide: k={self.k} exceeds the {n} training rows.")
        energy = np.empty(n)
        logit_rows = rows_per_chunk(train.logits.shape[1], BLOCK_VALUES)
        for start, z in iter_row_chunks(train.logits, logit_rows):
            energy[start : start + len(z)] = logsumexp(np.asarray(z, np.float64), axis=1)
        # float64 in memory, as the reference code (its products are not renormalised)
        self.bank_ = _NeighbourBank(train.features, energy, np.float64)

    def get_state(self) -> dict[str, Any]:
        """As :meth:`oodlens.Scorer.get_state`, with the bank's arrays."""
        state = super().get_state()
        state["fitted"]["bank_"] = state["fitted"]["bank_"].state()
        return state

    def set_state(self, fitted: Mapping[str, Any]) -> None:
        fitted = dict(fitted)
        self.bank_ = _NeighbourBank.from_state(fitted.pop("bank_"))
        super().set_state(fitted)

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        top = self.bank_.top_k(outputs.features, int(self.k))
        z = np.asarray(outputs.logits, dtype=np.float64)
        return logsumexp(z, axis=1) * top.mean(axis=1)

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        top = self.bank_.tensor_top_k(features.double(), int(self.k))
        return logits.double().logsumexp(1) * top.mean(1)


@oodlens.hookimpl
def register_scorers(register: Callable[[Any], None]) -> None:
    """Register the feature-space scorers with oodlens."""
    for cls in (
        Mahalanobis,
        KNN,
        ViM,
        ReAct,
        RMD,
        SHE,
        NNGuide,
        MultiMahalanobis,
        MahalanobisODIN,
        Gram,
        *all_scorers(),
    ):
        register(cls)
