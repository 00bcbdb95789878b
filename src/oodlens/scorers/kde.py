r"""Gaussian kernel density estimation: exact sums and binned (grid) evaluation.

Pure numerical code, no registry. Conventions follow ``scipy.stats.gaussian_kde``: the
kernel covariance is :math:`H = f^2 \hat\Sigma` with :math:`\hat\Sigma` the sample covariance
(``ddof=1``) and :math:`f` the bandwidth factor (Scott: :math:`n^{-1/(d+4)}`; Silverman:
:math:`(n(d+2)/4)^{-1/(d+4)}`).

The grid method bins the data linearly onto a regular grid that extends ``CUT`` bandwidths
beyond the data, convolves the bin weights with the Gaussian kernel (truncated at ``CUT``
bandwidths) by FFT, and evaluates by (multi)linear interpolation. Points beyond the grid are
more than ``CUT`` bandwidths from every training point; their density (below
:math:`e^{-CUT^2/2} \approx 1.3 \cdot 10^{-14}` of a single kernel's peak) is reported as 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.linalg import cholesky, solve_triangular

# scipy.signal and scipy.ndimage take ~0.4 s to import: they are imported where the grid
# method needs them, so listing scorers stays fast

__all__ = [
    "CUT",
    "bandwidth_factor",
    "exact_kde",
    "Exact1D",
    "Grid1D",
    "ExactND",
    "GridND",
    "kde_state",
    "kde_from_state",
]

CUT = 8.0
_MAX_1D_POINTS = 1 << 20
_MAX_ND_CELLS = 1 << 22
_BLOCK = 1 << 22


def bandwidth_factor(rule: str, n: int, d: int) -> float:
    """scipy's bandwidth factor for ``rule`` in {"scott", "silverman"}."""
    if rule == "scott":
        return float(n ** (-1.0 / (d + 4)))
    if rule == "silverman":
        return float((n * (d + 2) / 4.0) ** (-1.0 / (d + 4)))
    raise ValueError(f"Unknown bandwidth rule {rule!r}; valid: 'scott', 'silverman'.")


