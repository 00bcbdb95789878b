"""Where scorers compute: numpy on the CPU (the default), or torch on a device.

The harness runs fitting and scoring inside :func:`compute_device` with its own device when
that is not the CPU (``oodlens bench --device cuda``); scorers with a torch path ask
:func:`current_device` and move their row blocks there (:func:`device_blocks`). Outside the
context, or with ``None``, every scorer runs its numpy path, so nothing changes on a CPU.
The torch paths also run on ``"cpu"``, which is how the tests compare them with the numpy
paths.

Example:
    >>> with compute_device("cpu"):
    ...     current_device()
    'cpu'
    >>> current_device() is None
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np

from .arrays import iter_row_chunks, rows_per_chunk

__all__ = [
    "compute_device",
    "current_device",
    "device_blocks",
    "device_memory_budget",
    "fitted_arrays",
    "tensors_like",
    "row_blocks",
    "row_logsumexp",
    "to_numpy",
]

_DEVICE: ContextVar[str | None] = ContextVar("oodlens_compute_device", default=None)
#: arrays copied to the device once per context: ``id(array) -> (array, tensor)``
_RESIDENT: ContextVar[dict[int, tuple[np.ndarray, Any]] | None] = ContextVar(
    "oodlens_resident_arrays", default=None
)


@contextmanager
def compute_device(device: Any) -> Iterator[None]:
    """Run the scorers' torch paths on ``device`` (a torch device or its name) inside the
    block; ``None`` keeps the numpy paths. Arrays read by :func:`device_blocks` are copied
    to the device once per block when they fit its memory budget (half the free memory of a
    CUDA device), so that the scorers run one after another on one copy of the outputs;
    the copies are freed when the block ends."""
    token = _DEVICE.set(None if device is None else str(device))
    resident = _RESIDENT.set({})
    try:
        yield
    finally:
        _RESIDENT.reset(resident)
        _DEVICE.reset(token)


def current_device() -> str | None:
    """The device set by :func:`compute_device`, or ``None`` (numpy on the CPU)."""
    return _DEVICE.get()


def device_blocks(
    array: np.ndarray, rows: int, device: str, dtype: Any = None
) -> Iterator[tuple[int, Any]]:
    """``(start, tensor)`` row blocks of a (possibly memory-mapped) array on ``device``, as
    ``dtype`` (default ``torch.float64``); read with :func:`oodlens.arrays.iter_row_chunks`,
    or sliced from the copy kept on the device. Blocks may be views of that copy: never
    modify them in place."""
    import torch

    dtype = torch.float64 if dtype is None else dtype
    whole = _resident(array, device)
    if whole is not None:
        for start in range(0, array.shape[0], rows):
            yield start, whole[start : start + rows].to(dtype)
        return
    for start, block in iter_row_chunks(array, rows):
        yield start, torch.from_numpy(np.ascontiguousarray(block)).to(device, dtype)


def _resident(array: np.ndarray, device: str) -> Any:
    """The copy of ``array`` on ``device`` kept for this :func:`compute_device` block (made
    on first use when it fits half the device's free memory), or ``None``."""
    import torch

    cache = _RESIDENT.get()
    if cache is None or array.dtype.kind != "f":
        return None
    hit = cache.get(id(array))
    if hit is not None and hit[0] is array:
        return hit[1]
    if array.nbytes > device_memory_budget(device, share=0.5):
        return None
    whole = torch.empty(array.shape, dtype=getattr(torch, array.dtype.name), device=device)
    for start, block in iter_row_chunks(array, rows_per_chunk(int(np.prod(array.shape[1:])))):
        whole[start : start + len(block)] = torch.from_numpy(np.ascontiguousarray(block))
    cache[id(array)] = (array, whole)  # the array is kept alive, so its id stays its own
    return whole


def device_memory_budget(device: str, share: float = 0.25) -> int:
    """Bytes a scorer may keep resident on ``device``: ``share`` of the free memory of a
    CUDA device; 0 elsewhere (CPU: stream from the arrays instead)."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(dev)
    return int(free * share)


def row_blocks(array: np.ndarray, rows: int) -> Iterator[tuple[int, Any]]:
    """``(start, float64 block)`` of ``rows`` rows: numpy arrays read with
    :func:`oodlens.arrays.iter_row_chunks`, or, inside :func:`compute_device`, tensors on
    that device (:func:`device_blocks`)."""
    device = current_device()
    if device is not None:
        yield from device_blocks(array, rows, device)
        return
    for start, block in iter_row_chunks(array, rows):
        yield start, np.asarray(block, dtype=np.float64)


def fitted_arrays(*arrays: np.ndarray) -> tuple[Any, ...]:
    """Fitted numpy arrays where a scorer's row blocks live: unchanged without a compute
    device, else as float64 tensors on it.

    Example:
        >>> w, b = fitted_arrays(np.ones((2, 3)), np.zeros(2))
        >>> type(w).__name__
        'ndarray'
    """
    device = current_device()
    if device is None:
        return arrays
    import torch

    return tuple(torch.as_tensor(np.asarray(a, dtype=np.float64), device=device) for a in arrays)


def tensors_like(like: Any, *arrays: np.ndarray) -> tuple[Any, ...]:
    """Fitted numpy arrays as float64 tensors on the device of the tensor ``like`` (for a
    scorer's differentiable score)."""
    import torch

    return tuple(torch.as_tensor(np.array(a, dtype=np.float64), device=like.device) for a in arrays)


def row_logsumexp(x: Any) -> Any:
    """``log(sum(exp(x), axis=1))`` of a row block, numpy (scipy's) or a tensor (torch's,
    where it lives).

    Example:
        >>> float(row_logsumexp(np.zeros((1, 4)))[0]) == float(np.log(4))
        True
    """
    if isinstance(x, np.ndarray):
        from scipy.special import logsumexp

        return logsumexp(x, axis=1)
    return x.logsumexp(1)


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array as it is, or a tensor copied to the host as numpy (explicitly: CUDA
    tensors refuse ``np.asarray``)."""
    return x if isinstance(x, np.ndarray) else x.detach().cpu().numpy()
