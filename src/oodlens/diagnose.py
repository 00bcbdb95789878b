"""Explaining predictions: Grad-CAM with scorer values (the ``oodlens explain`` workflow), and
the attention-area analysis of a benchmark (the origin study's "errors look at more" claim)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .backbones import (
    BatchPreprocess,
    build_transform,
    check_img_size,
    check_normalization,
    create_backbone,
    read_model_config,
    resolve_decode,
    resolve_device,
    resolve_preprocess,
    with_stages,
)
from .cache import Cache, file_sha256
from .conformal import ConformalRejector
from .datasets import DatasetSource, files_source, split_spec
from .errors import moved_names
from .explainers import Explanation, attention_area_mass, minmax_normalize
from .explainers.gradcam import GradCAM
from .explainers.integrated import IntegratedGradients
from .extract import cached_extract, default_num_workers, extract_outputs
from .metrics import threshold_at_acceptance
from .options import ExtractOptions
from .outputs import Outputs
from .progress import progress_bar
from .registry import ScorerSpec, load_dataset, parse_scorer_spec

__all__ = [
    "EXPLAINERS",
    "make_explainer",
    "explain_source",
    "explain_images",
    "attention_analysis",
    "AttentionResult",
    "save_maps",
]

log = logging.getLogger(__name__)

__getattr__ = moved_names(
    __name__, {"plot_explanations": "oodlens.plots", "Explanation": "oodlens.explainers"}
)


def _display(source: DatasetSource, index: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    return np.stack([np.asarray(source.loader(i).resize((size[1], size[0]))) for i in index])


#: The explainers ``oodlens explain`` can use, for class and score maps.
EXPLAINERS = ("gradcam", "integrated_gradients")


def make_explainer(
    kind: str,
    model: torch.nn.Module,
    score: Any = None,
    layer: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    sign: str = "foreign",
    n_steps: int = 32,
) -> Any:
    """A :class:`GradCAM` (on ``layer``) or :class:`IntegratedGradients` (``n_steps``) of a
    class or, with ``score``, of a fitted scorer's score, giving raw (unscaled) maps."""
    if kind not in EXPLAINERS:
        raise ValueError(f"explainer={kind!r} is not valid; use one of {', '.join(EXPLAINERS)}.")
    if kind == "gradcam":
        return GradCAM(
            model,
            layer=layer,
            normalize=False,
            device=device,
            batch_size=batch_size,
            score=score,
            sign=sign,
        )
    return IntegratedGradients(
        model, score=score, sign=sign, n_steps=n_steps, device=device, batch_size=batch_size
    )


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
    score_targets: Sequence[str] = (),
    explainer: str = "gradcam",
    sign: str = "foreign",
    n_steps: int = 32,
    stages: tuple[int, ...] = (),
    gram_stages: tuple[int, ...] = (),
) -> Explanation:
    """Class maps for ``source`` (or the rows ``index`` of it), plus fitted scorers' scores
    and, for calibrated ``rejectors``, each image's conformal p-value (as ``"p(name)"``).

    ``outputs`` are the extracted outputs of the same rows, for the scorers; when omitted and
    scorers are given, they are extracted here (logits, features and head, and the
    ``stages`` / ``gram_stages`` blocks the scorers read).
    ``score_targets``: names of ``scorers`` whose score is explained too (raw maps in
    ``Explanation.score_maps``; ``sign`` as for :class:`GradCAM`). ``explainer``:
    ``"gradcam"`` (on ``layer``) or ``"integrated_gradients"`` (``n_steps``), for both.
    """
    index = list(range(len(source))) if index is None else list(index)
    x = torch.stack([transform(source.loader(i)) for i in index])
    common = {"layer": layer, "device": device, "batch_size": batch_size, "n_steps": n_steps}
    for name in score_targets:  # before any work: a scorer without a torch form is named
        make_explainer(explainer, model, score=(scorers or {})[name], sign=sign, **common)
    maker = make_explainer(explainer, model, **common)
    raw = maker.explain(x)
    cams = minmax_normalize(raw.clamp(min=0)).numpy()
    logits = maker.last_logits.numpy()
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    if outputs is None and (scorers or rejectors):
        outputs = extract_outputs(
            model,
            source.subset(index, source.spec),
            transform,
            tuple(x.shape[1:]),
            device=device,
            progress=False,
            stages=stages,
            gram_stages=gram_stages,
        )
    scores = {name: s.score(outputs) for name, s in (scorers or {}).items()}
    for name, rejector in (rejectors or {}).items():
        scores[f"p({name})"] = rejector.p_values(outputs)
    score_maps = {
        name: make_explainer(explainer, model, score=(scorers or {})[name], sign=sign, **common)
        .explain(x)
        .numpy()
        for name in score_targets
    }
    return Explanation(
        ids=[source.ids[i] for i in index],
        images=_display(source, index, cams.shape[1:]),
        cams=cams,
        raw_cams=raw.clamp(min=0).numpy(),
        predictions=probs.argmax(1),
        softmax=probs.max(1),
        class_names=tuple(class_names),
        scores=scores,
        score_maps=score_maps,
    )


