"""Array helpers shared by the core and plugins: chunked reading of large (possibly
memory-mapped) arrays, a streamed percentile, and training-label checks.

Slicing a ``np.memmap`` maps its pages into the process, so reading a 5 GB memmap "in
chunks" by slicing still ends with 5 GB resident. For a memmap that owns its mapping, this
module reads row blocks with ordinary file reads instead, so memory stays at one chunk.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator

import numpy as np

__all__ = [
    "iter_row_chunks",
    "rows_per_chunk",
    "streamed_percentile",
    "check_fit_labels",
    "row_fingerprints",
]


def rows_per_chunk(n_cols: int, target_values: int = 1 << 22) -> int:
    """Rows per chunk so one chunk holds about ``target_values`` numbers."""
    return max(1, target_values // max(1, n_cols))


def iter_row_chunks(array: np.ndarray, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, block)`` with ``block = array[start:start + rows]`` as a fresh array."""
    n = array.shape[0]
    if (
        isinstance(array, np.memmap)
        and isinstance(array.base, mmap.mmap)
        and array.filename is not None
        and array.flags.c_contiguous
    ):
        row_items = int(np.prod(array.shape[1:], dtype=np.int64))
        row_bytes = row_items * array.dtype.itemsize
        with open(array.filename, "rb") as fh:
            for start in range(0, n, rows):
                count = min(rows, n - start)
                fh.seek(array.offset + start * row_bytes)
                block = np.fromfile(fh, dtype=array.dtype, count=count * row_items)
                yield start, block.reshape((count, *array.shape[1:]))
        return
    for start in range(0, n, rows):
        yield start, np.asarray(array[start : start + rows])


def streamed_percentile(array: np.ndarray, q: float, max_values: int = 1 << 22) -> float:
    """``np.percentile(array, q)`` (linear interpolation) without loading ``array`` whole.

    Reads row blocks (see :func:`iter_row_chunks`): one pass for the range, then passes that
    narrow a histogram bin around the wanted order statistics until at most ``max_values``
    values remain, which are sorted exactly. The result equals ``np.percentile`` exactly.

    Example:
        >>> x = np.arange(12.0).reshape(4, 3)
        >>> float(streamed_percentile(x, 90)) == float(np.percentile(x, 90))
        True
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q!r}.")
    n_cols = int(np.prod(array.shape[1:], dtype=np.int64)) if array.ndim > 1 else 1
    rows = rows_per_chunk(n_cols)
    total = int(array.size)
    if total == 0:
        raise ValueError("Cannot take a percentile of an empty array.")
    pos = (total - 1) * q / 100.0
    ranks = sorted({math.floor(pos), math.ceil(pos)})
    lo, hi = math.inf, -math.inf
    for _, block in iter_row_chunks(array, rows):
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    below = 0  # values strictly below the window [lo, hi]
    while True:
        if lo == hi:
            values = {r: lo for r in ranks}
            break
        edges = np.unique(np.linspace(lo, hi, 1025))  # fewer edges near float resolution
        counts = np.zeros(len(edges) - 1, dtype=np.int64)
        at_lo = 0  # values equal to lo: many ties there (post-ReLU zeros) end the search
        for _, block in iter_row_chunks(array, rows):
            b = np.asarray(block, dtype=np.float64).ravel()
            counts += np.histogram(b[(b >= lo) & (b <= hi)], bins=edges)[0]
            at_lo += int(np.count_nonzero(b == lo))
        if below + at_lo > ranks[-1]:
            values = {r: lo for r in ranks}
            break
        cum = below + np.cumsum(counts)
        first = int(np.searchsorted(cum, ranks[0], side="right"))
        last = int(np.searchsorted(cum, ranks[-1], side="right"))
        new_lo, new_hi = float(edges[first]), float(edges[last + 1])
        if int(counts.sum()) <= max_values or (new_lo, new_hi) == (lo, hi):
            window = np.concatenate(
                [
                    b[(b >= lo) & (b <= hi)]
                    for b in (
                        np.asarray(block, dtype=np.float64).ravel()
                        for _, block in iter_row_chunks(array, rows)
                    )
                ]
            )
            window.sort()
            values = {r: float(window[r - below]) for r in ranks}
            break
        below += int(counts[:first].sum())
        lo, hi = new_lo, new_hi
    a, b = values[ranks[0]], values[ranks[-1]]
    return float(a + (b - a) * (pos - ranks[0]))


def check_fit_labels(
    owner: str, labels: np.ndarray | None, n_classes: int, every_class: bool = True
) -> np.ndarray:
    """Training labels as (N,) int64 in ``[0, n_classes)`` with every class present.

    Raises ``ValueError`` naming ``owner`` for missing labels, labels outside the model's
    classes (including ``-1``, unknown) and, with ``every_class`` (for estimates made per
    class), classes without any training row; returns the per-class row counts.

    Example:
        >>> check_fit_labels("knn", np.array([0, 1, 1]), 2)
        array([1, 2])
    """
    if labels is None:
        raise ValueError(f"{owner} needs training labels; pass labels=... to oodlens.Outputs.")
    y = np.asarray(labels)
    if y.size == 0:
        raise ValueError(f"{owner}: the training labels are empty.")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(
            f"{owner}: training labels must be in [0, {n_classes}) (the model's classes), got "
            f"{y.min()}..{y.max()}; unknown (-1) or foreign labels cannot be grouped by class."
        )
    counts = np.bincount(y, minlength=n_classes)
    empty = np.flatnonzero(counts == 0)
    if every_class and empty.size:
        raise ValueError(
            f"{owner}: class(es) {empty.tolist()[:10]} have no training rows, so nothing can be "
            "estimated for them. Fit on a training set that covers every class."
        )
    return counts


def row_fingerprints(array: np.ndarray) -> np.ndarray:
    """(N,) uint64 fingerprint of each row's exact bits (as float64), read in row blocks.

    Equal rows give equal fingerprints; different rows collide with probability ~2**-64.
    Scorers record the fingerprints of the rows they were fitted on, so that conformal
    calibration can refuse rows it can tell were fitting rows.

    Example:
        >>> f = row_fingerprints(np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0]]))
        >>> bool(f[0] == f[1]), bool(f[0] == f[2])
        (True, False)
    """
    n = array.shape[0]
    n_cols = int(np.prod(array.shape[1:], dtype=np.int64)) if array.ndim > 1 else 1
    mult = np.random.default_rng(20231127).integers(1, 2**63, size=n_cols, dtype=np.uint64)
    mult |= np.uint64(1)  # odd multipliers
    out = np.empty(n, dtype=np.uint64)
    for start, block in iter_row_chunks(array, rows_per_chunk(n_cols)):
        bits = np.ascontiguousarray(block, dtype=np.float64).reshape(len(block), -1)
        h = (bits.view(np.uint64) * mult).sum(axis=1, dtype=np.uint64)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x9E3779B97F4A7C15)
        out[start : start + len(block)] = h ^ (h >> np.uint64(29))
    return out
