"""Every figure oodlens draws, with matplotlib's object API (no display needed), through one
grid helper and one save helper."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .explainers.attention import minmax_normalize
from .explainers.base import Explanation
from .files import atomic_path
from .metrics import risk_coverage_curve
from .outputs import Outputs

__all__ = [
    "figure_grid",
    "save_figure",
    "plot_logit_kde",
    "plot_explanations",
    "plot_roc",
    "plot_score_distributions",
    "plot_risk_coverage",
    "plot_calibration",
    "FIGURE_FORMATS",
]

#: File formats a figure can be saved in (by suffix).
FIGURE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def _plain(text: Any) -> str:
    """``text`` as matplotlib shows it literally: a name holding ``$`` (``a$_$b``) is not
    parsed as mathtext (which would drop the dollars or fail to render)."""
    return str(text).replace("$", r"\$")


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


def figure_grid(
    n_panels: int, cols: int = 3, panel: tuple[float, float] = (4.2, 3.2)
) -> tuple[Any, np.ndarray]:
    """A figure with ``n_panels`` axes in a grid of at most ``cols`` columns (unused axes
    hidden). Returns ``(figure, flat array of axes)``."""
    cols = max(1, min(cols, n_panels))
    rows = math.ceil(n_panels / cols)
    fig = _figure((panel[0] * cols, panel[1] * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


#: Curves beyond which a figure's legend goes beside the panels (in columns of at most
#: :data:`LEGEND_ROWS` entries) instead of inside one, where it would cover the curves.
LEGEND_INSIDE = 8
LEGEND_ROWS = 16


def _legend(fig: Any, ax: Any) -> None:
    """The legend of ``ax``'s curves: inside it for a few, beside the figure for many
    (30 scorers' labels inside a 4-inch panel left constrained layout no room)."""
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) <= LEGEND_INSIDE:
        ax.legend(fontsize=7)
        return
    columns = math.ceil(len(labels) / LEGEND_ROWS)
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + 2.6 * columns, max(height, 0.16 * min(len(labels), LEGEND_ROWS)))
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, ncols=columns)


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Save ``fig`` atomically; a path without a suffix gets ``.png``. Returns the path
    actually written (so callers report the real file name)."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if not suffix:
        path = path.with_name(path.name + ".png")
        suffix = "png"
    if suffix not in FIGURE_FORMATS:
        raise ValueError(
            f"Cannot save a figure as {str(path)!r}: use one of the suffixes "
            f"{', '.join('.' + f for f in FIGURE_FORMATS)}."
        )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=suffix)
    return path


def plot_roc(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    ood_names: Sequence[str],
    title: str,
    path: str | os.PathLike[str],
) -> Path:
    """ROC curves: one panel per OOD set, one curve per scorer (``scores[scorer]["id"]`` and
    ``scores[scorer][ood_name]``)."""
    from sklearn.metrics import roc_curve

    fig, axes = figure_grid(len(ood_names), cols=len(ood_names), panel=(4.0, 3.6))
    for ax, name in zip(axes, ood_names, strict=False):
        for spec, data in scores.items():
            s_id, s_ood = data["id"], data[name]
            fpr, tpr, _ = roc_curve(
                np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood]
            )
            ax.plot(fpr, tpr, lw=1.3, label=_plain(spec))
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title(_plain(f"ID test vs {name}"))
        ax.set_xlabel("OOD accepted (FPR)")
        ax.set_ylabel("ID accepted (TPR)")
    _legend(fig, axes[0])
    fig.suptitle(_plain(title))
    return save_figure(fig, path)


