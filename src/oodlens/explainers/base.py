"""The :class:`Explainer` interface and the :class:`Explanation` record (no torch import)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..params import Constraint, validate_params
from .attention import attention_area, minmax_normalize

__all__ = ["Explainer", "Explanation"]


class Explainer:
    """Base class of explainers: constructed with what is fixed (the model, a layer,
    options); one verb, :meth:`explain`.

    Class attributes:
        name: registry name (e.g. ``"gradcam"``).
        description: one line for listings.
        parameter_constraints: ``{parameter: [constraints]}`` (see :mod:`oodlens.params`),
            checked by :func:`oodlens.create_explainer` before the explainer is built.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    parameter_constraints: ClassVar[Mapping[str, Sequence[Constraint | None]]] = {}

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        """Validate ``params`` against ``parameter_constraints``.

        Raises:
            InvalidParameterError: naming the parameter, its value and the valid range.
        """
        validate_params(cls.__name__, params, cls.parameter_constraints)

    def explain(self, images: Any, target: Any = None) -> Any:
        """(N, H, W) maps in [0, 1] for (N, C, H, W) ``images`` (a torch tensor)."""
        raise NotImplementedError


@dataclass
class Explanation:
    """Saliency maps and predictions for a set of images."""

    ids: list[str]  #: image ids (paths)
    images: np.ndarray  #: (N, H, W, 3) uint8 images as the model saw them (resized)
    cams: np.ndarray  #: (N, H, W) maps in [0, 1]
    raw_cams: np.ndarray  #: (N, H, W) the same before min-max scaling (non-negative)
    predictions: np.ndarray  #: (N,) predicted class
    softmax: np.ndarray  #: (N,) max softmax probability
    class_names: tuple[str, ...]  #: names of the model's classes
    scores: dict[str, np.ndarray]  #: scorer name -> (N,) score
    #: scorer name -> (N,) bool, accepted at the operating threshold chosen on held-out ID
    #: data (shown beside the score, so a reader need not know what a score of 0.07 means)
    verdicts: dict[str, np.ndarray] = field(default_factory=dict)
    #: scorer name -> (N, H, W) map of that scorer's score (raw: before any scaling; by
    #: default positive where the image looks foreign), when the score was explained
    score_maps: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def area(self) -> np.ndarray:
        """(N,) attention area at threshold 0.5."""
        return attention_area(self.cams, 0.5)

    @property
    def score_areas(self) -> dict[str, np.ndarray]:
        """Scorer name -> (N,) attention area at 0.5 of its score map (its positive part,
        min-max normalised): the origin's attention measure, asked of the score."""
        return {
            name: attention_area(minmax_normalize(np.maximum(m, 0.0)), 0.5)
            for name, m in self.score_maps.items()
        }
