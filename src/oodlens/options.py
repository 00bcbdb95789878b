"""The values of the extraction options shared by the configuration, the CLI and the
backbones, in one torch-free place (``import oodlens`` stays light)."""

from __future__ import annotations

__all__ = ["PRECISIONS", "PREPROCESS_MODES"]

#: Autocast precisions of the forward pass (extraction) and of training.
PRECISIONS = ("fp32", "bf16", "fp16")

#: Where images are resized and normalised: per image with PIL on the DataLoader workers
#: ("pil"), or in batches on the extraction device ("device"); "auto" is "device" on CUDA.
PREPROCESS_MODES = ("auto", "pil", "device")
