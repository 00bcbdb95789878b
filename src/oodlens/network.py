"""The few facts about a timm network that several layers need (explainers, extraction):
one forward pass giving the logits and the penultimate features, and the linear head."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["forward_all", "get_head"]


def get_head(model: nn.Module) -> nn.Linear | None:
    """The final linear classifier (timm's ``get_classifier``) when it is an ``nn.Linear``."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return head if isinstance(head, nn.Linear) else None


def forward_all(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, penultimate features) from one forward pass of a timm model."""
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    head = model.get_classifier()
    logits = head(feats)
    if logits.ndim > 2:
        logits = logits.flatten(1)
    return logits, feats.flatten(1)
