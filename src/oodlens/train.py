"""Train or fine-tune a timm classifier on a dataset spec (``oodlens train``)."""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .datasets import (
    CorruptImageError,
    DatasetSource,
    align_classes,
    holdout_split,
    split_spec,
)
from .errors import InvalidParameterError
from .files import check_new_or_owned_file
from .options import PRECISIONS
from .params import Boolean, InstanceOf, Interval, ListOf, Options, Text, validate_fields
from .progress import progress_bar, progress_note
from .registry import load_dataset

if TYPE_CHECKING:
    import torch

__all__ = [
    "RECIPES",
    "Recipe",
    "TrainConfig",
    "augment_batch",
    "check_checkpoint_out",
    "cosine_annealing",
    "train_model",
    "train_transform",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """A published training recipe (``oodlens train --recipe NAME``): the values of the
    source's configuration files, and where each comes from."""

    name: str
    description: str
    model: str
    img_size: int
    epochs: int
    batch_size: int
    lr: float  #: SGD learning rate at step 0
    weight_decay: float
    momentum: float
    nesterov: bool
    lr_min: float  #: the learning rate the per-step cosine schedule ends at
    pad: int  #: random crop after zero padding by this many pixels (with a random flip)
    #: the source: repository, commit and the file each setting is read from
    source: Mapping[str, str] = field(default_factory=dict)


#: The recipes ``oodlens train --recipe`` knows.
RECIPES: dict[str, Recipe] = {
    "openood_cifar": Recipe(
        name="openood_cifar",
        description="OpenOOD v1.5's CIFAR-10 baseline: openood_resnet18_32x32, 100 epochs of "
        "SGD (Nesterov, momentum 0.9, weight decay 5e-4) at lr 0.1 with a per-step cosine "
        "schedule to 1e-6, batch 128, random crop (padding 4) and horizontal flip",
        model="openood_resnet18_32x32",
        img_size=32,
        epochs=100,
        batch_size=128,
        lr=0.1,
        weight_decay=5e-4,
        momentum=0.9,
        nesterov=True,
        lr_min=1e-6,
        pad=4,
        source={
            "repository": "Jingkang50/OpenOOD",
            "commit": "3c35632",
            "optimizer, epochs, lr, momentum, weight decay": "configs/pipelines/train/baseline.yml",
            "SGD with nesterov=True, cosine schedule per step to 1e-6": (
                "openood/trainers/base_trainer.py, openood/trainers/lr_scheduler.py"
            ),
            "batch size 128, image and pre size 32": "configs/datasets/cifar10/cifar10.yml",
            "network": "configs/networks/resnet18_32x32.yml",
            "augmentation (Resize, CenterCrop, RandomHorizontalFlip, RandomCrop padding 4), "
            "CIFAR-10 normalisation": "openood/preprocessors/base_preprocessor.py, "
            "openood/preprocessors/transform.py",
        },
    ),
}


def cosine_annealing(step: int, total_steps: int, lr_max: float, lr_min: float) -> float:
    """The learning-rate multiplier of OpenOOD's schedule at ``step`` (of ``total_steps``):
    ``lr_min + (lr_max - lr_min) * (1 + cos(pi * step / total_steps)) / 2``."""
    return lr_min + (lr_max - lr_min) * 0.5 * (1 + math.cos(step / total_steps * math.pi))


def augment_batch(
    images: torch.Tensor, pad: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of images (B, C, H, W, on any device) randomly flipped left-right (odds 1/2)
    and cropped back to H x W after zero padding by ``pad`` pixels (torchvision's
    ``RandomHorizontalFlip`` and ``RandomCrop(padding=pad)``, per image, in one pass on the
    images' device). The draws come from ``generator`` (on the CPU), so a seed gives the same
    augmentations on every device. Returns the batch, the flips and the (top, left) offsets.
    """
    import torch

    b, _, h, w = images.shape
    flips = torch.rand(b, generator=generator) < 0.5
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    dev = images.device
    x = torch.where(flips.to(dev)[:, None, None, None], images.flip(3), images)
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0, None].to(dev) + torch.arange(h, device=dev)
    cols = offsets[:, 1, None].to(dev) + torch.arange(w, device=dev)
    batch = torch.arange(b, device=dev)[:, None, None]
    x = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return x.permute(0, 3, 1, 2).contiguous(), flips, offsets


@dataclass(frozen=True)
class TrainConfig:
    """How to train. The augmentations are the origin study's.

    Every field is checked against :attr:`parameter_constraints` when the config is built
    (a YAML ``train:`` block, ``oodlens train`` options or code), before any work.

    Example:
        >>> TrainConfig(epochs=-3)
        Traceback (most recent call last):
        ...
        oodlens.errors.InvalidParameterError: TrainConfig: epochs=-3 is not valid; it must be an int in [1, inf).
    """

    model: str = "resnet18"  #: timm model name
    data: str = "digits:0-4"  #: ID dataset spec; its ``@train`` split is used
    img_size: int = 32  #: input size
    epochs: int = 15  #: passes over the training split
    batch_size: int = 64  #: images per step
    lr: float = 2e-3  #: AdamW peak learning rate (cosine schedule to 0)
    weight_decay: float = 0.05  #: AdamW weight decay
    seed: int = 0  #: seeds torch, numpy and the data order
    pretrained: bool = False  #: start from timm's pretrained weights (needs the internet)
    hflip: bool = True  #: random horizontal flips (off for digits, where a flip changes meaning)
    rotation: float = 20.0  #: random rotation, degrees
    shear: float = 10.0  #: random affine shear, degrees
    crop_scale: tuple[float, float] = (0.8, 1.0)  #: random resized crop scale
    #: (val, calib) fractions of the training split held out and never trained on (see
    #: :func:`oodlens.datasets.holdout_split`); the harness uses them as its val and calib
    holdout: tuple[float, float] = (0.0, 0.0)
    #: autocast precision of the forward and backward passes: "fp32", "bf16" or "fp16" (with
    #: gradient scaling); the weights and the optimiser state stay float32
    precision: str = "fp32"
    channels_last: bool = False  #: train in channels-last memory format
    extra: dict[str, Any] = field(default_factory=dict)  #: free-form notes stored in the checkpoint
    #: "oodlens" (AdamW, the origin's augmentations) or a published recipe of
    #: :data:`RECIPES` (its optimiser, schedule and augmentation; images held on the device
    #: and augmented there in batches); build one with :meth:`from_recipe`
    recipe: str = "oodlens"

    parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "model": [Text()],
        "data": [Text()],
        "img_size": [Interval(int, 1, None)],
        "epochs": [Interval(int, 1, None)],
        "batch_size": [Interval(int, 1, None)],
        "lr": [Interval(float, 0, None, closed="neither")],
        "weight_decay": [Interval(float, 0, None)],
        "seed": [Interval(int, 0, None)],
        "pretrained": [Boolean()],
        "hflip": [Boolean()],
        "rotation": [Interval(float, 0, 180)],
        "shear": [Interval(float, 0, 90, closed="left")],
        "crop_scale": [ListOf([Interval(float, 0, 1, closed="right")], 2, 2)],
        "holdout": [ListOf([Interval(float, 0, 0.5, closed="left")], 2, 2)],
        "precision": [Options(PRECISIONS)],
        "channels_last": [Boolean()],
        "extra": [InstanceOf(Mapping, "a mapping")],
        "recipe": [Options(("oodlens", *RECIPES))],
    }

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> TrainConfig:
        """The config of a published recipe (:data:`RECIPES`): its model, input size,
        epochs, batch size, learning rate and weight decay; ``overrides`` replace fields
        (e.g. ``epochs=1`` for a quick check), recorded in the checkpoint as given.

        Example:
            >>> TrainConfig.from_recipe("openood_cifar", data="data/cifar10").batch_size
            128
        """
        if name not in RECIPES:
            raise InvalidParameterError(f"Unknown recipe {name!r}; valid: {', '.join(RECIPES)}.")
        r = RECIPES[name]
        base = {
            "model": r.model,
            "img_size": r.img_size,
            "epochs": r.epochs,
            "batch_size": r.batch_size,
            "lr": r.lr,
            "weight_decay": r.weight_decay,
            "hflip": True,
            "recipe": name,
        }
        return cls(**{**base, **overrides})

    def __post_init__(self) -> None:
        validate_fields(self)
        object.__setattr__(self, "crop_scale", tuple(self.crop_scale))
        object.__setattr__(self, "holdout", tuple(self.holdout))
        if self.crop_scale[0] > self.crop_scale[1]:
            raise InvalidParameterError(
                f"TrainConfig: crop_scale={self.crop_scale!r} is not valid; the smallest scale "
                "comes first, e.g. (0.8, 1.0)."
            )


def train_transform(cfg: TrainConfig, data_cfg: dict[str, Any]):
    """The origin's augmentations: rotation, random resized crop, flip, shear, normalisation."""
    from torchvision import transforms as T

    steps: list[Any] = [
        T.RandomRotation(cfg.rotation),
        T.RandomResizedCrop(cfg.img_size, scale=cfg.crop_scale, antialias=True),
    ]
    if cfg.hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [
        T.RandomAffine(0, shear=cfg.shear),
        T.ToTensor(),
        T.Normalize(data_cfg["mean"], data_cfg["std"]),
    ]
    return T.Compose(steps)


class _Augmented:
    """A map-style dataset of augmented training images (torch's Dataset protocol)."""

    def __init__(self, source: DatasetSource, transform) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        try:
            image = self.source.loader(i)
        except CorruptImageError as exc:
            raise CorruptImageError(
                f"unreadable training image in {self.source.spec!r}: {exc}. Remove or replace "
                "it: --skip-corrupt skips unreadable images at extraction, never in training."
            ) from exc
        return self.transform(image), int(self.source.labels[i])


def check_checkpoint_out(out: str | os.PathLike[str]) -> Path:
    """Raise before any work unless ``out`` can take a checkpoint: not a folder, not an
    existing file other than an oodlens checkpoint, in a writable folder."""
    from .backbones import read_model_config

    path = Path(out).expanduser()
    owned = None
    if path.is_file():
        try:
            owned = read_model_config(path) is not None
        except ValueError:
            owned = False
    return check_new_or_owned_file(path, "Checkpoint file (--out)", owned)


def train_model(
    cfg: TrainConfig,
    out: str | os.PathLike[str],
    device: str | torch.device | None = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Train ``cfg.model`` on ``cfg.data@train``, evaluate on ``@test``, save a checkpoint.

    Returns the checkpoint path (safetensors, whatever the suffix, with the
    :class:`ModelConfig` in its metadata) and a summary (train/test accuracy, seconds, steps).
    Test classes are matched to training classes by name. ``out`` is checked before any work
    (see :func:`check_checkpoint_out`): an existing file that is not an oodlens checkpoint is
    never overwritten. ``num_workers`` > 0 loads and augments in worker processes, each with
    its own random stream, so the augmentations (and the model) depend on the number of
    workers; the harness trains with 0 for that reason.
    """
    import torch

    from .backbones import (
        ModelConfig,
        build_transform,
        check_model_name,
        create_backbone,
        precision_autocast,
        resolve_device,
        save_checkpoint,
    )

    out = check_checkpoint_out(out)
    check_model_name(cfg.model)
    dev = resolve_device(device)
    autocast = precision_autocast(dev, cfg.precision)  # checked before any work
    torch.manual_seed(cfg.seed)
    train_src = load_dataset(split_spec(cfg.data, "train"))
    if any(cfg.holdout):
        train_src = holdout_split(train_src, *cfg.holdout)[0]
    test_src = align_classes(
        load_dataset(split_spec(cfg.data, "test")), train_src.classes, "Test split"
    )
    n_classes = len(train_src.classes)
    model, _ = create_backbone(cfg.model, num_classes=n_classes, pretrained=cfg.pretrained)
    eval_tf, data_cfg = build_transform(model, cfg.img_size)
    if cfg.recipe != "oodlens":
        model, correct, seen, steps, seconds = _train_recipe(
            cfg, model, train_src, data_cfg, dev, autocast, progress
        )
    else:
        model, correct, seen, steps, seconds = _train_oodlens(
            cfg, model, train_src, data_cfg, dev, autocast, progress, num_workers
        )
    test_acc = _accuracy(model, test_src, eval_tf, dev, cfg.batch_size)
    summary = {
        "train_accuracy_last_epoch": correct / max(1, seen),
        "test_accuracy": test_acc,
        "train_seconds": seconds,
        "steps": steps,
        "n_train": len(train_src),
        "n_test": len(test_src),
        "device": str(dev),
    }
    train = {k: v for k, v in cfg.__dict__.items()}
    if cfg.recipe != "oodlens":
        r = RECIPES[cfg.recipe]
        train["optimizer"] = {
            "name": "SGD",
            "momentum": r.momentum,
            "nesterov": r.nesterov,
            "schedule": f"cosine per step to {r.lr_min:g}",
            "augmentation": f"random flip, random crop with padding {r.pad}",
            "source": dict(r.source),
        }
    config = ModelConfig(
        model=cfg.model,
        num_classes=n_classes,
        class_names=train_src.classes,
        img_size=cfg.img_size,
        extra={
            "train": train,
            "summary": summary,
            # the normalisation the network learnt with (timm's default for the model)
            "normalization": {
                "mean": [float(v) for v in data_cfg["mean"]],
                "std": [float(v) for v in data_cfg["std"]],
            },
        },
    )
    path = save_checkpoint(model.cpu(), config, out)
    log.info("trained %s: test accuracy %.4f in %.0fs -> %s", cfg.model, test_acc, seconds, path)
    return path, summary


def _train_oodlens(cfg, model, train_src, data_cfg, dev, autocast, progress, num_workers):
    """The origin's training: AdamW, cosine schedule, augmentations in a DataLoader."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(
        _Augmented(train_src, train_transform(cfg, data_cfg)),
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=gen,
        num_workers=num_workers,
        drop_last=len(train_src) > cfg.batch_size,
        pin_memory=dev.type == "cuda",
        persistent_workers=num_workers > 0,
    )
    fmt = _to_device(model, dev, cfg.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, cfg.epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )

    batches = functools.partial(_on_device, loader, dev, fmt)
    correct, seen, seconds = _run_epochs(
        cfg,
        model,
        batches,
        (opt, sched, steps),
        dev,
        autocast,
        progress,
        t0=time.perf_counter(),
        desc=f"train {cfg.model} on {cfg.data}",
        name=f"train {cfg.model}",
        suffix=lambda secs: f" (augmented training images, {secs:.0f}s)",
    )
    # the persistent workers stop now, not whenever the loader is collected: a frame kept
    # alive after return (a first `import timm` below it leaves its callers' frames in a
    # cycle until a garbage collection) would keep them, and joining them then took 10 s
    del batches, loader
    return model, correct, seen, steps, seconds


def _on_device(loader: Any, dev: Any, fmt: Any) -> Any:
    """One epoch of a DataLoader's ``(x, y)`` batches moved to ``dev`` (x in ``fmt``)."""
    for x, y in loader:
        yield x.to(dev, non_blocking=True, memory_format=fmt), y.to(dev, non_blocking=True)


def _train_recipe(cfg, model, train_src, data_cfg, dev, autocast, progress):
    """A published recipe (:data:`RECIPES`): the training images decoded once and held on
    the device as uint8, each batch flipped, cropped and normalised there (no DataLoader),
    SGD with the recipe's momentum and Nesterov flag, the per-step cosine schedule."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    r = RECIPES[cfg.recipe]
    t0 = time.perf_counter()

    def decode(img):  # Resize, CenterCrop, as uint8
        img = TF.center_crop(TF.resize(img.convert("RGB"), cfg.img_size), cfg.img_size)
        return TF.pil_to_tensor(img)

    decoded = _Augmented(train_src, decode)
    images = [
        decoded[i][0]
        for i in progress_bar(
            range(len(train_src)), desc="load training images", unit="img", enabled=progress
        )
    ]
    data = torch.stack(images).to(dev)
    labels = torch.as_tensor(train_src.labels, dtype=torch.long).to(dev)
    mean = torch.tensor(data_cfg["mean"], device=dev).view(1, -1, 1, 1)
    std = torch.tensor(data_cfg["std"], device=dev).view(1, -1, 1, 1)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(train_src)
    per_epoch = math.ceil(n / cfg.batch_size)  # the last batch smaller, as OpenOOD's loader
    steps = cfg.epochs * per_epoch
    fmt = _to_device(model, dev, cfg.channels_last)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=r.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=r.nesterov,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: cosine_annealing(step, steps, 1.0, r.lr_min / cfg.lr)
    )

    def batches():
        order = torch.randperm(n, generator=gen)
        for k in range(per_epoch):
            idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size].to(dev)
            x, _, _ = augment_batch(data[idx], r.pad, gen)
            yield ((x.float() / 255 - mean) / std).contiguous(memory_format=fmt), labels[idx]

    name = f"train {cfg.model} ({cfg.recipe})"
    correct, seen, seconds = _run_epochs(
        cfg,
        model,
        batches,
        (opt, sched, steps),
        dev,
        autocast,
        progress,
        t0=t0,
        desc=name,
        name=name,
        suffix=lambda secs: f", lr {sched.get_last_lr()[0]:.5f} ({secs:.0f}s)",
    )
    return model, correct, seen, steps, seconds


def _to_device(model: Any, dev: Any, channels_last: bool) -> Any:
    """The model on ``dev`` in training mode and the memory format; returns the format."""
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(dev).train()
    model.to(memory_format=fmt)
    return fmt


def _run_epochs(
    cfg, model, batches, schedule, dev, autocast, progress, *, t0, desc, name, suffix
) -> tuple[int, int, float]:
    """The loop both trainings share: per step the forward pass under ``autocast``, the
    cross-entropy, a (scaled, for fp16) backward pass, the optimiser and schedule steps of
    ``schedule = (optimiser, scheduler, steps)``; a progress bar ``desc`` over the steps and
    one line per epoch (``name``, loss, accuracy, then ``suffix(seconds since t0)``).
    ``batches()`` gives one epoch's ``(x, y)`` on ``dev``. Returns the last epoch's correct
    and seen counts and the seconds since ``t0``; the model is left in eval mode,
    contiguous."""
    import torch
    from torch import nn

    opt, sched, steps = schedule
    scaler = torch.amp.GradScaler(dev.type, enabled=cfg.precision == "fp16")
    loss_fn = nn.CrossEntropyLoss()
    bar = progress_bar(total=steps, desc=desc, unit="step", enabled=progress)
    correct = seen = 0
    for epoch in range(cfg.epochs):
        correct = seen = 0
        total_loss = 0.0
        for x, y in batches():
            with autocast:
                logits = model(x)
                loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            total_loss += float(loss.item()) * len(y)
            bar.set_postfix_str(f"loss {loss.item():.3f}", refresh=False)
            bar.update(1)
        progress_note(
            f"{name} epoch {epoch + 1}/{cfg.epochs}: loss {total_loss / max(1, seen):.4f}, "
            f"accuracy {correct / max(1, seen):.4f}" + suffix(time.perf_counter() - t0),
            progress,
        )
    bar.close()
    seconds = time.perf_counter() - t0
    model.eval().to(memory_format=torch.contiguous_format)
    return correct, seen, seconds


def _accuracy(
    model: Any, source: DatasetSource, transform: Any, device: torch.device, batch_size: int
) -> float:
    import torch

    correct = 0
    with torch.inference_mode():
        for start in range(0, len(source), batch_size):
            idx = range(start, min(len(source), start + batch_size))
            x = torch.stack([transform(source.loader(i)) for i in idx]).to(device)
            correct += int((model(x).argmax(1).cpu().numpy() == source.labels[list(idx)]).sum())
    return correct / max(1, len(source))
