"""Built-in plugin: Grad-CAM and Integrated Gradients (imports torch and captum only when
explainers are listed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_explainers(register: Callable[..., Any]) -> None:
    from ..explainers.gradcam import GradCAM
    from ..explainers.integrated import IntegratedGradients

    register(GradCAM)
    register(IntegratedGradients)
