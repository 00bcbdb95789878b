"""The logit-KDE scorer (the flagship): density of a sample's logits under the training set's logits."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..arrays import iter_row_chunks, rows_per_chunk
from ..compute import current_device, device_blocks, row_blocks, tensors_like, to_numpy
from ..outputs import Outputs
from ..params import Boolean, Interval, Options
from . import kde as _kde
from .base import Scorer

__all__ = ["LogitKDE"]

log = logging.getLogger(__name__)

_MODES = ("marginal", "class_conditional")
_METHODS = ("grid", "exact")
_RULES = ("scott", "silverman", "cv")
_CV_MULTIPLIERS = 2.0 ** np.linspace(-2, 2, 9)
_CV_ROWS = 1250
_CV_MIN_ROWS = 10


def _cv_multiplier(sample: np.ndarray, rng: np.random.Generator) -> float:
    """Multiplier of Scott's factor maximising the held-out log-likelihood (20% held out)."""
    m, d = sample.shape
    if m < _CV_MIN_ROWS:
        log.warning(
            "bandwidth='cv' needs >= %d rows per KDE, got %d; using Scott's rule.", _CV_MIN_ROWS, m
        )
        return 1.0
    perm = rng.permutation(m)
    held, fit = sample[perm[: m // 5]], sample[perm[m // 5 :]]
    cov = np.atleast_2d(np.cov(fit.T, ddof=1))
    base = _kde.bandwidth_factor("scott", fit.shape[0], d)
    best, best_ll = 1.0, -np.inf
    for mult in _CV_MULTIPLIERS:
        dens = _kde.exact_kde(fit, held, (mult * base) ** 2 * cov)
        ll = float(np.mean(np.log(np.maximum(dens, 1e-300))))
        if ll > best_ll:
            best, best_ll = float(mult), ll
    return best


def _column_min(x: Any) -> Any:
    return x.min(axis=0) if isinstance(x, np.ndarray) else x.amin(0)


def _column_max(x: Any) -> Any:
    return x.max(axis=0) if isinstance(x, np.ndarray) else x.amax(0)


class LogitKDE(Scorer):
    r"""Logit kernel density estimation: distrust predictions whose logits are rare in training.

    Fitted on the classifier's logits on its own training data. Two modes:

    * ``mode="marginal"`` (the origin's method, default): one 1-D Gaussian KDE :math:`p_j`
      per logit column, fitted on all training rows; the score is the **average density**

      .. math:: s(z) = \frac1C \sum_{j=1}^{C} p_j(z_j),
          \qquad p_j(x) = \frac1n \sum_{i=1}^{n} \frac{1}{h_j}\,\varphi\!\Big(\frac{x - z_{ij}}{h_j}\Big)

      The score is that average density itself, so absolute thresholds (the origin used
      0.04) keep their meaning for a given model. The origin's code evaluated the second
      logit with the *first* column's KDE; here each logit is scored by its own column's
      KDE.
    * ``mode="class_conditional"``: one KDE per class :math:`c`, fitted on the training rows
      labelled :math:`c`, over the ``top_k`` largest logits in decreasing order (``top_k=1``:
      the predicted-class logit); a sample is scored under the KDE of its predicted class.

    Bandwidths follow ``scipy.stats.gaussian_kde``: kernel covariance
    :math:`f^2 \hat\Sigma` with :math:`\hat\Sigma` the sample covariance (``ddof=1``) and
    factor :math:`f` from ``bandwidth``: ``"scott"`` (:math:`n^{-1/(d+4)}`, scipy's default),
    ``"silverman"``, a float (used as the factor, like scipy's scalar ``bw_method``), or
    ``"cv"``: a multiplier of Scott's factor in :math:`2^{[-2, 2]}` (9 values) maximising the
    log-likelihood of 20% held-out rows (a random subsample of at most 1250 rows per KDE,
    seeded by ``random_state``), then applied with Scott's factor for the full sample size.

    ``method="exact"`` sums every training kernel (the reference, it keeps the training values
    in memory); ``method="grid"`` (default) bins the training values on a grid with
    ``grid_resolution`` points per bandwidth, convolves by FFT and interpolates linearly:
    O(n_train + grid) to fit, O(1) per test value, and within ~1e-4 of the peak density of
    the exact result (1-D). Fitting streams over the training logits in chunks (memory-mapped
    arrays are read block by block), so the (n, C) training logits are never copied whole.
    Inside :func:`oodlens.compute.compute_device` (the harness with ``--device cuda``) the
    passes over all n x C logits run in torch there: the column statistics, the binning and
    the scoring of the marginal grids, the class-conditional top-k; the grids' smoothing
    (FFT) and the densities of the n top-k values stay in numpy. ``method="exact"`` keeps
    its numpy sums.

    Defined behaviour on awkward input:

    * a logit more than 8 bandwidths beyond every training value has density 0 under the
      grid method (below 1.3e-14 of one kernel's peak; the exact method underflows likewise
      far out), so far-out samples get the lowest possible score;
    * a zero-variance training column (marginal) raises ``ValueError`` naming the columns;
    * a class with fewer than ``top_k + 1`` training rows, or whose top-k logits have a
      singular covariance (class-conditional), raises ``ValueError`` naming the classes, or
      with ``on_small_class="zero"`` gives density 0 to every sample predicted as that class;
    * NaN or inf logits are refused by :class:`~oodlens.Outputs` itself.

    Args:
        mode: ``"marginal"`` or ``"class_conditional"``.
        bandwidth: ``"scott"``, ``"silverman"``, ``"cv"`` or a positive float factor.
        method: ``"grid"`` or ``"exact"``.
        top_k: class-conditional only: how many sorted top logits to model (1 to 3 are
            sensible; the grid is coarsened beyond 4M cells).
        grid_resolution: grid points per bandwidth (>= 4).
        on_small_class: ``"raise"`` or ``"zero"`` (see above).
        random_state: seed of the held-out split for ``bandwidth="cv"``.
        one_sided: class-conditional, ``top_k=1`` only: a top logit above its class's densest
            training value scores as that value, so over-confident predictions are not
            punished (only unusually low top logits are); see docs/scorers.md for when to
            use it.
        bw_multiplier: multiplies the bandwidth factor chosen by ``bandwidth`` (default 1.0);
            ``oodlens bench --tune`` searches it over 0.25-4 on held-out validation data.

    Attributes:
        bandwidth_factors_: (G,) factor of each KDE (G = C columns or C classes).
        n_train_: number of training rows.
        skipped_classes_: classes scored 0 because of ``on_small_class="zero"``.

    Example:
        >>> import numpy as np, oodlens
        >>> rng = np.random.default_rng(0)
        >>> train = oodlens.Outputs(logits=rng.normal(3, 1, size=(500, 2)))
        >>> kde = oodlens.create_scorer("logit_kde").fit(train)
        >>> kde.score(oodlens.Outputs(logits=np.array([[3.0, 3.0], [30.0, -30.0]]))).round(3)
        array([0.391, 0.   ])
    """

    name = "logit_kde"
    description = "Gaussian KDE of the training logits: average marginal density or per class"
    requires = frozenset({"logits"})
    parameter_constraints = {
        "mode": [Options(_MODES)],
        "bandwidth": [Options(_RULES), Interval(float, 0, None, closed="neither")],
        "method": [Options(_METHODS)],
        "top_k": [Interval(int, 1, None)],
        "grid_resolution": [Interval(int, 4, None)],
        "on_small_class": [Options(("raise", "zero"))],
        "random_state": [Interval(int, 0, None)],
        "bw_multiplier": [Interval(float, 0, None, closed="neither")],
        "one_sided": [Boolean()],
    }
    tuning_grid = {"bw_multiplier": [0.25, 0.5, 1.0, 2.0, 4.0]}

    def __init__(
        self,
        mode: str = "marginal",
        bandwidth: str | float = "scott",
        method: str = "grid",
        top_k: int = 1,
        grid_resolution: int = 32,
        on_small_class: str = "raise",
        random_state: int = 0,
        bw_multiplier: float = 1.0,
        one_sided: bool = False,
    ) -> None:
        self.mode = mode
        self.bandwidth = bandwidth
        self.method = method
        self.top_k = top_k
        self.grid_resolution = grid_resolution
        self.on_small_class = on_small_class
        self.random_state = random_state
        self.bw_multiplier = bw_multiplier
        self.one_sided = one_sided

    def requirements(self) -> frozenset[str]:
        """Logits; the class-conditional mode also needs training labels."""
        if self.mode == "class_conditional":
            return frozenset({"logits", "labels"})
        return frozenset({"logits"})

    def _factor(self, n: int, d: int, sample: np.ndarray | None, rng: np.random.Generator) -> float:
        if self.bandwidth == "cv":
            base = _cv_multiplier(sample, rng) * _kde.bandwidth_factor("scott", n, d)
        elif isinstance(self.bandwidth, str):
            base = _kde.bandwidth_factor(self.bandwidth, n, d)
        else:
            base = float(self.bandwidth)
        return self.bw_multiplier * base

    # ------------------------------------------------------------------ fitting
    def _fit(self, train: Outputs) -> None:
        if self.one_sided and (self.mode != "class_conditional" or self.top_k != 1):
            raise ValueError(
                "LogitKDE: one_sided=True needs mode='class_conditional' and top_k=1 (it caps "
                "the top logit at its class's densest value)."
            )
        if self.top_k > train.n_classes:
            raise ValueError(
                f"LogitKDE: top_k={self.top_k!r} must be an integer in [1, {train.n_classes}] "
                f"(the number of classes)."
            )
        rng = np.random.default_rng(self.random_state)
        if self.mode == "marginal":
            self._fit_marginal(train.logits, rng)
        else:
            self._fit_class_conditional(train, rng)

    def _fit_marginal(self, logits: np.ndarray, rng: np.random.Generator) -> None:
        n, c = logits.shape
        if n < 2:
            raise ValueError(f"LogitKDE needs at least 2 training rows, got {n}.")
        rows = rows_per_chunk(c)
        count = 0
        mean = np.zeros(c)
        m2 = np.zeros(c)
        lo = np.full(c, np.inf)
        hi = np.full(c, -np.inf)
        cv_rows = (
            np.sort(rng.choice(n, min(n, _CV_ROWS), replace=False))
            if self.bandwidth == "cv"
            else None
        )
        keep: list[np.ndarray] = []
        cv_parts: list[np.ndarray] = []
        # float64 row blocks: numpy, or tensors on the compute device (the column statistics
        # come back as (C,) arrays)
        for start, x in row_blocks(logits, rows):
            k = x.shape[0]
            cmean_ = x.mean(0)
            cmean = to_numpy(cmean_)
            cm2 = to_numpy(((x - cmean_) ** 2).sum(0))
            delta = cmean - mean
            total = count + k
            mean = mean + delta * (k / total)
            m2 = m2 + cm2 + delta**2 * (count * k / total)
            count = total
            lo = np.minimum(lo, to_numpy(_column_min(x)))
            hi = np.maximum(hi, to_numpy(_column_max(x)))
            if self.method == "exact":
                keep.append(x.copy() if isinstance(x, np.ndarray) else to_numpy(x))
            if cv_rows is not None:
                sel = cv_rows[(cv_rows >= start) & (cv_rows < start + k)] - start
                cv_parts.append(to_numpy(x[sel if isinstance(x, np.ndarray) else list(sel)]))
        std = np.sqrt(m2 / (n - 1))
        flat = np.flatnonzero(std <= 1e-12 * np.maximum(1.0, np.abs(mean)))
        if flat.size:
            raise ValueError(
                f"LogitKDE: logit column(s) {flat.tolist()[:10]} are constant on the training "
                "set (zero variance), so no density can be fitted. Drop those columns from the "
                "logits, or use mode='class_conditional'."
            )
        sample = np.concatenate(cv_parts) if cv_parts else None
        factors = np.array(
            [
                self._factor(n, 1, None if sample is None else sample[:, j : j + 1], rng)
                for j in range(c)
            ]
        )
        h = factors * std
        if self.method == "exact":
            data = np.concatenate(keep)
            self.kde_ = _kde.Exact1D([data[:, j] for j in range(c)], h)
        else:
            grid = _kde.Grid1D(lo, hi, h, self.grid_resolution)
            # tall blocks: binning a block costs O(values + grid size), and add_columns keeps
            # its temporaries small, so fewer, larger reads are cheaper at fixed memory; on a
            # compute device the blocks are binned there
            tall = rows_per_chunk(c, 1 << 24)
            device = current_device()
            blocks = (
                iter_row_chunks(logits, tall)
                if device is None
                else device_blocks(logits, rows_per_chunk(c), device)
            )
            for _, chunk in blocks:
                grid.add_columns(chunk)
            self.kde_ = grid.finish(np.full(c, n))
        self.bandwidth_factors_ = factors
        self.bandwidths_ = h
        self.skipped_classes_ = ()
        self.n_train_ = n

    def _top_k(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, k) largest logits in decreasing order, and (N,) predicted class; streamed."""
        n, c = logits.shape
        k = self.top_k
        feats = np.empty((n, k))
        pred = np.empty(n, dtype=np.int64)
        for start, x in row_blocks(logits, rows_per_chunk(c)):
            if isinstance(x, np.ndarray):
                part = np.partition(x, c - k, axis=1)[:, c - k :] if k < c else x
                feats[start : start + len(x)] = -np.sort(-part, axis=1)
                pred[start : start + len(x)] = np.argmax(x, axis=1)
            else:  # on the compute device; argmax keeps the first of tied maxima, as numpy
                feats[start : start + len(x)] = to_numpy(x.topk(k, dim=1).values)
                pred[start : start + len(x)] = to_numpy(x.argmax(1))
        return feats, pred

    def _fit_class_conditional(self, train: Outputs, rng: np.random.Generator) -> None:
        labels = train.labels
        c, k = train.n_classes, self.top_k
        if labels.min() < 0 or labels.max() >= c:
            raise ValueError(
                f"LogitKDE(mode='class_conditional'): training labels must be in [0, {c}) "
                f"(got {labels.min()}..{labels.max()}); unknown (-1) labels cannot be grouped."
            )
        feats, _ = self._top_k(train.logits)
        per_class = [feats[labels == j] for j in range(c)]
        covs: list[np.ndarray | None] = []
        bad: list[str] = []
        for j, rows in enumerate(per_class):
            if rows.shape[0] < k + 1:
                covs.append(None)
                bad.append(f"class {j}: {rows.shape[0]} row(s), needs >= {k + 1}")
                continue
            cov = np.atleast_2d(np.cov(rows.T, ddof=1))
            eig = np.linalg.eigvalsh(cov)
            if eig.min() <= 1e-12 * max(1.0, float(np.abs(rows).max())) ** 2:
                covs.append(None)
                bad.append(f"class {j}: top-{k} logits have a singular covariance")
                continue
            covs.append(cov)
        if bad and self.on_small_class == "raise":
            raise ValueError(
                "LogitKDE(mode='class_conditional') cannot fit a density for "
                + "; ".join(bad[:10])
                + (f" (and {len(bad) - 10} more)" if len(bad) > 10 else "")
                + ". Add training data, lower top_k, use mode='marginal', or pass "
                "on_small_class='zero' to give those classes' predictions density 0."
            )
        skipped = tuple(j for j, cov in enumerate(covs) if cov is None)
        if skipped:
            log.warning(
                "LogitKDE: classes %s have no density; their predictions score 0.", list(skipped)
            )
        factors = np.full(c, np.nan)
        for j, rows in enumerate(per_class):
            if covs[j] is not None:
                sample = (
                    rows[rng.permutation(rows.shape[0])[:_CV_ROWS]]
                    if self.bandwidth == "cv"
                    else None
                )
                factors[j] = self._factor(rows.shape[0], k, sample, rng)
        if k == 1:
            ok = np.array([cov is not None for cov in covs])
            std = np.array([np.sqrt(cov[0, 0]) if cov is not None else 1.0 for cov in covs])
            h = np.where(ok, factors * std, 1.0)
            if self.method == "exact":
                self.kde_ = _kde.Exact1D([rows[:, 0] for rows in per_class], h)
            else:
                lo = np.array(
                    [
                        rows[:, 0].min() if okj else 0.0
                        for rows, okj in zip(per_class, ok, strict=True)
                    ]
                )
                hi = np.array(
                    [
                        rows[:, 0].max() if okj else 0.0
                        for rows, okj in zip(per_class, ok, strict=True)
                    ]
                )
                grid = _kde.Grid1D(lo, hi, h, self.grid_resolution)
                use = ok[labels]
                grid.add(feats[use, 0], labels[use])
                self.kde_ = grid.finish(np.maximum([len(r) for r in per_class], 1))
            self.bandwidths_ = np.where(ok, h, np.nan)
            if self.one_sided:
                # each class's densest top logit, on a fine grid over its training range
                self.modes_ = np.zeros(c)
                for j, rows in enumerate(per_class):
                    if ok[j]:
                        xs = np.linspace(rows[:, 0].min(), rows[:, 0].max(), 2048)
                        self.modes_[j] = xs[np.argmax(self.kde_.evaluate(xs, np.full(xs.size, j)))]
        else:
            kdes = []
            for j, rows in enumerate(per_class):
                if covs[j] is None:
                    kdes.append(None)
                    continue
                cov = factors[j] ** 2 * covs[j]
                kdes.append(
                    _kde.ExactND(rows, cov)
                    if self.method == "exact"
                    else _kde.GridND(rows, cov, self.grid_resolution)
                )
            self.kde_ = kdes
        self.bandwidth_factors_ = factors
        self.skipped_classes_ = skipped
        self.n_train_ = train.n_samples

    # ------------------------------------------------------------------ saving
    def get_state(self) -> dict[str, Any]:
        """As :meth:`Scorer.get_state`, the fitted KDE as the arrays it evaluates with."""
        state = super().get_state()
        state["fitted"]["kde_"] = _kde.kde_state(self.kde_)
        return state

    def set_state(self, fitted: Mapping[str, Any]) -> None:
        super().set_state({**fitted, "kde_": _kde.kde_from_state(fitted["kde_"])})

    # ------------------------------------------------------------------ scoring
    def _score(self, outputs: Outputs) -> np.ndarray:
        if self.mode == "marginal" and isinstance(self.kde_, _kde.Grid1D):
            c = outputs.n_classes
            out = np.empty(outputs.n_samples)
            device = current_device()
            arrays = None if device is None else self.kde_.device_arrays(device)
            for start, x in row_blocks(outputs.logits, rows_per_chunk(c)):
                out[start : start + len(x)] = to_numpy(self.kde_.column_means(x, arrays))
            return out
        if self.mode == "marginal":
            c = outputs.n_classes
            out = np.empty(outputs.n_samples)
            groups = np.arange(c)
            for start, chunk in iter_row_chunks(outputs.logits, rows_per_chunk(c)):
                g = np.broadcast_to(groups, chunk.shape).ravel()
                dens = self.kde_.evaluate(chunk.astype(np.float64, copy=False).ravel(), g)
                out[start : start + len(chunk)] = dens.reshape(chunk.shape).mean(axis=1)
            return out
        feats, pred = self._top_k(outputs.logits)
        out = np.zeros(outputs.n_samples)
        keep = ~np.isin(pred, self.skipped_classes_)
        if self.top_k == 1:
            top = feats[keep, 0]
            if self.one_sided:  # above the class's densest value: not less in-distribution
                top = np.minimum(top, self.modes_[pred[keep]])
            out[keep] = self.kde_.evaluate(top, pred[keep])
            return out
        for j in np.unique(pred[keep]):
            sel = pred == j
            out[sel] = self.kde_[j].evaluate(feats[sel])
        return out

    def _torch_score(self, logits: Any, features: Any, head: Any) -> Any:
        """The density in torch from the fitted state: the same KDEs, evaluated with
        tensors (linear interpolation on the grids, direct sums for ``method="exact"``),
        differentiable in the logits; the predicted class and the top-k order are those of
        the forward pass."""
        import torch

        z = logits.double()
        n, c = z.shape
        if self.mode == "marginal":
            groups = np.broadcast_to(np.arange(c), (n, c)).ravel()
            return self.kde_.evaluate(z.reshape(-1), groups).reshape(n, c).mean(1)
        feats = z.topk(self.top_k, dim=1).values
        pred = z.argmax(1).cpu().numpy()
        keep = torch.as_tensor(~np.isin(pred, self.skipped_classes_), device=z.device)
        if self.top_k == 1:
            top = feats[:, 0]
            if self.one_sided:
                (modes,) = tensors_like(z, self.modes_)
                top = torch.minimum(top, modes[torch.as_tensor(pred, device=z.device)])
            return torch.where(keep, self.kde_.evaluate(top, pred), 0.0)
        out = z.new_zeros(n)
        for j in np.unique(pred):
            if j in self.skipped_classes_:
                continue
            sel = torch.as_tensor(pred == j, device=z.device)
            out = out.masked_scatter(sel, self.kde_[j].evaluate(feats[sel]))
        return out

    def density(self, values: np.ndarray, index: int) -> np.ndarray:
        """Fitted 1-D density of logit column ``index`` (marginal) or of class ``index``
        (class-conditional, ``top_k=1``) at ``values``; used for plots."""
        if "n_classes_" not in vars(self):
            raise ValueError("Fit the LogitKDE before asking for its densities.")
        if self.mode == "class_conditional" and self.top_k != 1:
            raise ValueError("density() is 1-D: it needs mode='marginal' or top_k=1.")
        if not 0 <= index < self.n_classes_:
            raise ValueError(f"index must be in [0, {self.n_classes_}), got {index}.")
        if index in self.skipped_classes_:
            return np.zeros(np.shape(values))
        values = np.asarray(values, dtype=np.float64)
        return self.kde_.evaluate(values.ravel(), np.full(values.size, index)).reshape(values.shape)