def plot_score_distributions(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    ood_names: Sequence[str],
    path: str | os.PathLike[str],
) -> Path:
    """Histograms of ID test vs each OOD set's scores, one panel per scorer."""
    fig, axes = figure_grid(len(scores))
    for ax, (spec, data) in zip(axes, scores.items(), strict=False):
        allv = np.concatenate(list(data.values()))
        lo, hi = np.percentile(allv, [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
        ax.hist(data["id"], bins=bins, density=True, alpha=0.5, label="ID test")
        for name in ood_names:
            ax.hist(
                data[name], bins=bins, density=True, histtype="step", lw=1.4, label=_plain(name)
            )
        ax.set_title(_plain(spec), fontsize=9)
        ax.set_xlabel("score (higher = more ID)")
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


def plot_risk_coverage(
    id_scores: Mapping[str, np.ndarray],
    id_correct: np.ndarray,
    title: str,
    path: str | os.PathLike[str],
) -> Path:
    """Risk-coverage curves on ID test, one per scorer."""
    fig, axes = figure_grid(1, panel=(5.0, 3.8))
    ax = axes[0]
    for spec, s_id in id_scores.items():
        cov, risk, _ = risk_coverage_curve(s_id, id_correct)
        ax.step(cov, risk, where="post", lw=1.3, label=_plain(spec))
    ax.set_xlabel("coverage (share of ID test accepted)")
    ax.set_ylabel("risk (error rate among accepted)")
    ax.set_title(_plain(title))
    _legend(fig, ax)
    return save_figure(fig, path)


def plot_calibration(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    title: str,
    path: str | os.PathLike[str],
) -> Path:
    """Realised ID false-rejection rate against the conformal level alpha (one curve per
    scorer: ``curves[scorer] = {"alpha": [...], "frr": [...]}``) with the y = x line: a
    valid rejector stays on or under it, up to sampling error."""
    fig, axes = figure_grid(1, panel=(5.0, 4.2))
    ax = axes[0]
    top = max(max(c["alpha"]) for c in curves.values())
    ax.plot([0, top], [0, top], "k:", lw=1.0, label="y = x (the guarantee)")
    for spec, c in curves.items():
        ax.plot(c["alpha"], c["frr"], lw=1.3, marker=".", label=_plain(spec))
    ax.set_xlabel("alpha (conformal level)")
    ax.set_ylabel("ID test rejected (realised false rejections)")
    ax.set_title(_plain(title))
    _legend(fig, ax)
    return save_figure(fig, path)


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
    fig, axes = figure_grid(n, cols=4, panel=(3.2, 2.56))
    names = train.class_names or tuple(str(i) for i in range(train.n_classes))
    logits = np.asarray(train.logits, dtype=np.float64)
    for j, ax in zip(range(n), axes, strict=False):
        values = logits[:, j] if marginal else logits[train.labels == j].max(axis=1)
        if values.size == 0:
            ax.set_title(_plain(f"class {names[j]}: no training rows"))
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
        ax.set_title(_plain(what), fontsize=10)
        ax.set_xlabel("logit")
        ax.set_ylabel("density")
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def plot_explanations(
    exp: Explanation, path: str | os.PathLike[str], columns: int = 6, title: str | None = None
) -> Path:
    """A grid: each image above its class map (Grad-CAM or Integrated Gradients overlay),
    titled with the predicted class, the softmax score, every scorer's score and verdict and
    the attention area (like the origin's figures); when the score was explained, one more
    overlay per scorer below, its score map (what makes the image look foreign), side by
    side with the class map in the same column."""
    from matplotlib import colormaps

    n = len(exp.ids)
    cols = max(1, min(columns, n))
    rows = math.ceil(n / cols)
    per = 2 + len(exp.score_maps)  # image, class map, score maps
    fig = _figure((2.6 * cols, 2.8 * per * rows))
    axes = np.atleast_2d(fig.subplots(per * rows, cols, squeeze=False))
    heat = colormaps["jet"]
    area = exp.area
    score_maps = {k: minmax_normalize(np.maximum(v, 0.0)) for k, v in exp.score_maps.items()}
    score_areas = exp.score_areas
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        panels = [axes[per * r + j, c] for j in range(per)]
        for ax in panels:
            ax.axis("off")
        if k >= n:
            continue
        img = exp.images[k].astype(np.float64) / 255.0
        panels[0].imshow(img)
        panels[0].set_title(_plain(Path(exp.ids[k]).name[:24]), fontsize=7)
        overlays = [("class", exp.cams[k], area[k])] + [
            (name, m[k], score_areas[name][k]) for name, m in score_maps.items()
        ]
        for ax, (name, cam, a) in zip(panels[1:], overlays, strict=True):
            ax.imshow(np.clip(0.55 * img + 0.45 * heat(cam)[..., :3], 0, 1))
            if name == "class":
                lines = [f"{exp.class_names[exp.predictions[k]]}  p={exp.softmax[k]:.3f}"]
                for score_name, vals in exp.scores.items():
                    verdict = exp.verdicts.get(score_name)
                    mark = "" if verdict is None else (" accepted" if verdict[k] else " REJECTED")
                    lines.append(f"{score_name}={vals[k]:.4g}{mark}")
            else:
                verdict = exp.verdicts.get(name)
                mark = "" if verdict is None else (" accepted" if verdict[k] else " REJECTED")
                lines = [f"map of {name}{mark}"]
            lines.append(f"area@0.5={a:.2f}")
            ax.set_title(_plain("\n".join(lines)), fontsize=7)
    if title:
        fig.suptitle(_plain(title))
    return save_figure(fig, path, dpi=100)