def explain_images(
    images: Sequence[str | os.PathLike[str]],
    model: str | None = None,
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
    target: str = "class",
    explainer: str = "gradcam",
    sign: str = "foreign",
    n_steps: int = 32,
    detector: str | os.PathLike[str] | None = None,
    override_checkpoint: bool = False,
) -> Explanation:
    """The ``oodlens explain`` workflow: class maps (and, with ``target="score"``, maps of
    each scorer's score) and scorer values for image files.

    With ``calib`` (a spec of held-out ID images the scorers were not fitted on), each
    scorer also gives each image's split-conformal p-value (see :mod:`oodlens.conformal`)
    and its verdict: accepted when the score reaches the threshold that accepts
    ``acceptance`` of the calib images. ``options`` (:class:`~oodlens.options.ExtractOptions`:
    image size, device, workers, precision, channels-last, preprocessing) apply to the
    network and to the extraction of the training and calib outputs.

    Scorers (specs, e.g. ``"logit_kde:mode=class_conditional"``) are parsed first (so a bad
    spec fails before any work), then fitted on the model's outputs on its ID training data
    ``train`` (default: the data recorded in an oodlens checkpoint), extracted through the
    same cache as the harness. With ``detector`` (a saved :class:`~oodlens.Detector`), its
    network, fitted scorer and calibration are used instead (p-values and verdicts at its
    alpha), and ``model``/``scorers`` are not needed.

    ``explainer``: ``"gradcam"`` (on ``layer``) or ``"integrated_gradients"``
    (``n_steps``); ``sign``: ``"foreign"`` (the score map shows what lowers the score) or
    ``"familiar"``.

    What an oodlens checkpoint records is the default: its model (``model`` may be left
    out), its input size (an ``options.img_size`` that contradicts it is an error unless
    ``override_checkpoint``) and its training data (``train``).
    """
    if target not in ("class", "score"):
        raise ValueError(f"target={target!r} is not valid; use 'class' or 'score'.")
    options = options or ExtractOptions()
    source = files_source(images)
    dev = resolve_device(options.device)
    preprocess = resolve_preprocess(options.preprocess, dev)
    options = options.replace(
        device=str(dev),
        preprocess=preprocess,
        decode=resolve_decode(options.decode, dev, preprocess),
        num_workers=(
            options.num_workers if options.num_workers is not None else default_num_workers()
        ),
    )
    maps = {"layer": layer, "explainer": explainer, "sign": sign, "n_steps": n_steps}
    if detector is not None:
        return _explain_with_detector(source, detector, checkpoint, options, target, maps)
    stored = read_model_config(checkpoint) if checkpoint is not None else None
    if model is None and stored is not None:
        model = stored.model
    if model is None:
        raise ValueError(
            "explain needs --model (or an oodlens checkpoint or --detector, which record "
            "their network)."
        )
    if options.img_size is not None:  # None: the checkpoint's size
        check_img_size(options.img_size, stored, checkpoint, override_checkpoint)
    specs = [parse_scorer_spec(spec) for spec in scorers]
    for spec in specs:
        spec.create()  # a search grid is an error here
    if target == "score" and not specs:
        raise ValueError("--target score explains a scorer's score: name it with --scorers.")
    # the stages the scorers read are extracted with the rest
    options = with_stages(options, model, [spec.kinds for spec in specs])
    net, mcfg = create_backbone(
        model, checkpoint=checkpoint, img_size=options.img_size, pretrained=pretrained
    )
    transform, data_cfg = build_transform(net, mcfg.img_size)
    check_normalization(stored, data_cfg, checkpoint)
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
    targets = list(fitted) if target == "score" else []
    exp = explain_source(
        net,
        source,
        transform,
        names,
        scorers=fitted,
        device=dev,
        rejectors=rejectors,
        score_targets=targets,
        stages=options.stages,
        gram_stages=options.gram_stages,
        **maps,
    )
    # the verdict at the operating threshold chosen on the held-out calib images (95% of
    # them accepted), never on the images being explained
    exp.verdicts = {
        k: exp.scores[k] >= threshold_at_acceptance(r.calib_scores_, acceptance)
        for k, r in rejectors.items()
    }
    return exp


