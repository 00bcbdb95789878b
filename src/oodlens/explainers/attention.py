"""Attention-area measures of saliency maps (no torch needed: tensors are read through
``.detach()``), for the origin study's "errors look at more of the image" question."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["attention_area", "attention_area_mass", "minmax_normalize"]


def minmax_normalize(cams: Any) -> Any:
    """Per-map min-max scaling to [0, 1] of (N, H, W) maps, a tensor (returned as one, where
    it lives) or an array; a constant map (span below 1e-6 of its magnitude, e.g. all zeros
    or a 1x1 layer upsampled) becomes all zeros."""
    tensor = hasattr(cams, "detach")
    flat = cams.flatten(1) if tensor else np.asarray(cams).reshape(len(cams), -1)
    lo = flat.min(1, keepdim=True).values if tensor else flat.min(axis=1, keepdims=True)
    hi = flat.max(1, keepdim=True).values if tensor else flat.max(axis=1, keepdims=True)
    span = hi - lo
    magnitude = hi.abs().maximum(lo.abs()) if tensor else np.maximum(np.abs(hi), np.abs(lo))
    ok = span > 1e-6 * magnitude
    safe = span.where(ok, span.new_ones(())) if tensor else np.where(ok, span, 1.0)
    scaled = (flat - lo) / safe
    out = scaled.where(ok, scaled.new_zeros(())) if tensor else np.where(ok, scaled, 0.0)
    return out.view_as(cams) if tensor else out.reshape(np.shape(cams))


def _as_maps(cams: Any) -> np.ndarray:
    arr = cams.detach().cpu().numpy() if hasattr(cams, "detach") else np.asarray(cams)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"cams must be (N, H, W) or (H, W), got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise ValueError("cams contain NaN or inf.")
    return arr.astype(np.float64, copy=False)


def attention_area(cams: Any, threshold: float = 0.5) -> np.ndarray:
    """Share of pixels with a (min-max normalised) CAM value at or above ``threshold``.

    Args:
        cams: (N, H, W) or (H, W) maps in [0, 1], tensor or array.
        threshold: in [0, 1] (default 0.5).

    Returns:
        (N,) fractions in [0, 1]. An all-zero map has area 0 for any threshold > 0.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}.")
    maps = _as_maps(cams)
    return (maps >= threshold).reshape(len(maps), -1).mean(axis=1)


def attention_area_mass(cams: Any, mass: float = 0.5) -> np.ndarray:
    """Smallest share of pixels that together hold ``mass`` of the map's total (non-negative)
    CAM mass: an attention area that does not depend on min-max scaling.

    Args:
        cams: (N, H, W) or (H, W) non-negative maps, tensor or array (any scale).
        mass: share of the total mass in (0, 1] (default 0.5).

    Returns:
        (N,) fractions in [0, 1]; 0 for an all-zero map (no mass to hold).
    """
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass!r}.")
    maps = _as_maps(cams)
    if (maps < 0).any():
        raise ValueError("attention_area_mass needs non-negative maps (Grad-CAM with relu=True).")
    flat = -np.sort(-maps.reshape(len(maps), -1), axis=1)
    total = flat.sum(axis=1)
    cum = np.cumsum(flat, axis=1)
    k = (cum < mass * total[:, None] * (1 - 1e-12)).sum(axis=1) + 1
    return np.where(total > 0, k / flat.shape[1], 0.0)