def exact_kde(train: np.ndarray, points: np.ndarray, cov: np.ndarray) -> np.ndarray:
    r"""Exact Gaussian KDE :math:`\frac1n \sum_i \mathcal N(x; t_i, H)`.

    Args:
        train: (n, d) training points.
        points: (m, d) evaluation points.
        cov: (d, d) kernel covariance H (positive definite).

    Returns:
        (m,) densities, summed in blocks so memory stays bounded.
    """
    train = np.asarray(train, dtype=np.float64)
    n, d = train.shape
    chol = cholesky(np.atleast_2d(cov), lower=True)
    zt = solve_triangular(chol, train.T, lower=True).T
    norm = n * (2 * math.pi) ** (d / 2) * float(np.prod(np.diag(chol)))
    block = max(1, _BLOCK // max(1, n * d))
    if _is_tensor(points):  # differentiable, where the points live
        import torch

        chol_t, zt_t = (torch.as_tensor(a, device=points.device) for a in (chol, zt))
        zp = torch.linalg.solve_triangular(chol_t, points.double().T, upper=False).T
        parts = [
            torch.exp(-0.5 * ((zp[s : s + block, None, :] - zt_t[None]) ** 2).sum(2)).sum(1)
            for s in range(0, zp.shape[0], block)
        ]
        return (torch.cat(parts) if parts else zp.new_zeros(0)) / norm
    points = np.asarray(points, dtype=np.float64)
    zp = solve_triangular(chol, points.T, lower=True).T
    out = np.empty(points.shape[0])
    for s in range(0, points.shape[0], block):
        diff = zp[s : s + block, None, :] - zt[None, :, :]
        out[s : s + block] = np.exp(-0.5 * np.einsum("bnd,bnd->bn", diff, diff)).sum(axis=1)
    return out / norm


class Exact1D:
    """G independent 1-D KDEs, evaluated by direct sums (the reference).

    Args:
        data: list of G 1-D arrays, the training values of each group.
        bandwidths: (G,) kernel standard deviations.
    """

    FIELDS = ("data", "bandwidths")

    def __init__(self, data: list[np.ndarray], bandwidths: np.ndarray) -> None:
        self.data = [np.asarray(x, dtype=np.float64) for x in data]
        self.bandwidths = np.asarray(bandwidths, dtype=np.float64)

    def evaluate(self, values: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Density of each value under its group's KDE: (m,) for (m,) values and groups (a
        tensor of values gives a differentiable tensor)."""
        groups = np.asarray(groups)
        out = values.new_zeros(values.shape[0]).double() if _is_tensor(values) else None
        out = np.zeros(values.shape[0]) if out is None else out
        for g in np.unique(groups):
            sel = groups == g
            h = self.bandwidths[g]
            out[sel] = exact_kde(self.data[g][:, None], values[sel, None], np.array([[h * h]]))
        return out


class Grid1D:
    """G independent 1-D binned KDEs stored on one flat array, filled by streaming.

    Build with the range and bandwidth of each group, feed the training values with
    :meth:`add` (any number of chunks), then :meth:`finish` with the group sizes.

    Args:
        lo, hi: (G,) smallest and largest training value of each group.
        bandwidths: (G,) kernel standard deviations (> 0).
        resolution: grid points per bandwidth (32 gives ~1e-4 of the peak density error).
    """

    FIELDS = ("bandwidths", "start", "points", "delta", "offsets", "grid")

    def __init__(
        self, lo: np.ndarray, hi: np.ndarray, bandwidths: np.ndarray, resolution: int = 32
    ) -> None:
        h = np.asarray(bandwidths, dtype=np.float64)
        self.bandwidths = h
        self.start = np.asarray(lo, dtype=np.float64) - CUT * h
        span = np.asarray(hi, dtype=np.float64) + CUT * h - self.start
        points = np.ceil(span / (h / resolution)).astype(np.int64) + 1
        self.points = np.clip(points, 2, _MAX_1D_POINTS)
        self.delta = span / (self.points - 1)
        self.offsets = np.concatenate([[0], np.cumsum(self.points)])
        self.grid = np.zeros(int(self.offsets[-1]))
        self._device_weights: Any = None  # bin weights added on a compute device

    def _locate(self, values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, ...]:
        p = (values - self.start[groups]) / self.delta[groups]
        last = self.points[groups] - 1
        inside = (p >= 0) & (p <= last)
        i0 = np.clip(np.floor(p), 0, last - 1).astype(np.int64)
        frac = p - i0
        return self.offsets[groups] + i0, frac, inside

    def _bin(self, flat: np.ndarray, frac: np.ndarray, lo: int = 0, hi: int | None = None) -> None:
        # linear binning into grid[lo:hi]: weight 1-f at node i0, f at node i0+1 (i0 + 1 stays
        # inside its group's segment); ``flat`` is relative to ``lo``
        seg = self.grid[lo:hi]
        seg += np.bincount(flat, 1.0 - frac, minlength=seg.size)
        seg[1:] += np.bincount(flat, frac, minlength=seg.size)[:-1]

    def add(self, values: np.ndarray, groups: np.ndarray) -> None:
        """Bin training values (1-D) of the given groups (same shape, int)."""
        flat, frac, _ = self._locate(np.asarray(values, dtype=np.float64).ravel(), groups.ravel())
        self._bin(flat, frac)

    def add_columns(self, block: Any, max_values: int = 1 << 21) -> None:
        """Bin a (rows, G) block whose column j holds values of group j (marginal mode).

        Works on a few columns at a time, transposed, so each group's bins are contiguous and
        the temporaries stay small whatever the block size. The values must lie within the
        ``lo``/``hi`` the grid was built with. A float64 torch tensor is binned where it
        lives (``index_add_``; the weights join the grid in :meth:`finish`).
        """
        if not isinstance(block, np.ndarray) and hasattr(block, "index_add_"):
            self._add_columns_torch(block)
            return
        block = np.asarray(block)
        rows, groups = block.shape
        step = max(1, max_values // max(1, rows))
        for j0 in range(0, groups, step):
            j1 = min(groups, j0 + step)
            p = np.array(block[:, j0:j1].T, dtype=np.float64, order="C")  # a copy, never a view
            p -= self.start[j0:j1, None]
            p /= self.delta[j0:j1, None]
            i0 = np.minimum(p.astype(np.int64), (self.points[j0:j1] - 2)[:, None])
            p -= i0
            i0 += (self.offsets[j0:j1] - self.offsets[j0])[:, None]
            self._bin(i0.ravel(), p.ravel(), int(self.offsets[j0]), int(self.offsets[j1]))

    def _add_columns_torch(self, block: Any) -> None:
        import torch

        dev = block.device
        if self._device_weights is None:
            self._device_weights = torch.zeros(self.grid.size, dtype=torch.float64, device=dev)
        start, delta = (torch.as_tensor(a, device=dev) for a in (self.start, self.delta))
        p = (block - start) / delta
        i0 = torch.minimum(p.long(), torch.as_tensor(self.points - 2, device=dev))
        frac = (p - i0).ravel()
        flat = (i0 + torch.as_tensor(self.offsets[:-1], device=dev)).ravel()
        self._device_weights.index_add_(0, flat, 1.0 - frac)
        self._device_weights.index_add_(0, flat + 1, frac)

    def finish(self, counts: np.ndarray) -> Grid1D:
        """Turn bin weights into densities; ``counts`` is (G,) training values per group."""
        from scipy.signal import fftconvolve

        if self._device_weights is not None:
            self.grid += self._device_weights.cpu().numpy()
            self._device_weights = None
        for g in range(self.points.size):
            seg = slice(self.offsets[g], self.offsets[g + 1])
            lags = min(
                int(self.points[g]) - 1, int(math.ceil(CUT * self.bandwidths[g] / self.delta[g]))
            )
            x = np.arange(-lags, lags + 1) * (self.delta[g] / self.bandwidths[g])
            kernel = np.exp(-0.5 * x * x) / (
                math.sqrt(2 * math.pi) * self.bandwidths[g] * counts[g]
            )
            self.grid[seg] = np.maximum(fftconvolve(self.grid[seg], kernel, mode="same"), 0.0)
        return self

    def evaluate(self, values: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Density of each value under its group's KDE (0 beyond the grid); a tensor of
        values is evaluated where it lives, differentiably (linear interpolation)."""
        if _is_tensor(values):
            import torch

            a = self.device_arrays(values.device)
            g = torch.as_tensor(np.asarray(groups), device=values.device)
            per_value = {k: a[k][g] for k in ("start", "delta", "last", "offsets")}
            return _interpolate(a["grid"], values.double(), **per_value)
        flat, frac, inside = self._locate(np.asarray(values, dtype=np.float64), groups)
        out = self.grid[flat] * (1.0 - frac) + self.grid[flat + 1] * frac
        return np.where(inside, out, 0.0)

    def device_arrays(self, device: Any) -> dict[str, Any]:
        """The fitted grid as tensors on ``device``, for :meth:`column_means` (made once per
        scoring pass, not per block)."""
        import torch

        arrays = {"grid": self.grid, "start": self.start, "delta": self.delta}
        out = {k: torch.as_tensor(v, dtype=torch.float64, device=device) for k, v in arrays.items()}
        out["last"] = torch.as_tensor(self.points - 1, device=device)
        out["offsets"] = torch.as_tensor(self.offsets[:-1], device=device)
        return out

    def column_means(self, block: Any, arrays: dict[str, Any] | None = None) -> Any:
        """Mean over the columns of a (rows, G) block (column j under group j's KDE) of the
        densities: numpy, or, for a float64 tensor, evaluated where it lives with the
        tensors of :meth:`device_arrays`."""
        if isinstance(block, np.ndarray):
            groups = np.broadcast_to(np.arange(block.shape[1]), block.shape).ravel()
            return self.evaluate(block.ravel(), groups).reshape(block.shape).mean(axis=1)
        a = arrays if arrays is not None else self.device_arrays(block.device)
        per_column = {k: a[k] for k in ("start", "delta", "last", "offsets")}
        return _interpolate(a["grid"], block, **per_column).mean(1)


class ExactND:
    """One d-dimensional KDE with kernel covariance ``cov``, by direct sums."""

    FIELDS = ("data", "cov")

    def __init__(self, data: np.ndarray, cov: np.ndarray) -> None:
        self.data = np.asarray(data, dtype=np.float64)
        self.cov = np.asarray(cov, dtype=np.float64)

    def evaluate(self, points: np.ndarray) -> np.ndarray:
        """(m,) densities at (m, d) points."""
        return exact_kde(self.data, points, self.cov)


class GridND:
    """One d-dimensional binned KDE (d >= 1) in whitened coordinates.

    The data are whitened by the kernel covariance's Cholesky factor, so the kernel is a
    standard normal there; the grid has ``resolution`` points per bandwidth unless that would
    exceed 4M cells, in which case it is coarsened evenly (for d = 3 and wide data the error
    then grows to about 1% of the peak density).
    """

    FIELDS = ("chol", "lo", "delta", "shape", "grid")

    def __init__(self, data: np.ndarray, cov: np.ndarray, resolution: int = 32) -> None:
        data = np.asarray(data, dtype=np.float64)
        n, d = data.shape
        self.chol = cholesky(np.atleast_2d(cov), lower=True)
        z = solve_triangular(self.chol, data.T, lower=True).T
        self.lo = z.min(axis=0) - CUT
        span = z.max(axis=0) + CUT - self.lo
        delta = 1.0 / resolution
        shape = np.ceil(span / delta).astype(np.int64) + 1
        if np.prod(shape.astype(float)) > _MAX_ND_CELLS:
            delta *= (np.prod(shape.astype(float)) / _MAX_ND_CELLS) ** (1.0 / d)
            shape = np.ceil(span / delta).astype(np.int64) + 1
        self.delta = delta
        self.shape = tuple(int(s) for s in shape)
        p = (z - self.lo) / delta
        i0 = np.minimum(np.floor(p).astype(np.int64), shape - 2)
        frac = p - i0
        grid = np.zeros(int(np.prod(shape)))
        for corner in np.ndindex(*(2,) * d):
            c = np.asarray(corner)
            w = np.prod(np.where(c == 1, frac, 1.0 - frac), axis=1)
            grid += np.bincount(
                np.ravel_multi_index((i0 + c).T, self.shape), w, minlength=grid.size
            )
        grid = grid.reshape(self.shape)
        from scipy.signal import fftconvolve

        for axis in range(d):
            lags = min(self.shape[axis] - 1, int(math.ceil(CUT / delta)))
            x = np.arange(-lags, lags + 1) * delta
            k = np.exp(-0.5 * x * x).reshape([-1 if a == axis else 1 for a in range(d)])
            grid = fftconvolve(grid, k, mode="same", axes=axis)
        norm = n * (2 * math.pi) ** (d / 2) * float(np.prod(np.diag(self.chol)))
        self.grid = np.maximum(grid / norm, 0.0)

    def evaluate(self, points: np.ndarray) -> np.ndarray:
        """(m,) densities at (m, d) points (0 beyond the grid); a tensor of points is
        evaluated where it lives, differentiably (multilinear interpolation, as
        ``map_coordinates(order=1)``)."""
        if _is_tensor(points):
            return self._evaluate_tensor(points)
        z = solve_triangular(self.chol, np.asarray(points, dtype=np.float64).T, lower=True)
        p = (z - self.lo[:, None]) / self.delta
        inside = np.all((p >= 0) & (p <= np.asarray(self.shape)[:, None] - 1), axis=0)
        from scipy.ndimage import map_coordinates

        out = map_coordinates(self.grid, p, order=1, mode="nearest")
        return np.where(inside, out, 0.0)

    def _evaluate_tensor(self, points: Any) -> Any:
        import torch

        dev = points.device
        chol, lo, grid = (torch.as_tensor(a, device=dev) for a in (self.chol, self.lo, self.grid))
        z = torch.linalg.solve_triangular(chol, points.double().T, upper=False)
        p = (z - lo[:, None]) / self.delta  # (d, m) grid coordinates
        top = torch.as_tensor(self.shape, device=dev)[:, None] - 1
        inside = ((p >= 0) & (p <= top)).all(0)
        i0 = torch.minimum(p.detach().floor().clamp(min=0), (top - 1).clamp(min=0)).long()
        frac = p - i0
        out = points.new_zeros(points.shape[0]).double()
        for corner in np.ndindex(*(2,) * len(self.shape)):
            c = torch.as_tensor(corner, device=dev)[:, None]
            weight = torch.where(c == 1, frac, 1.0 - frac).prod(0)
            index = tuple(torch.minimum(i0 + c, top))
            out = out + grid[index] * weight
        return torch.where(inside, out, 0.0)


def _is_tensor(x: Any) -> bool:
    return not isinstance(x, np.ndarray) and hasattr(x, "detach")


def _interpolate(grid: Any, values: Any, start: Any, delta: Any, last: Any, offsets: Any) -> Any:
    """Linear interpolation of the flat ``grid`` of 1-D KDEs at ``values`` (tensors; each
    value's group given by ``start``, ``delta``, ``last`` and ``offsets``, broadcast to
    it); 0 beyond a group's grid. Differentiable in ``values`` (through the fractions)."""
    import torch

    p = (values - start) / delta
    inside = (p >= 0) & (p <= last)
    i0 = torch.minimum(p.detach().floor().clamp(min=0), last - 1).long()
    frac = p - i0
    flat = offsets + i0
    return torch.where(inside, grid[flat] * (1.0 - frac) + grid[flat + 1] * frac, 0.0)


_KINDS: dict[str, type] = {
    "exact1d": Exact1D,
    "grid1d": Grid1D,
    "exactnd": ExactND,
    "gridnd": GridND,
}


def kde_state(kde: Any) -> dict[str, Any]:
    """A fitted KDE (one of this module's, or a list of per-class ones with ``None`` for a
    class without density) as plain data for :mod:`oodlens.statefile`: its kind and the
    arrays and numbers it evaluates with."""
    if isinstance(kde, list):
        return {
            "kind": "per_class",
            "classes": {str(j): None if k is None else kde_state(k) for j, k in enumerate(kde)},
        }
    kind = next(name for name, cls in _KINDS.items() if type(kde) is cls)
    out: dict[str, Any] = {"kind": kind}
    for name in type(kde).FIELDS:
        value = getattr(kde, name)
        out[name] = {str(i): v for i, v in enumerate(value)} if isinstance(value, list) else value
    return out


def kde_from_state(state: Mapping[str, Any]) -> Any:
    """The KDE :func:`kde_state` describes, ready to evaluate (nothing is refitted).

    Raises:
        ValueError: an unknown kind.
    """
    kind = state.get("kind")
    if kind == "per_class":
        classes = state["classes"]
        return [
            None if classes[str(j)] is None else kde_from_state(classes[str(j)])
            for j in range(len(classes))
        ]
    cls = _KINDS.get(kind)
    if cls is None:
        raise ValueError(f"Unknown KDE kind {kind!r} in a saved state; valid: {sorted(_KINDS)}.")
    kde = cls.__new__(cls)
    for name in cls.FIELDS:
        value = state[name]
        if cls is Exact1D and name == "data":
            value = [value[str(i)] for i in range(len(value))]
        setattr(kde, name, value)
    if cls is Grid1D:
        kde._device_weights = None
    return kde
