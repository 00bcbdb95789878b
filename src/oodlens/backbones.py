"""timm backbones: creation, safe checkpoint loading (detected by content), and preprocessing."""

from __future__ import annotations

import json
import os
import struct
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .distributed import local_rank
from .errors import InvalidParameterError, moved_names
from .files import atomic_path
from .network import forward_all, get_head, stage_modules
from .options import DECODE_MODES, PRECISIONS, PREPROCESS_MODES, ExtractOptions
from .params import InstanceOf, Interval, ListOf, Text, validate_fields

__all__ = [
    "ModelConfig",
    "check_model_name",
    "backbone_stages",
    "meta_network",
    "with_stages",
    "create_backbone",
    "forward_all",
    "get_head",
    "is_safetensors",
    "load_checkpoint",
    "read_model_config",
    "save_checkpoint",
    "build_transform",
    "BatchPreprocess",
    "BatchNormalize",
    "PREPROCESS_MODES",
    "PRECISIONS",
    "precision_autocast",
    "resolve_preprocess",
    "resolve_decode",
    "resolve_device",
    "check_img_size",
    "check_normalization",
]

__getattr__ = moved_names(
    __name__, {"extract_outputs": "oodlens.extract", "ExtractionReport": "oodlens.extract"}
)


@dataclass(frozen=True)
class ModelConfig:
    """What is needed to rebuild a trained model (stored inside oodlens checkpoints); every
    field is checked when it is built, so a checkpoint whose stored config has a field of
    the wrong type is refused with a message naming it."""

    model: str  #: timm model name
    num_classes: int  #: number of output classes
    class_names: tuple[str, ...] = ()  #: class names, index = label
    img_size: int | None = None  #: input size the model was trained at (None: timm default)
    extra: dict[str, Any] = field(
        default_factory=dict
    )  #: training details (spec, epochs, seed, ...)

    parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "model": [Text()],
        "num_classes": [Interval(int, 1, None)],
        "class_names": [ListOf([InstanceOf(str, "a string")])],
        "img_size": [Interval(int, 1, None), None],
        "extra": [InstanceOf(Mapping, "a mapping")],
    }

    def __post_init__(self) -> None:
        validate_fields(self)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.class_names and len(self.class_names) != self.num_classes:
            raise InvalidParameterError(
                f"ModelConfig: {len(self.class_names)} class_names for num_classes="
                f"{self.num_classes}."
            )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" picks cuda, then mps, then cpu; an unavailable device is an error.
    Under ``torchrun``, a bare ``cuda`` means this rank's ``cuda:LOCAL_RANK``."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} was asked for but CUDA is not available here; use --device cpu."
        )
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", local_rank())
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError(
            f"device {str(device)!r} was asked for but MPS is not available here; use --device cpu."
        )
    return dev


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a safetensors file, judged by its content (an 8-byte header length
    that fits the file, then a JSON object), whatever its suffix."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    if path.is_dir():
        raise IsADirectoryError(f"Checkpoint {str(path)!r} is a folder, not a checkpoint file.")
    if is_safetensors(path):
        from safetensors.torch import load_file

        config = _safetensors_config(path)
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise ValueError(
                f"Checkpoint {str(path)!r} is not a readable safetensors file ({exc})."
            ) from exc
        return state, config
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"Checkpoint {str(path)!r} is not a safetensors file (judged by its content) and "
            f"could not be loaded safely with torch.load(weights_only=True) ({exc}). oodlens "
            "never unpickles arbitrary objects: save a plain state_dict or a safetensors file."
        ) from exc
    config = None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        config = obj.get("oodlens_config")
        if isinstance(config, str):
            try:
                config = json.loads(config)
            except ValueError as exc:
                raise ValueError(
                    f"Checkpoint {str(path)!r} stores an oodlens_config that is not JSON ({exc})."
                ) from None
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"Checkpoint {str(path)!r} does not hold a state_dict (a mapping of names to tensors)."
        )
    return obj, config


