"""The extraction options, in one torch-free place (``import oodlens`` stays light): the
values the configuration, the CLI and the backbones share, and :class:`ExtractOptions`, the
one object that carries them from the command line (or a config file) to extraction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from .params import Boolean, Interval, ListOf, Options, Text, validate_fields

__all__ = [
    "PRECISIONS",
    "PREPROCESS_MODES",
    "FEATURE_DTYPES",
    "DECODE_MODES",
    "GRAM_POWERS",
    "ExtractOptions",
]

#: Autocast precisions of the forward pass (extraction) and of training.
PRECISIONS = ("fp32", "bf16", "fp16")

#: Where images are resized and normalised: per image with PIL on the DataLoader workers
#: ("pil"), or in batches on the extraction device ("device"); "auto" is "device" on CUDA.
PREPROCESS_MODES = ("auto", "pil", "device")

#: Storage of cached features.
FEATURE_DTYPES = ("float32", "float16")

#: Where JPEG files are decoded: on the CPU by PIL in the DataLoader workers ("cpu"), or in
#: batches on the CUDA device by torchvision (nvJPEG; "device"; other formats, and JPEGs with
#: an EXIF rotation or CMYK colours, are still decoded on the CPU; without CUDA "device"
#: falls back to "cpu").
DECODE_MODES = ("cpu", "device")

#: The orders p of the Gram-matrix statistics recorded for ``gram_stages`` (Sastry & Oore
#: 2020, and OpenOOD's GRAM, use 1 to 10).
GRAM_POWERS = tuple(range(1, 11))


@dataclass(frozen=True)
class ExtractOptions:
    """How the backbone runs over a dataset: what :func:`~oodlens.extract.cached_extract_all`
    and :func:`~oodlens.extract_outputs` take, built once from the command line or a
    :class:`~oodlens.BenchmarkConfig` (:meth:`~oodlens.BenchmarkConfig.extract_options`).

    The fields that can change an output row (:data:`ROW_FIELDS`) are part of the cache key;
    the others (:data:`RUN_FIELDS`: where and how fast it runs) are not, and do not change
    the rows. A new option goes into one of the two tuples (a test checks that every field
    is in exactly one).

    Example:
        >>> ExtractOptions(precision="bf16").key_fields()["precision"]
        'bf16'
        >>> ExtractOptions(batch_size=0)
        Traceback (most recent call last):
        ...
        oodlens.errors.InvalidParameterError: ExtractOptions: batch_size=0 is not valid; it must be an int in [1, inf).
    """

    img_size: int | None = None  #: input size of the transform (None: the model's default)
    precision: str = "fp32"  #: autocast precision of the forward pass: fp32, bf16 or fp16
    channels_last: bool = False  #: run the network and the batches in channels-last format
    #: where images are resized and normalised: "pil" (per image, on the workers), "device"
    #: (in batches on the device) or "auto" ("device" on CUDA, else "pil")
    preprocess: str = "auto"
    features_dtype: str = "float32"  #: storage of the features: float32 or float16
    skip_corrupt: bool = False  #: skip unreadable images (reported) instead of failing
    device: str = "cpu"  #: "cpu", "cuda", "cuda:1", "mps" or "auto"
    batch_size: int = 256  #: images per forward pass
    num_workers: int | None = None  #: DataLoader workers (None: from the CPU count)
    #: where JPEGs are decoded: "cpu" (PIL, on the workers) or "device" (batched on CUDA;
    #: needs device preprocessing; without CUDA it falls back to "cpu")
    decode: str = "cpu"
    #: earlier stages whose pooled features are recorded beside the penultimate ones, as
    #: indices into the backbone's ``feature_info`` (timm's stages: 0 is the stem of a
    #: ResNet, 1-4 its residual stages); kept sorted, without repeats
    stages: tuple[int, ...] = ()
    #: stages whose Gram-matrix statistics (:data:`GRAM_POWERS`) are recorded (for ``gram``)
    gram_stages: tuple[int, ...] = ()

    #: Fields that can change an output row: in the cache key.
    ROW_FIELDS: ClassVar[tuple[str, ...]] = (
        "img_size",
        "precision",
        "channels_last",
        "preprocess",
        "features_dtype",
        "skip_corrupt",
        "decode",
        "stages",
        "gram_stages",
    )
    #: Row fields added after the first cache format: at these values (the behaviour before
    #: they existed) they are left out of the key, so earlier cache entries stay valid.
    KEY_DEFAULTS: ClassVar[dict[str, Any]] = {"decode": "cpu", "stages": (), "gram_stages": ()}
    #: Fields that change only where and how fast extraction runs: not in the cache key.
    RUN_FIELDS: ClassVar[tuple[str, ...]] = ("device", "batch_size", "num_workers")

    parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "img_size": [Interval(int, 1, None), None],
        "precision": [Options(PRECISIONS)],
        "channels_last": [Boolean()],
        "preprocess": [Options(PREPROCESS_MODES)],
        "features_dtype": [Options(FEATURE_DTYPES)],
        "skip_corrupt": [Boolean()],
        "device": [Text()],
        "batch_size": [Interval(int, 1, None)],
        "num_workers": [Interval(int, 0, None), None],
        "decode": [Options(DECODE_MODES)],
        "stages": [ListOf([Interval(int, 0, None)], single=True)],
        "gram_stages": [ListOf([Interval(int, 0, None)], single=True)],
    }

    def __post_init__(self) -> None:
        validate_fields(self)
        for name in ("stages", "gram_stages"):
            value = getattr(self, name)
            items = value if isinstance(value, list | tuple) else (value,)
            object.__setattr__(self, name, tuple(sorted({int(i) for i in items})))

    def key_fields(self) -> dict[str, Any]:
        """The fields that can change an output row, for the cache key (without those at
        their :attr:`KEY_DEFAULTS`)."""
        return {
            name: getattr(self, name)
            for name in self.ROW_FIELDS
            if name not in self.KEY_DEFAULTS or getattr(self, name) != self.KEY_DEFAULTS[name]
        }

    def replace(self, **changes: Any) -> ExtractOptions:
        """A copy with ``changes`` (checked like the original)."""
        return dataclasses.replace(self, **changes)
