"""Explainers: saliency maps for a fixed model, of a class or of an OOD score. The built-in
ones are Grad-CAM and Integrated Gradients via captum.

``Explainer``, ``Explanation`` and the attention measures import no torch; ``GradCAM``,
``IntegratedGradients``, ``ScoreTarget`` and ``resolve_target_layer`` load torch and captum
on first use. Create registered explainers
with :func:`oodlens.create_explainer`.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import moved_names
from .attention import attention_area, attention_area_mass, minmax_normalize
from .base import Explainer, Explanation

__all__ = [
    "Explainer",
    "Explanation",
    "GradCAM",
    "IntegratedGradients",
    "ScoreTarget",
    "attention_area",
    "attention_area_mass",
    "minmax_normalize",
    "resolve_target_layer",
]

_LAZY = {
    "GradCAM": ".gradcam",
    "ScoreTarget": ".gradcam",
    "resolve_target_layer": ".gradcam",
    "IntegratedGradients": ".integrated",
}
_moved = moved_names(__name__, {"list_explainers": "oodlens", "create_explainer": "oodlens"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    return _moved(name)