def _safetensors_config(path: Path) -> dict[str, Any] | None:
    """The oodlens config in a ``.safetensors`` header, or ``None``; reads no tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:
        raise ValueError(
            f"Checkpoint {str(path)!r} is not a readable safetensors file ({exc})."
        ) from exc
    if "oodlens_config" not in meta:
        return None
    try:
        return json.loads(meta["oodlens_config"])
    except ValueError as exc:
        raise ValueError(
            f"Checkpoint {str(path)!r} stores an oodlens_config that is not JSON ({exc})."
        ) from None


def _model_config(config: Any, path: Path) -> ModelConfig | None:
    """The :class:`ModelConfig` a checkpoint stores, or an error naming the checkpoint and
    what is wrong with it."""
    if config is None:
        return None
    problem = f"Checkpoint {str(path)!r} stores an oodlens_config that is not valid"
    if not isinstance(config, Mapping):
        raise ValueError(f"{problem}: it is not a mapping ({type(config).__name__}).")
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(config) - known)
    if unknown or "model" not in config or "num_classes" not in config:
        raise ValueError(
            f"{problem}: it needs model and num_classes"
            + (f"; unknown key(s) {unknown}" if unknown else "")
            + "."
        )
    try:
        return ModelConfig(**config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{problem}: {exc}") from None


def read_model_config(path: str | os.PathLike[str]) -> ModelConfig | None:
    """The :class:`ModelConfig` stored in an oodlens safetensors checkpoint (any suffix), read
    from its header only (no tensors loaded); ``None`` for other checkpoints."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    if not is_safetensors(path):
        return None
    return _model_config(_safetensors_config(path), path)


def check_img_size(
    img_size: int | None, stored: ModelConfig | None, checkpoint: Any, override: bool = False
) -> None:
    """Refuse an input size that contradicts the one a checkpoint records (``img_size``
    None: the model's timm default), unless ``override``: the network would see images at
    a size it was not trained at, and give a worse table with no error."""
    if override or stored is None or stored.img_size is None or img_size == stored.img_size:
        return
    given = "the model's default size" if img_size is None else f"{img_size} px"
    raise ValueError(
        f"--img-size asks for {given} but checkpoint {str(checkpoint)!r} was trained at "
        f"{stored.img_size} px: leave --img-size out (the checkpoint's size is the default) "
        f"or add --override-checkpoint to run at {given} anyway."
    )


def check_normalization(
    stored: ModelConfig | None, data_cfg: Mapping[str, Any], checkpoint: Any
) -> None:
    """Refuse a normalisation other than the one an oodlens checkpoint recorded at training
    (timm's default for the model: a timm version whose default changed would feed the
    network differently scaled images, and give a worse table with no error)."""
    recorded = stored.extra.get("normalization") if stored is not None else None
    if not isinstance(recorded, Mapping):
        return
    for key in ("mean", "std"):
        want = [float(v) for v in recorded.get(key, ())]
        have = [float(v) for v in data_cfg[key]]
        if want and not np.allclose(want, have, rtol=0, atol=1e-6):
            raise ValueError(
                f"Checkpoint {str(checkpoint)!r} was trained with normalisation {key} {want}, "
                f"but this timm's config for {stored.model!r} gives {have}: install the timm "
                f"version it was trained with (recorded in the checkpoint's header), or retrain."
            )


def load_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], ModelConfig | None]:
    """Read a checkpoint safely: ``.safetensors`` or ``torch.load(weights_only=True)``.

    Returns the state dict and, for checkpoints written by ``oodlens train``, its config.
    """
    state, config = _read_checkpoint(Path(path))
    return state, _model_config(config, Path(path))


