"""Explainers: saliency maps for a fixed model. The built-in one is Grad-CAM via captum.

``Explainer``, ``Explanation`` and the attention measures import no torch; ``GradCAM`` and
``resolve_target_layer`` load torch and captum on first use. Create registered explainers
with :func:`oodlens.create_explainer`.
"""

from __future__ import annotations

import importlib
from typing import Any

from .attention import attention_area, attention_area_mass
from .base import Explainer, Explanation

__all__ = [
    "Explainer",
    "Explanation",
    "GradCAM",
    "attention_area",
    "attention_area_mass",
    "minmax_normalize",
    "resolve_target_layer",
]

_LAZY = {"GradCAM", "resolve_target_layer", "minmax_normalize"}
_MOVED = {
    "list_explainers": "oodlens.list_explainers",
    "create_explainer": "oodlens.create_explainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(".gradcam", __name__), name)
    if name in _MOVED:
        # ImportError (not AttributeError), so that `from oodlens.explainers import ...` shows it
        raise ImportError(f"oodlens.explainers.{name} moved: use {_MOVED[name]}.")
    raise AttributeError(f"module 'oodlens.explainers' has no attribute {name!r}")