def _explain_with_detector(
    source: DatasetSource,
    path: str | os.PathLike[str],
    checkpoint: str | None,
    options: ExtractOptions,
    target: str,
    maps: dict[str, Any],
) -> Explanation:
    """``explain`` with a saved detector: its network, scorer, p-values and verdicts."""
    from .detector import Detector

    det = Detector.load(path, checkpoint=checkpoint, device=options.device)
    transform, _ = det.preprocessing()
    names = det.backbone.class_names or tuple(str(i) for i in range(det.backbone.num_classes))
    exp = explain_source(
        det.network(options.device),
        source,
        transform,
        names,
        scorers={det.spec: det.scorer},
        device=options.device,
        score_targets=[det.spec] if target == "score" else [],
        **maps,
    )
    p, rejected = det.decide(exp.scores[det.spec])
    exp.scores[f"p({det.spec})"] = p
    exp.verdicts = {det.spec: ~rejected}
    return exp


def save_maps(exp: Explanation, path: str | os.PathLike[str]) -> Path:
    """Write an explanation's maps as one ``.npz`` (atomically): ``ids`` (N,), ``class_maps``
    (N, H, W), and with score maps ``scorers`` (K,) and ``score_maps`` (K, N, H, W); raw
    float32 maps at the model's input resolution, before any scaling (score maps positive
    where the image looks foreign, with the default sign)."""
    from .files import atomic_path

    arrays = {
        "ids": np.asarray(exp.ids, dtype=str),
        "class_maps": np.asarray(exp.raw_cams, dtype=np.float32),
    }
    if exp.score_maps:
        arrays["scorers"] = np.asarray(list(exp.score_maps), dtype=str)
        arrays["score_maps"] = np.stack(list(exp.score_maps.values())).astype(np.float32)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return path


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
    scorer: Any = None,
    progress: bool = False,
) -> AttentionResult:
    """Attention areas of ID-correct, ID-wrong-accepted, ID-wrong-rejected and OOD images.

    Accepted means ``score >= threshold`` for the scorer whose scores are given. Up to
    ``max_per_set`` images per set are explained (a seeded random sample; every ID error is
    kept). Returns one row per group with n, median, q25 and q75 of ``area@0.5`` (min-max
    normalised maps, share of pixels >= 0.5) and ``mass@0.5`` (share of pixels holding half
    the CAM mass), plus Mann-Whitney U tests (two-sided) of errors vs correct. With
    ``scorer`` (the fitted scorer those scores come from, when it has a differentiable
    score) the same of its score maps too (``score_area``, ``score_mass``: what makes the
    image look foreign), so the origin's attention question can be asked of the score.
    ``progress`` shows how many images are explained (see :mod:`oodlens.progress`).
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
    explained = scorer is not None and scorer.differentiable
    measures = ("area", "mass", "score_area", "score_mass") if explained else ("area", "mass")
    areas: dict[str, dict[str, np.ndarray]] = {}
    bar = progress_bar(
        total=sum(len(idx) for _, idx in groups.values()),
        desc="attention maps",
        unit="img",
        enabled=progress,
    )
    for group, (key, idx) in groups.items():
        if len(idx) == 0:
            areas[group] = {m: np.array([]) for m in measures}
            continue
        exp = explain_source(
            model,
            sources[key],
            transform,
            class_names,
            idx,
            layer=layer,
            device=device,
            scorers={"score": scorer} if explained else None,
            outputs=outputs[key].subset(idx) if explained else None,
            score_targets=["score"] if explained else [],
        )
        areas[group] = {"area": exp.area, "mass": attention_area_mass(exp.raw_cams, 0.5)}
        if explained:
            positive = np.maximum(exp.score_maps["score"], 0.0)
            areas[group]["score_area"] = exp.score_areas["score"]
            areas[group]["score_mass"] = attention_area_mass(positive, 0.5)
        bar.update(len(idx))
    bar.close()
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