def save_checkpoint(model: nn.Module, config: ModelConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s weights and ``config`` in the safetensors format (whatever the
    suffix), atomically: a failure or Ctrl-C leaves neither a partial file nor a temp file."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"oodlens_config": json.dumps(asdict(config))})
    return path


def check_model_name(name: str) -> None:
    """Raise ``ValueError`` (with close matches) unless ``name`` is a timm model name (or one
    of OpenOOD's reference networks, registered with timm by :mod:`oodlens.openood_models`)."""
    import timm

    from . import openood_models  # noqa: F401  (registers OpenOOD's networks with timm)
    from .clip import is_clip, parse_clip_name

    if is_clip(name):
        parse_clip_name(name)
        return
    if not isinstance(name, str) or not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(str(name), timm.list_models(), n=3)
        raise ValueError(
            f"Unknown timm model {name!r}."
            + (f" Did you mean: {', '.join(close)}?" if close else " See timm.list_models().")
        )


def meta_network(name: str) -> nn.Module:
    """The timm architecture ``name`` built on the meta device: its modules and attributes
    without weights or memory (milliseconds), to read what it is made of.

    Raises:
        ValueError: an unknown name.
    """
    import timm

    from .clip import create_zero_shot, is_clip

    check_model_name(name)
    if is_clip(name):
        return create_zero_shot(name, ("class",), pretrained=False, device="meta")
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


def backbone_stages(name: str) -> list[str]:
    """The modules of a timm architecture's stages (``feature_info``; see
    :func:`oodlens.network.stage_modules`), read from its :func:`meta_network`.

    Raises:
        ValueError: an unknown name, or an architecture that does not name its stages.
    """
    return stage_modules(meta_network(name))


def with_stages(
    options: ExtractOptions,
    model_name: str,
    requirements: Iterable[Iterable[str]],
) -> ExtractOptions:
    """``options`` with the stages the scorers' ``requirements`` name added to ``stages``
    and ``gram_stages`` (``"stage2"``, ``"gram3"``; ``"stages"`` / ``"grams"``: every
    stage of ``model_name``); the stages checked against the backbone's.

    Raises:
        ValueError: a stage the backbone does not have, naming its stages.
    """
    from .scorers.base import block_requirement

    wanted: dict[str, set[int]] = {"stage": set(options.stages), "gram": set(options.gram_stages)}
    every: set[str] = set()
    for requires in requirements:
        for req in requires:
            block = block_requirement(req)
            if block is not None and block[1] is None:
                every.add(block[0])
            elif block is not None:
                wanted[block[0]].add(block[1])
    if not (every or wanted["stage"] or wanted["gram"]):
        return options
    names = backbone_stages(model_name)
    for kind in every:
        wanted[kind] |= set(range(len(names)))
    beyond = sorted(i for i in wanted["stage"] | wanted["gram"] if i >= len(names))
    if beyond:
        listed = ", ".join(f"{i}: {m}" for i, m in enumerate(names))
        raise ValueError(
            f"{model_name} has no stage {beyond[0]}: its stages (timm's feature_info) are "
            f"{listed}. Give stages between 0 and {len(names) - 1} (--stages, or the scorer's "
            "stages parameter)."
        )
    return options.replace(stages=tuple(wanted["stage"]), gram_stages=tuple(wanted["gram"]))


def create_backbone(
    name: str,
    num_classes: int | None = None,
    pretrained: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    img_size: int | None = None,
    state: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[nn.Module, ModelConfig]:
    """Create a timm model, optionally with weights from a local checkpoint.

    Args:
        name: any ``timm.list_models()`` name, e.g. ``"resnet18"``; or ``clip:ARCH[:TAG]``,
            a CLIP zero-shot classifier of ``class_names`` (:mod:`oodlens.clip`; its weights
            from ``checkpoint``, the tag with ``pretrained``, else random; ``img_size`` and
            ``num_classes`` do not apply).
        num_classes: output classes; taken from the checkpoint when omitted.
        pretrained: timm's pretrained weights (needs the internet).
        checkpoint: a ``.safetensors`` file or a ``torch.save`` state dict.
        img_size: input size (also from an oodlens checkpoint when omitted).
        state: the weights themselves instead of ``checkpoint`` (a state dict of tensors
            or numpy arrays, e.g. embedded in a saved detector).
        class_names: the classes of a CLIP zero-shot classifier.

    Raises:
        ValueError: unknown model name, or a checkpoint that does not fit the model (its
            number of classes or its keys), naming what differs.
    """
    import timm

    check_model_name(name)
    from .clip import create_zero_shot, is_clip
    from .openood_models import adapt_state_dict

    if is_clip(name):
        if state is not None:
            raise ValueError("A CLIP model's weights come from its tag or a file, not state=.")
        model = create_zero_shot(name, class_names or (), checkpoint, pretrained=pretrained)
        size = model.pretrained_cfg["input_size"][-1]
        return model, ModelConfig(name, model.num_classes, model.class_names, size)

    config = None
    if state is not None:
        state = {
            k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v))
            for k, v in state.items()
        }
        checkpoint = "the given weights"
    elif checkpoint is not None:
        state, config = load_checkpoint(checkpoint)
    if state is not None:
        state = adapt_state_dict(name, state)
    if config is not None and config.model != name:
        raise ValueError(
            f"Checkpoint {str(checkpoint)!r} was trained as {config.model!r}, not {name!r}; pass --model {config.model}."
        )
    if num_classes is None:
        num_classes = (
            config.num_classes
            if config is not None
            else _head_classes(state)
            if state is not None
            else None
        )
    if num_classes is None:
        raise ValueError("num_classes is needed when there is no checkpoint to take it from.")
    if img_size is None and config is not None:
        img_size = config.img_size
    kwargs: dict[str, Any] = {
        "pretrained": pretrained and checkpoint is None,
        "num_classes": num_classes,
    }
    if state is None:
        model = timm.create_model(name, **kwargs)
    else:
        # weights come from the checkpoint: build on the meta device (no random init) and
        # take the checkpoint's tensors; fall back to a normal build if any tensor is left
        # without data (e.g. a non-persistent buffer)
        with torch.device("meta"):
            model = timm.create_model(name, **kwargs)
        _load_state(model, state, checkpoint, num_classes, assign=True)
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            model = timm.create_model(name, **kwargs)
            _load_state(model, state, checkpoint, num_classes)
    if config is None:
        config = ModelConfig(model=name, num_classes=num_classes, img_size=img_size)
    elif img_size != config.img_size:
        config = ModelConfig(
            config.model, config.num_classes, config.class_names, img_size, config.extra
        )
    if config.class_names and len(config.class_names) != num_classes:
        raise ValueError(
            f"Checkpoint config lists {len(config.class_names)} class names for {num_classes} classes."
        )
    model.eval()
    return model, config


