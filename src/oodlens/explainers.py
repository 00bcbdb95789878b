"""The :class:`Explainer` interface: saliency maps for a fixed model."""

from __future__ import annotations

from typing import ClassVar

__all__ = ["Explainer"]


class Explainer:
    """Base class of explainers: constructed with what is fixed (the model, a layer,
    options), one verb :meth:`explain`.

    Class attributes:
        name: registry name (e.g. ``"gradcam"``).
        description: one line for ``oodlens explainers``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def explain(self, images, target=None):  # noqa: ANN001, ANN201 - typed in subclasses
        """Return (N, H, W) maps in [0, 1] for (N, C, H, W) ``images``."""
        raise NotImplementedError
