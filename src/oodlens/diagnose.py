"""Explaining predictions: Grad-CAM with scorer values (the ``oodlens explain`` workflow), and
the attention-area analysis of a benchmark (the origin study's "errors look at more" claim)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .backbones import (
    BatchPreprocess,
    build_transform,
    create_backbone,
    resolve_device,
    resolve_preprocess,
)
from .cache import Cache, file_sha256
from .conformal import ConformalRejector
from .datasets import DatasetSource, files_source, split_spec
from .errors import moved_names
from .explainers import Explanation, attention_area_mass
from .explainers.gradcam import GradCAM, minmax_normalize
from .extract import cached_extract, default_num_workers, extract_outputs
from .metrics import threshold_at_acceptance
from .options import ExtractOptions
from .outputs import Outputs
from .registry import ScorerSpec, load_dataset, parse_scorer_spec

__all__ = ["explain_source", "explain_images", "attention_analysis", "AttentionResult"]

log = logging.getLogger(__name__)

__getattr__ = moved_names(
    __name__, {"plot_explanations": "oodlens.plots", "Explanation": "oodlens.explainers"}
)


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
    rejectors: dict[str, ConformalRejector] | None = None,
) -> Explanation:
    """Grad-CAM for ``source`` (or the rows ``index`` of it), plus fitted scorers' scores
    and, for calibrated ``rejectors``, each image's conformal p-value (as ``"p(name)"``).

    ``outputs`` are the extracted outputs of the same rows, for the scorers; when omitted and
    scorers are given, they are extracted here (logits, features and head).
    """
    index = list(range(len(source))) if index is None else list(index)
    x = torch.stack([transform(source.loader(i)) for i in index])
    explainer = GradCAM(model, layer=layer, normalize=False, device=device, batch_size=batch_size)
    raw = explainer.explain(x)
    cams = minmax_normalize(raw).numpy()
    logits = explainer.last_logits.numpy()
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    if outputs is None and (scorers or rejectors):
        outputs = extract_outputs(
            model,
            source.subset(index, source.spec),
            transform,
            tuple(x.shape[1:]),
            device=device,
            progress=False,
        )
    scores = {name: s.score(outputs) for name, s in (scorers or {}).items()}
    for name, rejector in (rejectors or {}).items():
        scores[f"p({name})"] = rejector.p_values(outputs)
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


def explain_images(
    images: Sequence[str | os.PathLike[str]],
    model: str,
    checkpoint: str | None = None,
    pretrained: bool = False,
    scorers: Sequence[str | ScorerSpec] = (),
    train: str | None = None,
    layer: str | None = None,
    cache: Cache | None = None,
    progress: bool = True,
    calib: str | None = None,
    acceptance: float = 0.95,
    options: ExtractOptions | None = None,
) -> Explanation:
    """The ``oodlens explain`` workflow: Grad-CAM and scorer values for image files.

    With ``calib`` (a spec of held-out ID images the scorers were not fitted on), each
    scorer also gives each image's split-conformal p-value (see :mod:`oodlens.conformal`)
    and its verdict: accepted when the score reaches the threshold that accepts
    ``acceptance`` of the calib images. ``options`` (:class:`~oodlens.options.ExtractOptions`:
    image size, device, workers, precision, channels-last, preprocessing) apply to the
    network and to the extraction of the training and calib outputs.

    Scorers (specs, e.g. ``"logit_kde:mode=class_conditional"``) are parsed first (so a bad
    spec fails before any work), then fitted on the model's outputs on its ID training data
    ``train`` (default: the data recorded in an oodlens checkpoint), extracted through the
    same cache as the harness.
    """
    options = options or ExtractOptions()
    specs = [parse_scorer_spec(spec) for spec in scorers]
    for spec in specs:
        spec.create()  # a search grid is an error here
    source = files_source(images)
    dev = resolve_device(options.device)
    net, mcfg = create_backbone(
        model, checkpoint=checkpoint, img_size=options.img_size, pretrained=pretrained
    )
    transform, data_cfg = build_transform(net, mcfg.img_size)
    options = options.replace(
        device=str(dev),
        preprocess=resolve_preprocess(options.preprocess, dev),
        num_workers=(
            options.num_workers if options.num_workers is not None else default_num_workers()
        ),
    )
    if options.preprocess == "device":
        transform = BatchPreprocess(transform)
    names = mcfg.class_names or tuple(str(i) for i in range(mcfg.num_classes))
    fitted, rejectors = {}, {}
    if specs:
        train_spec = train or mcfg.extra.get("train", {}).get("data")
        if not train_spec:
            raise ValueError(
                "Scorers are fitted on the model's training outputs: pass --train SPEC (the ID "
                "training data), or --scorers with no names to show none."
            )
        weights = file_sha256(checkpoint) if checkpoint else f"timm-pretrained:{model}"

        def outputs_of(spec: str) -> Outputs:
            out, _, _ = cached_extract(
                lambda: net,
                model,
                weights,
                load_dataset(spec),
                transform,
                tuple(data_cfg["input_size"]),
                cache or Cache(),
                options,
                progress=progress,
            )
            return out

        train_out = outputs_of(split_spec(train_spec, "train"))
        fitted = {spec.text: spec.create().fit(train_out) for spec in specs}
        if calib is not None:
            calib_out = outputs_of(calib)
            rejectors = {k: ConformalRejector(s).calibrate(calib_out) for k, s in fitted.items()}
    exp = explain_source(
        net, source, transform, names, scorers=fitted, layer=layer, device=dev, rejectors=rejectors
    )
    # the verdict at the operating threshold chosen on the held-out calib images (95% of
    # them accepted), never on the images being explained
    exp.verdicts = {
        k: exp.scores[k] >= threshold_at_acceptance(r.calib_scores_, acceptance)
        for k, r in rejectors.items()
    }
    return exp


def _summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"n": 0, "median": float("nan"), "q25": float("nan"), "q75": float("nan")}
    q25, med, q75 = np.percentile(values, [25, 50, 75])
    return {"n": int(values.size), "median": float(med), "q25": float(q25), "q75": float(q75)}


@dataclass
class AttentionResult:
    """What :func:`attention_analysis` measured."""

    table: pd.DataFrame  #: one row per group: n and median/q25/q75 of area@0.5 and mass@0.5
    tests: dict[str, dict[str, float]]  #: Mann-Whitney U tests of errors vs correct
    confident_errors: Explanation | None  #: the most confident ID errors, for a figure


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
) -> AttentionResult:
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
    confident = None
    if len(wrong):
        conf = wrong[np.argsort(-id_scores[wrong])][:12]
        confident = explain_source(
            model, sources["id_test"], transform, class_names, conf, layer=layer, device=device
        )
        confident.scores = {"score": id_scores[conf]}
        confident.verdicts = {"score": id_scores[conf] >= threshold}
    return AttentionResult(table, tests, confident)