def _head_classes(state: dict[str, torch.Tensor]) -> int | None:
    for key in (
        "fc.weight",
        "head.weight",
        "head.fc.weight",
        "classifier.weight",
        "last_linear.weight",
    ):
        if key in state and state[key].ndim == 2:
            return int(state[key].shape[0])
    return None


def _load_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    checkpoint: Any,
    num_classes: int,
    assign: bool = False,
) -> None:
    own = model.state_dict()
    # a half-precision checkpoint (fp16, bf16) loads into the model's own precision: with
    # assign=True its tensors would replace the float32 parameters as they are
    state = {
        k: v.to(own[k].dtype)
        if k in own and v.is_floating_point() and own[k].is_floating_point()
        else v
        for k, v in state.items()
    }
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shape:
        ck = _head_classes(state)
        parts = []
        if ck is not None and ck != num_classes:
            parts.append(
                f"it has {ck} classes but the model was built with {num_classes} (omit num_classes to take the checkpoint's)"
            )
        if shape:
            parts.append(
                "shape mismatch for "
                + ", ".join(
                    f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shape[:3]
                )
            )
        if missing:
            parts.append(f"{len(missing)} missing key(s) such as {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) such as {unexpected[:3]}")
        raise ValueError(
            f"Checkpoint {str(checkpoint)!r} does not fit this model: "
            + "; ".join(parts)
            + ". Is it from another architecture?"
        )
    model.load_state_dict(state, assign=assign)


