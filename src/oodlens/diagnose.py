"""Explaining predictions: Grad-CAM overlays with scorer values, and the attention-area
analysis of a benchmark (the origin study's "errors look at more of the image" claim)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ._outputs import Outputs
from .datasets import DatasetSource
from .explainers import GradCAM, _minmax, attention_area, attention_area_mass

__all__ = ["Explanation", "explain_source", "plot_explanations", "attention_analysis"]

log = logging.getLogger(__name__)


@dataclass
class Explanation:
    """Grad-CAM maps and predictions for a set of images."""

    ids: list[str]  #: image ids (paths)
    images: np.ndarray  #: (N, H, W, 3) uint8 images as the model saw them (resized)
    cams: np.ndarray  #: (N, H, W) Grad-CAM maps in [0, 1]
    raw_cams: np.ndarray  #: (N, H, W) the same before min-max scaling (non-negative)
    predictions: np.ndarray  #: (N,) predicted class
    softmax: np.ndarray  #: (N,) max softmax probability
    class_names: tuple[str, ...]  #: names of the model's classes
    scores: dict[str, np.ndarray]  #: scorer name -> (N,) score

    @property
    def area(self) -> np.ndarray:
        """(N,) attention area at threshold 0.5."""
        return attention_area(self.cams, 0.5)


def _display(source: DatasetSource, index: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    return np.stack([np.asarray(source.loader(i).resize((size[1], size[0]))) for i in index])


def explain_source(
    model: torch.nn.Module,
    source: DatasetSource,
    transform: Any,
    class_names: Sequence[str],
    index: Sequence[int] | None = None,
    scorers: dict[str, Any] | None = None,
    outputs: Outputs | None = None,
    layer: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> Explanation:
    """Grad-CAM for ``source`` (or the rows ``index`` of it), plus fitted scorers' scores.

    ``outputs`` are the extracted outputs of the same rows, for the scorers; when omitted and
    scorers are given, they are extracted here (logits, features and head).
    """
    index = list(range(len(source))) if index is None else list(index)
    x = torch.stack([transform(source.loader(i)) for i in index])
    explainer = GradCAM(model, layer=layer, normalize=False, device=device, batch_size=batch_size)
    raw = explainer.explain(x)
    cams = _minmax(raw).numpy()
    logits = explainer.last_logits.numpy()
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    if outputs is None and scorers:
        from .backbones import extract_outputs

        outputs = extract_outputs(
            model,
            source.subset(index, source.spec),
            transform,
            tuple(x.shape[1:]),
            device=device,
            progress=False,
        )
    scores = {name: s.score(outputs) for name, s in (scorers or {}).items()}
    return Explanation(
        ids=[source.ids[i] for i in index],
        images=_display(source, index, cams.shape[1:]),
        cams=cams,
        raw_cams=raw.numpy(),
        predictions=probs.argmax(1),
        softmax=probs.max(1),
        class_names=tuple(class_names),
        scores=scores,
    )


def plot_explanations(
    exp: Explanation, path: str | os.PathLike[str], columns: int = 6, title: str | None = None
) -> Path:
    """A grid: each image above its Grad-CAM overlay, titled with the predicted class, the
    softmax score, every scorer's score and the attention area (like the origin's figures)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    n = len(exp.ids)
    cols = max(1, min(columns, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.6 * cols, 5.6 * rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(2 * rows, cols, squeeze=False))
    heat = colormaps["jet"]
    area = exp.area
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        top, bottom = axes[2 * r, c], axes[2 * r + 1, c]
        top.axis("off")
        bottom.axis("off")
        if k >= n:
            continue
        img = exp.images[k].astype(np.float64) / 255.0
        overlay = 0.55 * img + 0.45 * heat(exp.cams[k])[..., :3]
        top.imshow(img)
        top.set_title(Path(exp.ids[k]).name[:24], fontsize=7)
        bottom.imshow(np.clip(overlay, 0, 1))
        lines = [f"{exp.class_names[exp.predictions[k]]}  p={exp.softmax[k]:.3f}"]
        lines += [f"{name}={vals[k]:.4g}" for name, vals in exp.scores.items()]
        lines.append(f"area@0.5={area[k]:.2f}")
        bottom.set_title("\n".join(lines), fontsize=7)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"n": 0, "median": float("nan"), "q25": float("nan"), "q75": float("nan")}
    q25, med, q75 = np.percentile(values, [25, 50, 75])
    return {"n": int(values.size), "median": float(med), "q25": float(q25), "q75": float(q75)}


