"""OpenOOD's reference networks as timm models, so OpenOOD's released checkpoints load and
run through the same harness (``--model openood_resnet18_32x32 --checkpoint s0/best.ckpt``).

``openood_resnet18_32x32`` is OpenOOD's CIFAR-style ResNet-18 (``ResNet18_32x32``): a 3x3
stride-1 stem with no max-pool, four stages of two basic blocks, global average pooling and a
linear head, for 32 px inputs normalised with CIFAR-10's mean and std. It is timm's ResNet
with that stem, so every timm path (features, head, Grad-CAM layers) works; checkpoints
saved by OpenOOD (their ``shortcut.*`` key names) are renamed on load by
:func:`adapt_state_dict`. For ImageNet, OpenOOD uses torchvision's ResNet-50 V1 weights,
which timm ships as ``resnet50.tv_in1k``: no extra model is needed.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

__all__ = ["openood_resnet18_32x32", "adapt_state_dict", "OPENOOD_MODELS"]

#: timm pretrained configs (preprocessing only: OpenOOD's weights are not on timm's hub).
default_cfgs = {
    "openood_resnet18_32x32": {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
        "first_conv": "conv1",
        "classifier": "fc",
    }
}

OPENOOD_MODELS = ("openood_resnet18_32x32",)


@register_model
def openood_resnet18_32x32(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """OpenOOD's CIFAR ResNet-18 (``ResNet18_32x32``) as a timm ResNet."""
    if pretrained:
        raise ValueError(
            "openood_resnet18_32x32 has no weights on timm's hub: download an OpenOOD "
            "checkpoint (e.g. its cifar10_resnet18_32x32 release) and pass --checkpoint FILE."
        )
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's, not ResNet's
        kwargs.pop(key, None)
    model = ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.pretrained_cfg = dict(default_cfgs["openood_resnet18_32x32"])
    model.default_cfg = model.pretrained_cfg
    return model


def adapt_state_dict(model_name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict with OpenOOD's key names mapped to the timm model's
    (``layerX.Y.shortcut.{0,1}`` -> ``layerX.Y.downsample.{0,1}``); other models and
    checkpoints already in timm's names are returned unchanged."""
    if model_name not in OPENOOD_MODELS or not any(".shortcut." in k for k in state):
        return state
    return {k.replace(".shortcut.", ".downsample."): v for k, v in state.items()}
