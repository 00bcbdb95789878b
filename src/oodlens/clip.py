"""CLIP zero-shot classifiers as a backbone kind: ``clip:ARCH`` (any open_clip
architecture) with ``clip:ARCH:TAG`` for open_clip's pretrained weights, or a local weights
file (``--checkpoint``). The head is built from the ID class names and prompt templates:
logits = the model's logit scale x the cosine similarity between the image embedding and
each class's text embedding; the features are the unit image embeddings. The classifier
has timm's API (``forward_features`` / ``forward_head`` / ``get_classifier``), so the
extraction, the cache and every scorer take it as any backbone.

open_clip (``pip install 'oodlens[clip]'``) is imported when a CLIP model is built.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "CLIP_PREFIX",
    "DEFAULT_TEMPLATES",
    "ZeroShotClassifier",
    "is_clip",
    "parse_clip_name",
    "clip_data_config",
    "create_zero_shot",
    "zero_shot_weights_id",
]

log = logging.getLogger(__name__)

#: The prefix of a CLIP model name: ``clip:ARCH`` or ``clip:ARCH:TAG``.
CLIP_PREFIX = "clip:"

#: The prompt of the MCM paper (and CLIP's basic one); a class name fills ``{}``.
DEFAULT_TEMPLATES = ("a photo of a {}.",)

#: open_clip configurations shipped with oodlens (``oodlens-tiny-clip``: a 2-layer ViT and
#: text encoder on 32 px images, for tests with random weights).
_CONFIGS = Path(__file__).resolve().parent / "clip_configs"


def is_clip(name: str) -> bool:
    """Whether ``name`` names a CLIP model (``clip:ARCH[:TAG]``)."""
    return isinstance(name, str) and name.startswith(CLIP_PREFIX)


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise ImportError(
            "CLIP models need open_clip: pip install 'oodlens[clip]' (open_clip_torch)."
        ) from None
    if "oodlens-tiny-clip" not in open_clip.list_models():
        open_clip.add_model_config(_CONFIGS)
    return open_clip


def parse_clip_name(name: str) -> tuple[str, str | None]:
    """``(architecture, pretrained tag or None)`` of ``clip:ARCH[:TAG]``.

    Raises:
        ValueError: not a CLIP name, or an architecture open_clip does not have (with
            close matches), or a tag it does not list for it.
    """
    if not is_clip(name):
        raise ValueError(f"{name!r} is not a CLIP model name (clip:ARCH or clip:ARCH:TAG).")
    arch, _, tag = name[len(CLIP_PREFIX) :].partition(":")
    open_clip = _open_clip()
    if arch not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
        raise ValueError(
            f"Unknown open_clip architecture {arch!r} in {name!r}."
            + (f" Did you mean: {', '.join(close)}?" if close else " See open_clip.list_models().")
        )
    if tag and tag not in open_clip.list_pretrained_tags_by_model(arch):
        raise ValueError(
            f"open_clip has no pretrained tag {tag!r} for {arch}; it has "
            f"{open_clip.list_pretrained_tags_by_model(arch) or 'none'}."
        )
    return arch, tag or None


def clip_data_config(name: str) -> dict[str, Any]:
    """The eval preprocessing of a CLIP model as a timm data config (CLIP's: bicubic resize
    of the short side to the model's size, centre crop, CLIP's mean and std), without
    building the model."""
    arch, tag = parse_clip_name(name)
    open_clip = _open_clip()
    size = open_clip.get_model_config(arch)["vision_cfg"]["image_size"]
    size = size if isinstance(size, int) else size[0]
    pretrained = (open_clip.get_pretrained_cfg(arch, tag) if tag else None) or {}
    from open_clip import constants

    return {
        "input_size": (3, size, size),
        "interpolation": "bicubic",
        "mean": tuple(pretrained.get("mean") or constants.OPENAI_DATASET_MEAN),
        "std": tuple(pretrained.get("std") or constants.OPENAI_DATASET_STD),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }


class ZeroShotClassifier(nn.Module):
    """A CLIP model as a classifier of fixed classes, with timm's API.

    ``forward_features(x)``: the image embeddings; ``forward_head(f, pre_logits=True)``: the
    unit embeddings (the penultimate features); ``get_classifier()``: a linear layer whose
    rows are the logit scale x the unit text embeddings of the classes (each the normalised
    mean of its prompts' unit embeddings), without bias.

    Args:
        clip: an open_clip model.
        tokenizer: its tokenizer.
        class_names: the ID classes, in label order.
        templates: prompt templates, each with one ``{}`` for the class name.
        data_config: its preprocessing (:func:`clip_data_config`), as ``pretrained_cfg``.
    """

    #: what zero-shot scorers (``mcm``) check in ``applies_to``
    is_zero_shot = True

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Any,
        class_names: Sequence[str],
        templates: Sequence[str],
        data_config: dict[str, Any],
    ) -> None:
        super().__init__()
        if not class_names:
            raise ValueError("A zero-shot classifier needs the class names of the ID set.")
        bad = [t for t in templates if t.count("{}") != 1]
        if not templates or bad:
            raise ValueError(
                f"Prompt templates must each hold one '{{}}' for the class name; got {bad or '[]'}."
            )
        self.clip = clip
        self.class_names, self.templates = tuple(class_names), tuple(templates)
        self.pretrained_cfg = dict(data_config)
        self.num_classes = len(self.class_names)
        with torch.no_grad():
            weight = self._text_weight(tokenizer)
        self.head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device)
        with torch.no_grad():
            self.head.weight.copy_(weight)

    def _text_weight(self, tokenizer: Any) -> torch.Tensor:
        device = next(self.clip.parameters()).device
        rows = []
        for name in self.class_names:
            tokens = tokenizer([t.format(name) for t in self.templates]).to(device)
            emb = F.normalize(self.clip.encode_text(tokens).float(), dim=-1).mean(0)
            rows.append(F.normalize(emb, dim=0))
        return self.clip.logit_scale.exp().float() * torch.stack(rows)

    @property
    def has_local_features(self) -> bool:
        """Whether :meth:`local_features` is defined: a ViT image encoder whose patch
        tokens come out after its final norm (open_clip's usual CLIP layout)."""
        visual = self.clip.visual
        return (
            hasattr(visual, "output_tokens")
            and getattr(visual, "attn_pool", None) is None
            and not getattr(visual, "final_ln_after_pool", False)
        )

    def local_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P, D) unit patch embeddings in the joint image-text space: the patch tokens
        after the encoder's final norm, through its projection (GL-MCM's local features).

        Raises:
            ValueError: an image encoder without them (see :attr:`has_local_features`).
        """
        if not self.has_local_features:
            raise ValueError("This CLIP image encoder gives no patch embeddings (not a ViT).")
        visual = self.clip.visual
        was = visual.output_tokens
        visual.output_tokens = True
        try:
            _, tokens = visual(x)
        finally:
            visual.output_tokens = was
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        return F.normalize(tokens.float(), dim=-1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        f = F.normalize(x.float(), dim=-1)
        return f if pre_logits else self.head(f)

    def get_classifier(self) -> nn.Linear:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def create_zero_shot(
    name: str,
    class_names: Sequence[str],
    checkpoint: str | os.PathLike[str] | None = None,
    pretrained: bool = True,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    seed: int = 0,
    device: str = "cpu",
) -> ZeroShotClassifier:
    """A :class:`ZeroShotClassifier` of ``clip:ARCH[:TAG]`` for ``class_names``.

    The weights: the local file ``checkpoint`` (an open_clip state dict), else open_clip's
    pretrained ``TAG`` (downloaded once into its cache; needs the internet), else, with
    neither, random weights drawn with ``seed`` (for tests: a warning says so). On
    ``device="meta"`` the architecture only, without weights (what ``applies_to`` reads).

    Raises:
        ValueError: a bad name, a tag with a checkpoint, a missing checkpoint file.
    """
    arch, tag = parse_clip_name(name)
    if checkpoint is not None and tag is not None:
        raise ValueError(f"Give {name!r} either a pretrained tag or --checkpoint, not both.")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ValueError(f"CLIP weights file {str(checkpoint)!r} does not exist.")
    open_clip = _open_clip()
    weights = str(checkpoint) if checkpoint is not None else (tag if pretrained else None)
    if device == "meta":
        weights = None
    elif weights is None:
        log.warning(
            "%s: no pretrained tag and no --checkpoint: random weights (seed %d), meaningful "
            "for tests only; give clip:%s:TAG (open_clip.list_pretrained_tags_by_model).",
            name,
            seed,
            arch,
        )
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        clip = open_clip.create_model(arch, pretrained=weights, device=device)
    clip.eval()
    model = ZeroShotClassifier(
        clip, open_clip.get_tokenizer(arch), class_names, templates, clip_data_config(name)
    )
    return model.eval()


def zero_shot_weights_id(
    name: str, checkpoint: str | os.PathLike[str] | None, model: ZeroShotClassifier
) -> str:
    """What identifies a zero-shot classifier's outputs in the cache: its weights (file
    hash, pretrained tag, or random seed) and its head (a hash of the class text
    embeddings, which the class names and templates determine)."""
    from .cache import file_sha256

    _, tag = parse_clip_name(name)
    weights = f"file:{file_sha256(checkpoint)}" if checkpoint else f"tag:{tag or 'random'}"
    digest = hashlib.sha256(model.head.weight.detach().cpu().numpy().tobytes()).hexdigest()
    return f"{weights}|head:{digest[:16]}"
