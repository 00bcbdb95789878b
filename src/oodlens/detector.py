"""A saved detector: a fitted scorer, the network it reads and a conformal calibration, in one
file, giving new images a verdict with a guarantee.

:class:`Detector` holds the backbone (timm name, image size, class names), the checkpoint's
SHA-256 (or the weights themselves), the fitted scorer's state, the calibration scores of
held-out in-distribution images and the chosen level ``alpha`` (or a fixed score threshold),
and where it came from (data fingerprints, configuration, versions). ``oodlens fit`` and
``oodlens bench --save-detectors`` write one; ``oodlens detect`` and :meth:`Detector.predict`
use it.

The verdict: an image is rejected when its conformal p-value is at most ``alpha``. If new
in-distribution images are exchangeable with the calibration images, at most ``alpha`` of
them are rejected on average (marginally over the calibration draw; see
:mod:`oodlens.conformal`). It says nothing about how many OOD images are rejected (that is
the scorer's power, measured by ``oodlens bench``), and it holds only while the
in-distribution data stay like the calibration data: recalibrate after a shift.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .backbones import (
    BatchPreprocess,
    ModelConfig,
    build_transform,
    create_backbone,
    load_checkpoint,
    resolve_decode,
    resolve_device,
    resolve_preprocess,
    with_stages,
)
from .cache import file_sha256
from .conformal import conformal_p_values
from .datasets import DatasetSource, as_shown, files_source
from .extract import ExtractionReport, extract_outputs, model_inputs
from .files import file_digest
from .options import ExtractOptions
from .params import Interval, validate_params
from .saving import half_paths, scorer_from_state, scorer_state
from .scorers.base import Scorer
from .statefile import read_state, write_state

__all__ = ["Detector", "Verdicts", "image_source", "embedded_weights"]

log = logging.getLogger(__name__)

#: The top-level keys of a detector file's state; any other is refused.
_KEYS = frozenset(
    {"scorer", "backbone", "preprocessing", "checkpoint", "weights", "calibration", "provenance"}
)


@dataclass
class Verdicts:
    """What :meth:`Detector.predict` says about each image (arrays of length N)."""

    ids: list[str]  #: the image (path, or ``image<i>`` for images given in memory)
    predictions: list[str]  #: the predicted class name
    probabilities: np.ndarray  #: its softmax probability
    scores: np.ndarray  #: the scorer's score (higher = more in-distribution)
    p_values: np.ndarray  #: the conformal p-value against the calibration scores
    rejected: np.ndarray  #: the verdict: ``p <= alpha`` (or ``score < threshold``)
    scorer: str  #: the scorer spec
    alpha: float | None  #: the level (None: a fixed threshold decides)
    threshold: float | None  #: the fixed score threshold, when one decides
    weights_sha256: str | None  #: the hash of the weights used
    forced: bool = False  #: the weights' hash differs from the recorded one (``--force``)

    def __len__(self) -> int:
        return len(self.ids)

    def to_frame(self) -> pd.DataFrame:
        """One row per image: id, prediction, probability, score, p_value, rejected, and the
        scorer, alpha or threshold, weights hash and whether it was forced."""
        return pd.DataFrame(
            {
                "id": self.ids,
                "prediction": self.predictions,
                "probability": self.probabilities,
                "score": self.scores,
                "p_value": self.p_values,
                "rejected": self.rejected,
                "scorer": self.scorer,
                "alpha": self.alpha,
                "threshold": self.threshold,
                "weights_sha256": self.weights_sha256,
                "forced": self.forced,
            }
        )


def _in_memory(images: Sequence[Image.Image], spec: str) -> DatasetSource:
    frozen = [as_shown(img) for img in images]
    return DatasetSource(
        spec=spec,
        classes=("unknown",),
        ids=[f"image{i}" for i in range(len(frozen))],
        labels=np.zeros(len(frozen), dtype=np.int64),
        loader=lambda i: frozen[i],
    )


def image_source(images: Any) -> DatasetSource:
    """Images as a dataset: a PIL image or a list of them, a path (a file or a folder) or a
    list of paths, or a tensor batch (N, 3, H, W) or (3, H, W) of uint8, or of floats in
    [0, 1] before normalisation (each is preprocessed as an image file would be).

    Raises:
        TypeError, ValueError: naming what was given and what is accepted.
    """
    if isinstance(images, torch.Tensor):
        from torchvision.transforms.functional import to_pil_image

        batch = images.detach().cpu()
        batch = batch[None] if batch.ndim == 3 else batch
        if batch.ndim != 4 or batch.shape[1] not in (1, 3):
            raise ValueError(
                f"An image tensor must be (N, 3, H, W) or (3, H, W), got {tuple(images.shape)}."
            )
        if batch.dtype.is_floating_point and (batch.min() < 0 or batch.max() > 1):
            raise ValueError(
                "A float image tensor must hold values in [0, 1] (before normalisation); got "
                f"[{float(batch.min()):.3g}, {float(batch.max()):.3g}]."
            )
        if not batch.dtype.is_floating_point and batch.dtype != torch.uint8:
            raise TypeError(f"An image tensor must be uint8 or float, got {batch.dtype}.")
        return _in_memory([to_pil_image(x) for x in batch], "tensor")
    if isinstance(images, Image.Image):
        return _in_memory([images], "images")
    if isinstance(images, str | os.PathLike):
        return files_source([images])
    if isinstance(images, Sequence) and images:
        if all(isinstance(i, Image.Image) for i in images):
            return _in_memory(list(images), "images")
        if all(isinstance(i, str | os.PathLike) for i in images):
            return files_source(list(images))
    raise TypeError(
        "predict takes a PIL image, a path (file or folder), a list of either, or an image "
        f"tensor batch; got {type(images).__name__}."
    )


@dataclass
class Detector:
    """A fitted scorer, its network and a conformal calibration: see the module docstring.

    Build one with ``oodlens fit`` / :func:`oodlens.bench.fit_detector`, or ``oodlens bench
    --save-detectors``; :meth:`save` it, :meth:`load` it anywhere, :meth:`predict`.

    Example:
        >>> det = Detector.load("knn.oodlens")  # doctest: +SKIP
        >>> det.predict("upload.jpg").to_frame()  # doctest: +SKIP
    """

    spec: str  #: the scorer spec (its label in the benchmark's tables)
    scorer: Scorer  #: the fitted scorer
    backbone: ModelConfig  #: timm name, number of classes, class names, image size
    calib_scores: np.ndarray  #: scores of held-out in-distribution images (the calib split)
    alpha: float | None = 0.05  #: reject when the conformal p-value is at most alpha
    threshold: float | None = None  #: or: reject when the score is below this fixed value
    checkpoint_sha256: str | None = None  #: the weights' hash (None: timm's pretrained)
    #: the weights' XXH3-128 checksum, which :meth:`load` verifies (fast; the SHA-256 is
    #: computed only to name a mismatch)
    checkpoint_digest: str | None = None
    checkpoint_path: str | None = None  #: where the weights were (informational)
    weights: Mapping[str, np.ndarray] | None = None  #: the weights themselves, when embedded
    provenance: dict[str, Any] = field(default_factory=dict)  #: data, config, versions
    #: the network, ready (set by :meth:`load`, or built on first use)
    model: Any = field(default=None, repr=False, compare=False)
    forced: bool = False  #: loaded with another checkpoint than recorded (``force=True``)
    forced_sha256: str | None = None  #: the sha256 of that checkpoint

    def __post_init__(self) -> None:
        if (self.alpha is None) == (self.threshold is None):
            raise ValueError("A detector decides by alpha or by a fixed threshold: give one.")
        if self.alpha is not None:
            validate_params(
                "Detector", {"alpha": self.alpha}, {"alpha": [Interval(float, 0, 1, "neither")]}
            )
        scores = np.asarray(self.calib_scores, dtype=np.float64)
        if scores.ndim != 1 or scores.size == 0 or not np.isfinite(scores).all():
            raise ValueError("A detector needs a non-empty 1-D array of finite calib scores.")
        self.calib_scores = scores

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str], half: bool = False) -> Path:
        """Write the detector to one file, atomically (safetensors; no pickle). ``half``
        stores the scorer's large state (e.g. KNN's bank) as float16."""
        state = {
            "scorer": scorer_state(self.scorer, self.spec),
            "backbone": dataclasses.asdict(self.backbone),
            "preprocessing": self.preprocessing()[1],
            "checkpoint": {
                "sha256": self.checkpoint_sha256,
                "xxh3_128": self.checkpoint_digest,
                "path": self.checkpoint_path,
            },
            "weights": None if self.weights is None else dict(self.weights),
            "calibration": {
                "scores": self.calib_scores,
                "alpha": self.alpha,
                "threshold": self.threshold,
                "ties": "conservative",
            },
            "provenance": self.provenance,
        }
        state["backbone"]["class_names"] = tuple(self.backbone.class_names)
        half_set = half_paths(self.scorer, "state/scorer") if half else ()
        return write_state(path, "detector", _plain(state), half=half_set)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str] | None = None,
        device: str | None = None,
        force: bool = False,
    ) -> Detector:
        """Read a detector (checksums, format version, scorer and distribution checked;
        nothing from the file is executed) and build its network.

        Args:
            path: the detector file.
            checkpoint: the weights, when the file records only their hash (default: the
                path recorded when it was saved).
            device: where the network runs (default: cpu).
            force: accept a checkpoint whose hash differs from the recorded one (recorded
                in every verdict as ``forced``).

        Raises:
            ValueError: a damaged file, another checkpoint than recorded (both hashes
                named), or a missing checkpoint.
            UnknownNameError: the scorer's distribution is not installed.
        """
        state = read_state(path, "detector")
        where = f"Detector file {str(path)!r}"
        unknown = sorted(set(state) - _KEYS)
        if unknown:
            raise ValueError(f"{where} holds unknown key(s) {unknown}; upgrade oodlens.")
        scorer = scorer_from_state(state["scorer"], where)
        backbone = ModelConfig(**state["backbone"])
        recorded = state["checkpoint"]
        calib = state["calibration"]
        det = cls(
            spec=state["scorer"]["spec"],
            scorer=scorer,
            backbone=backbone,
            calib_scores=np.array(calib["scores"]),
            alpha=calib["alpha"],
            threshold=calib["threshold"],
            checkpoint_sha256=recorded["sha256"],
            checkpoint_digest=recorded["xxh3_128"],
            checkpoint_path=recorded["path"],
            weights=state["weights"],
            provenance=dict(state["provenance"]),
        )
        recorded_prep = _plain(state["preprocessing"])
        if recorded_prep != _plain(det.preprocessing()[1]):
            raise ValueError(
                f"{where} was fitted with the preprocessing {recorded_prep}, but this timm "
                f"builds {_plain(det.preprocessing()[1])} for {backbone.model!r}: its scores and "
                "calibration would not hold. Use the timm version it was made with "
                f"({det.provenance.get('versions', {}).get('timm')}), or fit it again."
            )
        det.model = det._network(where, checkpoint, force)
        det.model.eval().to(device or "cpu")
        return det

    def _network(self, where: str, checkpoint: Any, force: bool) -> torch.nn.Module:
        b = self.backbone
        if self.weights is not None:
            model, _ = create_backbone(
                b.model, num_classes=b.num_classes, img_size=b.img_size, state=self.weights
            )
            return model
        if self.checkpoint_sha256 is None:  # timm's pretrained weights (the internet)
            model, _ = create_backbone(
                b.model, num_classes=b.num_classes, pretrained=True, class_names=b.class_names
            )
            return model
        path = checkpoint if checkpoint is not None else self.checkpoint_path
        if path is None or not Path(path).is_file():
            raise FileNotFoundError(
                f"{where} needs its checkpoint (sha256 {self.checkpoint_sha256[:16]}...), "
                f"recorded at {self.checkpoint_path!r}, which is not there: pass it "
                "(--checkpoint PATH, or Detector.load(..., checkpoint=PATH))."
            )
        if file_digest(path) != self.checkpoint_digest:
            digest = file_sha256(path)
            if not force:
                raise ValueError(
                    f"{where} was fitted with the checkpoint of sha256 "
                    f"{self.checkpoint_sha256}, but {str(path)!r} has sha256 {digest}: its "
                    "scores and calibration do not hold for other weights. Give the right "
                    "checkpoint, or --force (recorded in every verdict)."
                )
            log.warning(
                "%s: using %s (sha256 %s) against its recorded weights.", where, path, digest
            )
            self.forced, self.forced_sha256 = True, digest
        self.checkpoint_path = str(path)
        model, _ = create_backbone(
            b.model,
            num_classes=b.num_classes,
            checkpoint=str(path),
            img_size=b.img_size,
            class_names=b.class_names,
        )
        return model

    # ------------------------------------------------------------------ verdicts
    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values of ``scores`` against the calibration scores (conservative)."""
        return conformal_p_values(self.calib_scores, scores)

    def decide(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(p_values, rejected)`` for scores: rejected when ``p <= alpha``, or, with a
        fixed threshold, when the score is below it."""
        p = self.p_values(scores)
        rejected = p <= self.alpha if self.alpha is not None else scores < self.threshold
        return p, np.asarray(rejected)

    def predict(
        self,
        images: Any,
        options: ExtractOptions | None = None,
        progress: bool = False,
    ) -> Verdicts:
        """Verdicts for images: a PIL image or a list of them, a path (file or folder) or a
        list of paths, a tensor batch (see :func:`image_source`), or a dataset
        (:class:`~oodlens.datasets.DatasetSource`). ``options``: the
        extraction options (device, batch size, workers, precision); the image size is the
        detector's. Model-aware scorers get the network and the images."""
        source = images if isinstance(images, DatasetSource) else image_source(images)
        return self._predict(source, options or ExtractOptions(), progress)

    def predict_stream(
        self,
        images: Any,
        options: ExtractOptions | None = None,
        chunk: int = 4096,
        progress: bool = False,
    ) -> Iterator[Verdicts]:
        """:meth:`predict` over any number of images, ``chunk`` at a time (bounded memory)."""
        source = images if isinstance(images, DatasetSource) else image_source(images)
        for start in range(0, len(source), chunk):
            index = range(start, min(start + chunk, len(source)))
            part = source.subset(index, source.spec)
            yield self._predict(part, options or ExtractOptions(), progress)

    def _predict(self, source: DatasetSource, options: ExtractOptions, progress: bool) -> Verdicts:
        options = with_stages(
            options.replace(img_size=self.backbone.img_size),
            self.backbone.model,
            [self.scorer.requirements()],
        )
        model = self.network(options.device)
        transform, data_cfg = self.preprocessing()
        dev = resolve_device(options.device)
        preprocess = resolve_preprocess(options.preprocess, dev)
        options = options.replace(decode=resolve_decode(options.decode, dev, preprocess))
        if preprocess == "device":
            transform = BatchPreprocess(transform)
        input_size = tuple(data_cfg["input_size"])
        report = ExtractionReport()
        outputs = extract_outputs(
            model, source, transform, input_size, options, progress=progress, report=report
        )
        if report.corrupt:  # skipped with skip_corrupt: the verdicts are for the others
            skipped = set(report.corrupt)
            kept = [i for i, sid in enumerate(source.ids) if sid not in skipped]
            source = source.subset(kept, source.spec)
        aware = self.scorer.requirements() >= {"model"}
        inputs = (
            model_inputs(
                model,
                source,
                transform,
                input_size,
                options,
                tuple(float(v) for v in data_cfg["std"]),
                outputs.n_samples,
            )
            if aware
            else None
        )
        scores = self.scorer.score(outputs, model=inputs)
        p, rejected = self.decide(scores)
        logits = torch.as_tensor(np.asarray(outputs.logits), dtype=torch.float64)
        probs = torch.softmax(logits, dim=1).numpy()
        names = self.backbone.class_names or tuple(str(i) for i in range(self.backbone.num_classes))
        pred = probs.argmax(1)
        return Verdicts(
            ids=list(source.ids),
            predictions=[names[k] for k in pred],
            probabilities=probs.max(1),
            scores=scores,
            p_values=p,
            rejected=rejected,
            scorer=self.spec,
            alpha=self.alpha,
            threshold=self.threshold,
            weights_sha256=self.weights_sha256,
            forced=self.forced,
        )

    def preprocessing(self) -> tuple[Any, dict[str, Any]]:
        """The network's eval transform and data config (as ``bench`` builds them)."""
        return build_transform(self.backbone.model, self.backbone.img_size)

    @property
    def weights_sha256(self) -> str | None:
        """The SHA-256 of the checkpoint the network's weights come from: the recorded one
        (also for embedded weights, which are the recorded checkpoint's), or the one of the
        checkpoint forced in."""
        return self.forced_sha256 if self.forced else self.checkpoint_sha256

    def network(self, device: str | None = None) -> torch.nn.Module:
        """The network, built from the weights on first use and moved to ``device``."""
        if self.model is None:
            self.model = self._network("This detector", None, False)
        return self.model.eval().to(device or "cpu")


def _plain(value: Any) -> Any:
    """Lists as tuples and torch tensors as numpy arrays: what a state file holds."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    return value


def embedded_weights(checkpoint: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A checkpoint's state dict as numpy arrays (bf16 as float32), to embed in a detector."""
    state, _ = load_checkpoint(checkpoint)
    return {
        k: (v.float() if v.dtype == torch.bfloat16 else v).detach().cpu().numpy()
        for k, v in state.items()
    }