def attention_analysis(
    model: torch.nn.Module,
    transform: Any,
    sources: dict[str, DatasetSource],
    outputs: dict[str, Outputs],
    id_scores: np.ndarray,
    ood_scores: dict[str, np.ndarray],
    threshold: float,
    class_names: Sequence[str],
    max_per_set: int = 200,
    seed: int = 0,
    device: str | torch.device = "cpu",
    layer: str | None = None,
) -> tuple[pd.DataFrame, Explanation | None]:
    """Attention areas of ID-correct, ID-wrong-accepted, ID-wrong-rejected and OOD images.

    Accepted means ``score >= threshold`` for the scorer whose scores are given. Up to
    ``max_per_set`` images per set are explained (a seeded random sample; every ID error is
    kept). Returns one row per group with n, median, q25 and q75 of ``area@0.5`` (min-max
    normalised maps, share of pixels >= 0.5) and ``mass@0.5`` (share of pixels holding half
    the CAM mass), plus Mann-Whitney U tests (two-sided) of errors vs correct.
    """
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(seed)
    test = outputs["id_test"]
    correct = test.correct()
    if test.n_samples != len(sources["id_test"]):
        raise ValueError("attention analysis needs every ID test image (none skipped as corrupt).")
    wrong = np.flatnonzero(~correct)
    right = np.flatnonzero(correct)
    right = rng.choice(right, min(len(right), max_per_set), replace=False) if len(right) else right
    groups: dict[str, tuple[str, np.ndarray]] = {
        "id_correct": ("id_test", np.sort(right)),
        "id_wrong_accepted": ("id_test", wrong[id_scores[wrong] >= threshold]),
        "id_wrong_rejected": ("id_test", wrong[id_scores[wrong] < threshold]),
    }
    for name, scores in ood_scores.items():
        if outputs[name].n_samples != len(sources[name]):
            log.warning("attention: skipping %s (some images were skipped as corrupt)", name)
            continue
        pick = rng.choice(len(scores), min(len(scores), max_per_set), replace=False)
        groups[f"ood:{name}"] = (name, np.sort(pick))
    areas: dict[str, dict[str, np.ndarray]] = {}
    for group, (key, idx) in groups.items():
        if len(idx) == 0:
            areas[group] = {"area": np.array([]), "mass": np.array([])}
            continue
        exp = explain_source(
            model, sources[key], transform, class_names, idx, layer=layer, device=device
        )
        areas[group] = {"area": exp.area, "mass": attention_area_mass(exp.raw_cams, 0.5)}
    rows = []
    for group, vals in areas.items():
        row = {"group": group}
        for measure, v in vals.items():
            s = _summary(v)
            row["n"] = s["n"]
            row.update({f"{measure}_{k}": s[k] for k in ("median", "q25", "q75")})
        rows.append(row)
    table = pd.DataFrame(rows)
    errors = np.concatenate(
        [areas["id_wrong_accepted"]["area"], areas["id_wrong_rejected"]["area"]]
    )
    base = areas["id_correct"]["area"]
    tests = {}
    for label, sample in (
        ("errors_vs_correct", errors),
        ("accepted_errors_vs_correct", areas["id_wrong_accepted"]["area"]),
    ):
        if sample.size >= 3 and base.size >= 3:
            res = mannwhitneyu(sample, base, alternative="two-sided")
            tests[label] = {
                "U": float(res.statistic),
                "p": float(res.pvalue),
                "n_errors": int(sample.size),
            }
    table.attrs["mannwhitney"] = tests
    confident = None
    if len(wrong):
        conf = wrong[np.argsort(-id_scores[wrong])][:12]
        confident = explain_source(
            model, sources["id_test"], transform, class_names, conf, layer=layer, device=device
        )
        confident.scores = {"score": id_scores[conf]}
    return table, confident