def build_transform(
    model: nn.Module | str, img_size: int | None = None
) -> tuple[Callable[[Any], torch.Tensor], dict[str, Any]]:
    """Eval preprocessing from the model's timm data config; ``img_size`` overrides the size
    (with crop_pct 1.0, so small images are resized, not cropped). Returns (transform, config).

    ``model`` may be a timm model name: the config then comes from its pretrained config
    without building the network (the same config timm gives the built model)."""
    from timm.data import create_transform, resolve_data_config

    from .clip import clip_data_config, is_clip

    if isinstance(model, str) and is_clip(model):
        cfg = clip_data_config(model)
    elif isinstance(model, str):
        from timm.models import get_pretrained_cfg

        check_model_name(model)

        pcfg = get_pretrained_cfg(model)
        cfg = resolve_data_config({}, pretrained_cfg=pcfg.to_dict() if pcfg is not None else {})
    else:
        cfg = resolve_data_config({}, model=model)
    if img_size is not None:
        cfg["input_size"] = (cfg["input_size"][0], img_size, img_size)
        cfg["crop_pct"] = 1.0
    return create_transform(**cfg, is_training=False), cfg


def precision_autocast(device: str | torch.device, precision: str) -> torch.autocast:
    """``torch.autocast`` on ``device`` for a :data:`PRECISIONS` value (disabled for fp32).

    Raises:
        ValueError: an unknown precision, naming the valid ones.
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision={precision!r} is not valid; use one of {', '.join(PRECISIONS)}."
        )
    return torch.autocast(
        device_type=torch.device(device).type,
        dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
        enabled=precision != "fp32",
    )


def resolve_preprocess(mode: str, device: str | torch.device) -> str:
    """``"pil"`` or ``"device"`` for a :data:`PREPROCESS_MODES` value (``"auto"``: device
    preprocessing on CUDA, where PIL's per-image resizing starves the GPU; PIL elsewhere)."""
    if mode not in PREPROCESS_MODES:
        raise ValueError(
            f"preprocess={mode!r} is not valid; use one of {', '.join(PREPROCESS_MODES)}."
        )
    if mode == "auto":
        return "device" if torch.device(device).type == "cuda" else "pil"
    return mode


def resolve_decode(mode: str, device: str | torch.device, preprocess: str) -> str:
    """``"device"`` or ``"cpu"`` for a :data:`DECODE_MODES` value on ``device`` with the
    resolved ``preprocess`` mode: ``"device"`` needs CUDA (torchvision decodes JPEGs there
    with nvJPEG) and device preprocessing (the decoded images are resized there); without
    CUDA it falls back to ``"cpu"`` with a warning, so the rows (and their cache key) are
    the CPU decoder's.

    Raises:
        ValueError: an unknown mode, or ``"device"`` with PIL preprocessing.
    """
    if mode not in DECODE_MODES:
        raise ValueError(f"decode={mode!r} is not valid; use one of {', '.join(DECODE_MODES)}.")
    if mode == "cpu":
        return mode
    if torch.device(device).type != "cuda":
        warnings.warn(
            f"--decode device decodes JPEGs on a CUDA device; on {device} they are decoded on "
            "the CPU (the rows are the CPU decoder's).",
            stacklevel=2,
        )
        return "cpu"
    if preprocess != "device":
        raise ValueError(
            "--decode device resizes the decoded images on the device: use --preprocess device "
            "(or auto), not pil."
        )
    return mode


class _DeviceConstants:
    """Constant tensors of a batch transform, copied to each device once: a copy from
    pageable memory to a GPU waits for the device, which would stall the pipeline at every
    batch. The copies stay in this process (they are not pickled to the workers)."""

    _constants: dict[torch.device, tuple[torch.Tensor, ...]]

    def _host_constants(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _on_device(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._constants:
            self._constants[device] = tuple(t.to(device) for t in self._host_constants())
        return self._constants[device]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_constants": {}}


class BatchPreprocess(_DeviceConstants):
    """timm's eval preprocessing (resize the shorter side, centre crop, normalise) in batches
    on the device, the same steps and parameters as the PIL ``transform`` it is built from.

    The DataLoader workers only decode each image to a uint8 tensor at its native size
    (:meth:`decode`); :meth:`batch` moves a batch to the device (images of one size at a
    time) and resizes there as PIL does (the same antialiased kernel, the horizontal pass
    rounded to 8 bits before the vertical one), then crops and normalises. Against the PIL
    path the pixels differ by at most 2 grey levels, rarely (mean 0.001-0.01; float vs PIL's fixed
    point; ``tests/test_loading.py``). Outputs are cached under a different key than the
    PIL path's.

    Calling the object on one PIL image gives the (C, H, W) tensor on the CPU, so it can
    stand in for the PIL transform anywhere (Grad-CAM, model-aware scorers).

    Args:
        transform: the torchvision ``Compose`` from :func:`build_transform`.

    Raises:
        ValueError: the transform has a step other than Resize, CenterCrop, ToTensor and
            Normalize (then use the PIL path).
    """

    def __init__(self, transform: Any) -> None:
        from torchvision import transforms as T

        self.resize: int | tuple[int, ...] | None = None
        self.crop: tuple[int, int] | None = None
        self.mean = self.std = None
        self._constants = {}
        for step in getattr(transform, "transforms", [transform]):
            name = type(step).__name__
            if isinstance(step, T.Resize) and step.max_size is None:
                self.resize = step.size if isinstance(step.size, int) else tuple(step.size)
                self.interpolation = step.interpolation
            elif isinstance(step, T.CenterCrop):
                self.crop = tuple(step.size)
            elif isinstance(step, T.Normalize):
                self.mean, self.std = tuple(map(float, step.mean)), tuple(map(float, step.std))
            elif name not in ("ToTensor", "MaybeToTensor"):
                raise ValueError(
                    f"Device preprocessing supports Resize, CenterCrop, ToTensor and Normalize; "
                    f"this model's transform has {step!r}. Use --preprocess pil."
                )
        if self.resize is None or self.mean is None:
            raise ValueError(
                f"Device preprocessing needs a Resize and a Normalize step; got {transform!r}. "
                "Use --preprocess pil."
            )

    def __repr__(self) -> str:
        return (
            f"BatchPreprocess(resize={self.resize}, interpolation={self.interpolation.value}, "
            f"crop={self.crop}, mean={self.mean}, std={self.std})"
        )

    @staticmethod
    def decode(image: Any) -> torch.Tensor:
        """A PIL image as a (C, H, W) uint8 tensor at its native size (worker side)."""
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(image)

    def batch(
        self, images: torch.Tensor | list[torch.Tensor], device: str | torch.device
    ) -> torch.Tensor:
        """(N, C, H, W) float32 on ``device`` from decoded images: a uint8 (N, C, H, W)
        tensor, or a list of (C, H, W) ones of any sizes."""
        device = torch.device(device)
        if isinstance(images, torch.Tensor):
            return self._same_size(images, device)
        if not images:
            raise ValueError("BatchPreprocess.batch got no images.")
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            by_size.setdefault(tuple(img.shape), []).append(i)
        out: torch.Tensor | None = None
        for rows in by_size.values():
            x = self._same_size(torch.stack([images[i] for i in rows]), device)
            if out is None:
                out = torch.empty((len(images), *x.shape[1:]), device=device)
            out[rows] = x
        assert out is not None
        return out

    def _same_size(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Resize, crop and normalise a uint8 (N, C, H, W) batch on ``device``."""
        from torchvision.transforms.v2 import functional as F

        x = x.to(device, non_blocking=True).float()
        h, w = self._resized(x.shape[-2], x.shape[-1])
        # as PIL: the horizontal pass, stored as 8 bits, then the vertical pass
        for size in ((x.shape[-2], w), (h, w)):
            if tuple(x.shape[-2:]) != size:
                x = F.resize(x, list(size), interpolation=self.interpolation, antialias=True)
                x = x.round_().clamp_(0.0, 255.0)
        if self.crop is not None:
            x = F.center_crop(x, list(self.crop))
        mean, std = self._on_device(device)
        return (x - mean) / std

    def _host_constants(self) -> tuple[torch.Tensor, ...]:
        """Mean and std (x 255) as (C, 1, 1) tensors."""
        return tuple(
            (torch.tensor(v, dtype=torch.float32) * 255.0).view(-1, 1, 1)
            for v in (self.mean, self.std)
        )

    def _resized(self, h: int, w: int) -> tuple[int, int]:
        """Output size of torchvision's ``Resize(self.resize)`` for an h x w image."""
        if not isinstance(self.resize, int):
            return (self.resize[0], self.resize[-1])
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.resize * long / short)
        return (new_long, self.resize) if w <= h else (self.resize, new_long)

    def __call__(self, image: Any) -> torch.Tensor:
        """One PIL image -> (C, H, W) float32 tensor on the CPU."""
        return self.batch([self.decode(image)], "cpu")[0]


class BatchNormalize(_DeviceConstants):
    """A PIL transform that ends in ToTensor and Normalize (timm's eval transform), with
    those two steps run on whole batches on the device instead of image by image.

    The DataLoader workers run the PIL steps (resize, crop) and give uint8 tensors
    (:meth:`decode`: a quarter of the float32 bytes to collate, pin and copy);
    :meth:`batch` converts and normalises with the operations of torchvision's
    ``ToTensor`` and ``Normalize`` (divide by 255, subtract the mean, divide by the std,
    in float32), so the result is the per-image transform's, bit for bit
    (``tests/test_loading.py``, on the CPU). The 255 is a tensor on the device: on CUDA,
    torch divides by a Python number as a multiplication by its reciprocal, which can be
    one unit in the last place off the division. On 2 CPU cores loading the digits demo's
    2,297 images took 0.19 s instead of 0.25 s. Build it with :meth:`of`.
    """

    #: PIL steps that may come before ToTensor (those of timm's eval transforms)
    PIL_STEPS = ("Resize", "CenterCrop", "ResizeKeepRatio", "CenterCropOrPad")

    def __init__(self, pil_steps: Callable[[Any], Any], mean: Any, std: Any) -> None:
        self.pil_steps = pil_steps
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self._constants = {}

    @classmethod
    def of(cls, transform: Any) -> BatchNormalize | None:
        """The batched form of a torchvision ``Compose`` of PIL steps (:attr:`PIL_STEPS`)
        then ToTensor (or timm's MaybeToTensor) then Normalize; ``None`` for any other
        transform (it then runs image by image)."""
        from torchvision import transforms as T

        steps = list(getattr(transform, "transforms", []))
        if (
            len(steps) < 2
            or type(steps[-2]).__name__ not in ("ToTensor", "MaybeToTensor")
            or not isinstance(steps[-1], T.Normalize)
            or any(type(s).__name__ not in cls.PIL_STEPS for s in steps[:-2])
        ):
            return None
        return cls(T.Compose(steps[:-2]), steps[-1].mean, steps[-1].std)

    def __repr__(self) -> str:
        mean, std = self.mean.flatten().tolist(), self.std.flatten().tolist()
        return f"BatchNormalize({self.pil_steps!r}, mean={mean}, std={std})"

    def decode(self, image: Any) -> torch.Tensor:
        """The PIL steps on one image, as a (C, H, W) uint8 tensor (worker side).

        Raises:
            TypeError: the image is not 8-bit (a dataset loader must give RGB images).
        """
        from torchvision.transforms.functional import pil_to_tensor

        x = pil_to_tensor(self.pil_steps(image))
        if x.dtype != torch.uint8:
            raise TypeError(
                f"Got a PIL image of mode {image.mode!r}; dataset loaders must return RGB "
                "images (convert it in the loader: image.convert('RGB'))."
            )
        return x

    def batch(
        self, images: torch.Tensor | list[torch.Tensor], device: str | torch.device
    ) -> torch.Tensor:
        """(N, C, H, W) float32 on ``device`` from a uint8 (N, C, H, W) tensor or a list of
        (C, H, W) ones of one size."""
        device = torch.device(device)
        if not isinstance(images, torch.Tensor):
            if not images:
                raise ValueError("BatchNormalize.batch got no images.")
            images = torch.stack(images)
        scale, mean, std = self._on_device(device)
        return images.to(device, non_blocking=True).float().div_(scale).sub_(mean).div_(std)

    def _host_constants(self) -> tuple[torch.Tensor, ...]:
        """255, the mean and the std."""
        return (torch.tensor(255.0), self.mean, self.std)

    def __call__(self, image: Any) -> torch.Tensor:
        """One PIL image -> (C, H, W) float32 tensor on the CPU."""
        return self.batch(self.decode(image)[None], "cpu")[0]
