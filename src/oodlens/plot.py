"""Figures, drawn with matplotlib's object API (no display needed) and saved to files."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ._outputs import Outputs

__all__ = ["plot_logit_kde"]


def _figure(n_panels: int, cols: int = 4, size: float = 3.2):
    from matplotlib.figure import Figure

    cols = min(cols, n_panels)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(size * cols, 0.8 * size * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def plot_logit_kde(
    scorer,
    train: Outputs,
    path: str | os.PathLike[str],
    max_panels: int = 12,
    threshold: float | None = None,
) -> Path:
    """Training-logit histograms with the fitted densities, like the origin's figure.

    Marginal mode: one panel per logit column (the histogram of that column over all
    training rows). Class-conditional mode (``top_k=1``): one panel per class (the histogram
    of the top logit of that class's training rows).

    Args:
        scorer: a fitted ``logit_kde`` scorer.
        train: the outputs it was fitted on.
        path: image file to write (format from the suffix, e.g. ``.png``).
        max_panels: draw at most this many columns / classes.
        threshold: optional density threshold to draw as a horizontal line.

    Returns:
        The path written.
    """
    marginal = scorer.mode == "marginal"
    n = min(train.n_classes, max_panels)
    fig, axes = _figure(n)
    names = train.class_names or tuple(str(i) for i in range(train.n_classes))
    logits = np.asarray(train.logits, dtype=np.float64)
    for j, ax in zip(range(n), axes, strict=False):
        values = logits[:, j] if marginal else logits[train.labels == j].max(axis=1)
        if values.size == 0:
            ax.set_title(f"class {names[j]}: no training rows")
            continue
        pad = 0.1 * (values.max() - values.min() + 1e-9)
        xs = np.linspace(values.min() - pad, values.max() + pad, 400)
        ax.hist(
            values, bins=40, density=True, alpha=0.45, color="tab:blue", label="training logits"
        )
        ax.plot(xs, scorer.density(xs, j), color="tab:red", lw=1.6, label="fitted KDE")
        if threshold is not None:
            ax.axhline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:g}")
        what = f"logit {names[j]}" if marginal else f"class {names[j]}: top logit"
        ax.set_title(what, fontsize=10)
        ax.set_xlabel("logit")
        ax.set_ylabel("density")
    axes[0].legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
