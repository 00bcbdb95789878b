"""Chunked reading of large (possibly memory-mapped) 2-D arrays.

Slicing a ``np.memmap`` maps its pages into the process, so reading a 5 GB memmap "in
chunks" by slicing still ends with 5 GB resident. For a memmap that owns its mapping, this
module reads row blocks with ordinary file reads instead, so memory stays at one chunk.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np

__all__ = ["iter_row_chunks", "rows_per_chunk"]


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
