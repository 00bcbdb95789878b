"""One-pass extraction of :class:`Outputs` from a timm backbone, and the cached extraction
shared by the CLI, the harness and the explain workflow."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .backbones import (
    PRECISIONS,
    BatchNormalize,
    BatchPreprocess,
    ModelConfig,
    create_backbone,
    get_head,
    precision_autocast,
    resolve_device,
)
from .cache import Cache
from .datasets import CorruptImageError, DatasetSource, as_shown
from .distributed import all_gather, barrier, rank_and_world
from .files import atomic_dir
from .network import forward_with_blocks
from .options import GRAM_POWERS, ExtractOptions
from .outputs import Outputs, OutputsWriter
from .progress import progress_bar
from .scorers.base import ModelInputs

__all__ = [
    "PRECISIONS",
    "default_num_workers",
    "ImageDataset",
    "decode_jpeg_batch",
    "ExtractionReport",
    "LazyBackbone",
    "model_inputs",
    "extract_outputs",
    "cached_extract",
    "cached_extract_all",
]

log = logging.getLogger(__name__)


def default_num_workers() -> int:
    """DataLoader workers for this machine: 0 with 2 CPU cores or fewer (where workers cost
    more than they give: measured on this project's 2-core machines), else one per core
    beyond the first, at most 8."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def _workers(options: ExtractOptions) -> int:
    """The options' DataLoader workers, or :func:`default_num_workers` when not given."""
    return options.num_workers if options.num_workers is not None else default_num_workers()


#: File suffixes read as bytes for device decoding (``--decode device``).
JPEG_SUFFIXES = (".jpg", ".jpeg")


def _plain_jpeg(data: bytes) -> bool:
    """Whether the file ``data`` is a JPEG that torchvision decodes to what :func:`as_shown`
    shows: RGB or greyscale, without an EXIF rotation (only the header is parsed)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return (
                img.format == "JPEG"
                and img.mode in ("RGB", "L")
                and img.getexif().get(0x0112, 1) == 1
            )
    except Exception:  # unreadable: the CPU path reports it
        return False


class ImageDataset(torch.utils.data.Dataset):
    """A :class:`DatasetSource` as a torch dataset of ``(image, label, ok, id, error)``:
    a corrupt image gives a zero placeholder with ``ok=False`` and its error text (uint8
    when ``decoded``: ``transform`` is a batch transform's ``decode``, giving uint8).

    With ``raw`` (device decoding), a plain JPEG file of a source of files is not decoded:
    its bytes come as a 1-D uint8 tensor, with its path as the id, for
    :func:`decode_jpeg_batch`."""

    def __init__(
        self,
        source: DatasetSource,
        transform: Callable[[Any], torch.Tensor],
        shape: tuple[int, ...],
        decoded: bool = False,
        raw: bool = False,
    ) -> None:
        self.source, self.transform, self.shape = source, transform, shape
        self.decoded = decoded
        self.raw = raw and source.files

    def __len__(self) -> int:
        return len(self.source)

    def _bytes(self, i: int) -> torch.Tensor | None:
        path = self.source.ids[i]
        if not path.lower().endswith(JPEG_SUFFIXES):
            return None
        try:
            with open(path, "rb") as f:
                data = f.read()  # read once: the header check parses these bytes
        except OSError:  # unreadable: the loader reports it
            return None
        if not _plain_jpeg(data):
            return None
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool, str, str]:
        try:
            data = self._bytes(i) if self.raw else None
            if data is not None:
                return data, int(self.source.labels[i]), True, self.source.ids[i], ""
            return self.transform(self.source.loader(i)), int(self.source.labels[i]), True, "", ""
        except CorruptImageError as exc:
            return (
                torch.zeros(self.shape, dtype=torch.uint8 if self.decoded else torch.float32),
                int(self.source.labels[i]),
                False,
                self.source.ids[i],
                str(exc),
            )


def decode_jpeg_batch(
    items: list[torch.Tensor], ids: list[str], device: str | torch.device
) -> list[torch.Tensor]:
    """Decoded (C, H, W) uint8 images on ``device``: the 1-D items (a JPEG file's bytes,
    from :class:`ImageDataset` with ``raw``) decoded together there by torchvision (nvJPEG on
    CUDA, libjpeg-turbo on the CPU), in RGB; the others (decoded on the workers) as they are.
    A JPEG torchvision cannot decode is decoded by PIL instead.

    Raises:
        CorruptImageError: a file neither can decode, named by its id (``ids[k]``).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    out = list(items)
    raw = [k for k, x in enumerate(items) if x.ndim == 1]
    if not raw:
        return out
    try:
        decoded = decode_jpeg([items[k] for k in raw], mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad file fails the batch: decode one by one
        decoded = [_decode_one(items[k], ids[k], device) for k in raw]
    for k, image in zip(raw, decoded, strict=True):
        out[k] = image
    return out


def _decode_one(data: torch.Tensor, sid: str, device: torch.device) -> torch.Tensor:
    """One JPEG's bytes decoded by torchvision on ``device``, else by PIL."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.functional import pil_to_tensor

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        pass
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
            return pil_to_tensor(as_shown(img)).to(device)
    except Exception as exc:
        raise CorruptImageError(
            f"{sid}: {type(exc).__name__}: {exc} (unreadable; with --decode cpu, --skip-corrupt "
            "skips unreadable images)"
        ) from exc


def collate_decoded(
    batch: list[tuple[torch.Tensor, int, bool, str, str]],
) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor, torch.Tensor, list[str], list[str]]:
    """Collate ``(image, label, ok, id, error)`` rows of decoded uint8 images (for
    :class:`~oodlens.backbones.BatchPreprocess` at their native size, or
    :class:`~oodlens.backbones.BatchNormalize`): one uint8 tensor when every image has the
    same size, else a list of them."""
    images, labels, ok, ids, errors = zip(*batch, strict=True)
    # a file's bytes (device decoding) are 1-D: never stacked
    same = all(im.ndim == 3 and im.shape == images[0].shape for im in images)
    # one tensor when the sizes agree (one pinned copy), else a list
    stacked: Any = torch.stack(images) if same else list(images)
    return stacked, torch.tensor(labels), torch.tensor(ok), list(ids), list(errors)


@dataclass
class ExtractionReport:
    """What extraction skipped: corrupt files, by path (only with ``skip_corrupt=True``)."""

    corrupt: list[str] = field(default_factory=list)


def extract_outputs(
    model: nn.Module,
    source: DatasetSource,
    transform: Callable[[Any], torch.Tensor],
    input_size: tuple[int, int, int],
    options: ExtractOptions | None = None,
    *,
    progress: bool = True,
    report: ExtractionReport | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    shard: tuple[int, int] | None = None,
    **fields: Any,
) -> Outputs | None:
    """Run ``model`` once over ``source``: logits, penultimate features, labels and head.

    One forward pass per batch under ``torch.inference_mode()``; the model's train/eval mode
    is restored afterwards.

    Args:
        model: a timm model (``forward_features`` / ``forward_head`` / ``get_classifier``).
        source: the dataset.
        transform: PIL image -> (C, H, W) tensor, or a
            :class:`~oodlens.backbones.BatchPreprocess`: the workers then only decode, and
            resizing and normalisation run in batches on the device. A PIL transform that
            ends in ToTensor and Normalize (timm's) runs its last two steps in batches on
            the device (:class:`~oodlens.backbones.BatchNormalize`: the same numbers).
        input_size: (C, H, W) of the transformed images (for placeholder rows).
        options: the :class:`~oodlens.options.ExtractOptions`: ``device`` (where to run, a
            parameter, never assumed), ``batch_size`` and ``num_workers`` (each batch is
            decoded in chunks by all the workers, which stop when the extraction ends;
            memory is pinned for CUDA), ``skip_corrupt`` (drop unreadable images, listed
            in ``report``, instead of raising), ``precision`` (the forward pass under
            ``torch.autocast`` at that precision; outputs are stored as float32),
            ``channels_last`` and ``features_dtype`` (``"float32"`` or ``"float16"``
            storage for the features). ``img_size`` and ``preprocess`` are for whoever
            builds ``transform``.
        progress: show a tqdm progress bar on stderr.
        report: filled with the skipped files.
        out_dir: an empty folder to write the outputs into, batch by batch
            (:class:`~oodlens.outputs.OutputsWriter`); the result is then memory-mapped from
            it, so the features never have to fit in memory. ``None``: kept in memory.
        shard: ``(rank, world)``: extract only batches ``b`` with ``b % world == rank``
            (whole batches), into ``out_dir``; returns ``None`` (rank 0 assembles the
            shards, see :func:`cached_extract`).
        fields: fields of ``options`` to change (or of a default one), e.g.
            ``batch_size=64, precision="bf16"``.

    Raises:
        CorruptImageError: unreadable images and ``skip_corrupt=False``; the message lists them.
        InvalidParameterError: an option of the wrong type or out of range.
    """
    options = _options(options, fields)
    part = _Part(
        source,
        OutputsWriter(out_dir, options.features_dtype) if out_dir is not None else None,
    )
    _extract_parts(
        model, [part], transform, input_size, options, progress, shard=shard, report=report
    )
    return part.finish(model, empty_ok=shard is not None, load=shard is None)


def _options(options: ExtractOptions | None, fields: dict[str, Any]) -> ExtractOptions:
    """``options`` (default: the defaults) with ``fields`` changed; a device object is
    written as its name."""
    if "device" in fields and not isinstance(fields["device"], str):
        fields = {**fields, "device": str(fields["device"])}
    return (options or ExtractOptions()).replace(**fields)


@dataclass
class _Part:
    """One dataset of an extraction: where its rows go, and what failed to load."""

    source: DatasetSource
    writer: OutputsWriter | None
    logits: list[np.ndarray] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    blocks: list[dict[str, np.ndarray]] = field(default_factory=list)
    rows: int = 0
    bad: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def store(
        self, z: np.ndarray, f: np.ndarray, y: np.ndarray, blocks: dict[str, np.ndarray]
    ) -> None:
        if self.writer is not None:
            self.writer.append(z, f, y, blocks)
        else:
            self.logits.append(z)
            self.features.append(f)
            self.labels.append(y)
            self.blocks.append(blocks)
        self.rows += len(z)

    def finish(self, model: nn.Module, empty_ok: bool = False, load: bool = True) -> Outputs | None:
        """The outputs (with the model's head), memory-mapped from the writer's folder or
        from memory; ``None`` for a shard (``load=False``)."""
        if not self.rows and not empty_ok:
            raise ValueError(
                f"No readable images in {self.source.spec!r}: all {len(self.source)} failed "
                "to load (skipped as corrupt)."
            )
        head = get_head(model)
        weight = None if head is None else head.weight.detach().float().cpu().numpy()
        bias = None
        if head is not None:
            bias = (
                head.bias.detach().float().cpu().numpy()
                if head.bias is not None
                else np.zeros(head.out_features, np.float32)
            )
        if self.writer is not None:
            return self.writer.finish(weight, bias, load=load)
        return Outputs(
            logits=np.concatenate(self.logits),
            labels=np.concatenate(self.labels),
            features=np.concatenate(self.features),
            head_weight=weight,
            head_bias=bias,
            class_names=None,
            blocks={k: np.concatenate([b[k] for b in self.blocks]) for k in self.blocks[0]} or None,
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _check_corrupt(parts: list[_Part], skip_corrupt: bool, report: ExtractionReport | None) -> None:
    """Raise for unreadable images (naming each dataset and file), or log and report them."""
    failed = [p for p in parts if p.bad]
    if not failed:
        return
    if not skip_corrupt:
        lines = []
        for p in failed:
            shown = "\n  ".join(p.messages[:10])
            more = f"\n  ... and {len(p.bad) - 10} more" if len(p.bad) > 10 else ""
            lines.append(f"{len(p.bad)} unreadable image(s) in {p.source.spec!r}:\n  {shown}{more}")
        raise CorruptImageError(
            "\n".join(lines)
            + "\nRemove or replace them, or allow skipping them (--skip-corrupt / skip_corrupt=True)."
        )
    for p in failed:
        log.warning(
            "Skipped %d unreadable image(s) in %s: %s", len(p.bad), p.source.spec, p.messages[:5]
        )
        if report is not None:
            report.corrupt.extend(p.bad)


def _extract_parts(
    model: nn.Module,
    parts: list[_Part],
    transform: Any,
    input_size: tuple[int, int, int],
    options: ExtractOptions,
    progress: bool,
    shard: tuple[int, int] | None = None,
    report: ExtractionReport | None = None,
) -> None:
    """One forward pass over the datasets of ``parts``, one after another through a single
    DataLoader (its workers start once), each row stored into its own part. With ``shard``
    (one part only): the batches ``b % world == rank``, each stored as one block. Unreadable
    images then raise (``_check_corrupt``) or are reported; on any error every part's
    writer is closed."""
    batch_size, num_workers = options.batch_size, _workers(options)
    precision, channels_last = options.precision, options.channels_last
    device = resolve_device(options.device)
    autocast = precision_autocast(device, precision)
    # the workers decode (and run PIL steps); the batch is finished on the device
    batched = transform if isinstance(transform, BatchPreprocess) else BatchNormalize.of(transform)
    item_transform = transform if batched is None else batched.decode
    raw = options.decode == "device"
    if raw and not isinstance(batched, BatchPreprocess):
        raise ValueError(
            "decode='device' decodes JPEGs on the device and resizes them there: it needs "
            "device preprocessing (preprocess='device'; a BatchPreprocess transform)."
        )
    datasets = [
        ImageDataset(p.source, item_transform, input_size, decoded=batched is not None, raw=raw)
        for p in parts
    ]
    dataset: Any = datasets[0] if len(datasets) == 1 else torch.utils.data.ConcatDataset(datasets)
    n_source = len(parts[0].source)
    if shard is not None:
        rank, world = shard
        mine = [
            i
            for b in range(rank, -(-n_source // batch_size), world)
            for i in range(b * batch_size, min((b + 1) * batch_size, n_source))
        ]
        dataset = torch.utils.data.Subset(dataset, mine)
    # where each part's rows start in the order of the loader
    offsets = np.cumsum([0] + [len(d) for d in datasets]) if shard is None else [0, len(dataset)]
    plan = _batch_chunks(len(dataset), batch_size, num_workers)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=[chunk for chunks in plan for chunk in chunks],
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers > 0 else None,
        collate_fn=None if batched is None else collate_decoded,
    )
    # the workers start decoding while the network moves to the device
    chunks_in = iter(loader)
    was_training = model.training
    model.eval().to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    feature_type = np.dtype(options.features_dtype)
    pending: list[tuple[Any, Any, Any, np.ndarray, np.ndarray, int, int]] = []

    def store(z, f, blocks, y: np.ndarray, rows: np.ndarray, lo: int, hi: int) -> None:
        """Split a batch (positions [lo, hi), kept ``rows``) among the parts it covers."""
        z, f = z(), f().astype(feature_type, copy=False)
        blocks = {k: v() for k, v in blocks.items()}
        first = int(np.searchsorted(offsets, lo, side="right")) - 1
        last = int(np.searchsorted(offsets, hi - 1, side="right")) - 1
        for k in range(first, last + 1):
            a, b = np.searchsorted(rows, [offsets[k], offsets[k + 1]])
            if b > a:
                parts[k].store(z[a:b], f[a:b], y[a:b], {n: v[a:b] for n, v in blocks.items()})
            elif parts[k].writer is not None:
                parts[k].writer.empty_block()  # every image of this batch was unreadable

    position = 0
    desc = parts[0].source.spec if len(parts) == 1 else f"{len(parts)} datasets"
    bar = progress_bar(total=len(dataset), desc=f"extract {desc}", unit="img", enabled=progress)
    try:
        with torch.inference_mode(), autocast:
            for chunks in plan:
                # exactly as many chunks as planned (never StopIteration, which stops the
                # workers there): they stop when the iterator is released, after the last
                # batches are stored
                got = [next(chunks_in) for _ in chunks]
                ok = torch.cat([g[2] for g in got]).bool()
                y = torch.cat([g[1] for g in got])
                lo, hi = position, position + len(ok)
                position = hi
                bar.update(hi - lo)
                paths = [p for g in got for p in g[3]]
                errors = [e for g in got for e in g[4]]
                for i in (~ok).nonzero().flatten().tolist():
                    k = int(np.searchsorted(offsets, lo + i, side="right")) - 1
                    parts[k].bad.append(paths[i])
                    parts[k].messages.append(errors[i])
                rows = np.arange(lo, hi)[ok.numpy()]
                if not len(rows):
                    store(
                        lambda: np.empty((0, 0)),
                        lambda: np.empty((0, 0)),
                        {},
                        y[:0].numpy(),
                        rows,
                        lo,
                        hi,
                    )
                    continue
                kept = [_readable(x, keep.bool()) for x, _, keep, _, _ in got]
                if raw:  # the files' bytes, decoded together on the device
                    sids = [i for g in got for i, k in zip(g[3], g[2].tolist(), strict=True) if k]
                    kept = [decode_jpeg_batch([im for x in kept for im in x], sids, device)]
                batch = _device_batch([k for k in kept if len(k)], batched, device)
                z, f, blocks = forward_with_blocks(
                    model,
                    batch.contiguous(memory_format=fmt),
                    options.stages,
                    options.gram_stages,
                    GRAM_POWERS,
                )
                # copied back without waiting: this batch is stored while the next one runs
                host = {k: _to_host(v) for k, v in blocks.items()}
                pending.append((_to_host(z), _to_host(f), host, y[ok].numpy(), rows, lo, hi))
                if len(pending) > 1:
                    store(*pending.pop(0))
            while pending:
                store(*pending.pop(0))
        _check_corrupt(parts, options.skip_corrupt, report)
    except BaseException:
        for p in parts:
            p.close()
        raise
    finally:
        bar.close()
        # the workers stop now (also on error), even if this frame outlives the call
        del chunks_in
        model.train(was_training)
        if channels_last:
            model.to(memory_format=torch.contiguous_format)


def _batch_chunks(n: int, batch_size: int, workers: int) -> list[list[range]]:
    """The positions of each batch of ``batch_size`` over ``n`` rows, cut into about one
    chunk per DataLoader worker (``ceil(batch_size / workers)`` images, at least 8; a batch's
    last chunk may be smaller): the workers decode a batch together, so the first batch is
    ready after one chunk's decoding, not a whole batch's by one worker (on an H200 the
    first forward pass came 0.18 s after the network was built instead of 0.35 s, in a
    2.4 s extraction)."""
    size = -(-batch_size // max(1, min(workers, batch_size // 8)))
    plan = []
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        plan.append([range(a, min(a + size, hi)) for a in range(lo, hi, size)])
    return plan


def _readable(x: torch.Tensor | list[torch.Tensor], keep: torch.Tensor) -> Any:
    """The images of one loaded chunk whose ``keep`` is true (a tensor or a list)."""
    if keep.all():
        return x
    if isinstance(x, list):
        return [x[i] for i in keep.nonzero().flatten().tolist()]
    return x[keep]  # copies out of pinned memory: only for chunks with unreadable images


def _device_batch(
    chunks: list[Any], batched: BatchPreprocess | BatchNormalize | None, device: torch.device
) -> torch.Tensor:
    """One batch on ``device`` from the readable images of its loaded chunks: transformed
    tensors, or (a batch transform) decoded uint8 images finished there in one go."""
    if batched is None:
        moved = [x.to(device, non_blocking=True) for x in chunks]
        return moved[0] if len(moved) == 1 else torch.cat(moved)
    if all(isinstance(x, torch.Tensor) for x in chunks) and len({x.shape[1:] for x in chunks}) == 1:
        moved = [x.to(device, non_blocking=True) for x in chunks]
        return batched.batch(moved[0] if len(moved) == 1 else torch.cat(moved), device)
    return batched.batch([image for x in chunks for image in x], device)


def _to_host(t: torch.Tensor) -> Callable[[], np.ndarray]:
    """Start copying ``t`` (as float32) to the host; the returned call waits for the copy
    and gives the numpy array. On CUDA the copy goes into pinned memory without blocking."""
    t = t.float()
    if t.device.type != "cuda":
        host = t.cpu().numpy()
        return lambda: host
    buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    buf.copy_(t, non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def wait() -> np.ndarray:
        done.synchronize()
        return buf.numpy()

    return wait


def model_inputs(
    model: nn.Module,
    source: DatasetSource,
    transform: Any,
    input_size: tuple[int, int, int],
    options: ExtractOptions,
    std: tuple[float, ...],
    n_samples: int,
    who: str = "",
    progress: bool = False,
) -> ModelInputs:
    """What a model-aware scorer needs beside the outputs of ``source``: the network (moved
    to ``options.device``, in eval mode) and a fresh pass over the preprocessed images, in
    the order of the outputs' rows (unreadable images skipped, as extraction skips them),
    each batch preprocessed as extraction does it (decoded on the workers, then resized or
    normalised in one go on the device), on the device.

    Args:
        std: the per-channel standard deviation of the normalisation (for input-space steps).
        n_samples: the number of rows of the outputs (readable images).
        who: the scorer making the passes (named in their progress).
        progress: show each pass's progress (see :mod:`oodlens.progress`).
    """
    device = resolve_device(options.device)
    # as extraction: the workers decode, and the batch is resized (device preprocessing) or
    # normalised on the device in one go (the same numbers as the per-image transform)
    batched = transform if isinstance(transform, BatchPreprocess) else BatchNormalize.of(transform)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(
            ImageDataset(
                source,
                transform if batched is None else batched.decode,
                input_size,
                decoded=batched is not None,
            ),
            batch_size=options.batch_size,
            num_workers=_workers(options),
            pin_memory=device.type == "cuda",
            collate_fn=None if batched is None else collate_decoded,
        )
        desc = f"{who + ': ' if who else ''}pass over {source.spec}"
        with progress_bar(total=len(source), desc=desc, unit="img", enabled=progress) as bar:
            for x, y, ok, _, _ in loader:
                bar.update(len(ok))
                keep = ok.bool()
                if keep.any():
                    yield _device_batch([_readable(x, keep)], batched, device), y[keep]

    return ModelInputs(model.eval().to(device), batches, device, tuple(std), n_samples)


class LazyBackbone:
    """A backbone built on first call, so a fully cached run never builds the network.

    Args:
        name: timm model name, or ``clip:ARCH[:TAG]`` (see :mod:`oodlens.clip`).
        checkpoint: local checkpoint, or ``None`` for timm's pretrained weights.
        img_size: input size override.
        class_names: the classes of a CLIP zero-shot classifier (its head).
    """

    def __init__(
        self,
        name: str,
        checkpoint: str | None,
        img_size: int | None,
        class_names: tuple[str, ...] = (),
    ) -> None:
        self.name, self.checkpoint, self.img_size = name, checkpoint, img_size
        self.class_names = class_names
        self.model: nn.Module | None = None
        self.config: ModelConfig | None = None

    def __call__(self) -> nn.Module:
        if self.model is None:
            self.model, self.config = create_backbone(
                self.name,
                pretrained=self.checkpoint is None,
                checkpoint=self.checkpoint,
                img_size=self.img_size,
                class_names=self.class_names,
            )
        return self.model


def cached_extract(
    get_model: Callable[[], nn.Module],
    model_name: str,
    weights_id: str,
    source: DatasetSource,
    transform: Any,
    input_size: tuple[int, int, int],
    cache: Cache,
    options: ExtractOptions | None = None,
    *,
    progress: bool = True,
    **fields: Any,
) -> tuple[Outputs, bool, list[str]]:
    """Outputs of the model on ``source``, from the cache when an entry exists for the same
    (model name, weights hash, dataset fingerprint, transform, and the options that can
    change a row: :meth:`ExtractOptions.key_fields`). ``get_model()`` returns the network; it
    is called only on a cache miss. ``options`` and ``fields``: as for
    :func:`extract_outputs`.

    Returns the outputs, whether it was a cache hit, and the skipped corrupt files.
    """
    return cached_extract_all(
        get_model,
        model_name,
        weights_id,
        {"": source},
        transform,
        input_size,
        cache,
        options,
        progress=progress,
        **fields,
    )[""]


def _outputs_key(
    cache: Cache,
    model_name: str,
    weights_id: str,
    source: DatasetSource,
    transform: Any,
    options: ExtractOptions,
) -> str:
    """The cache key of one dataset's outputs: model, weights, data, preprocessing, and the
    options that can change a row (never the device, batch size or workers)."""
    return cache.key(
        {
            "model": model_name,
            "weights": weights_id,
            "data": source.fingerprint(),
            "transform": repr(transform),
            **options.key_fields(),
        }
    )


def cached_extract_all(
    get_model: Callable[[], nn.Module],
    model_name: str,
    weights_id: str,
    sources: dict[str, DatasetSource],
    transform: Any,
    input_size: tuple[int, int, int],
    cache: Cache,
    options: ExtractOptions | None = None,
    *,
    progress: bool = True,
    **fields: Any,
) -> dict[str, tuple[Outputs, bool, list[str]]]:
    """Outputs of the model on each of ``sources``, each from its own cache entry (see
    :func:`cached_extract`) when it exists. The others are extracted in one pass through one
    DataLoader (its workers start once, not once per dataset), each written into its own
    cache entry, batch by batch, then renamed into place: the features never have to fit in
    memory, and an interrupted run leaves no entry. With the cache off they are kept in
    memory; under torchrun each dataset is sharded across the ranks in turn. ``options``
    and ``fields``: as for :func:`extract_outputs`.

    Returns ``{name: (outputs, cache hit, skipped corrupt files)}`` in the order of ``sources``.
    """
    options = _options(options, fields)
    keys = {
        name: _outputs_key(cache, model_name, weights_id, src, transform, options)
        for name, src in sources.items()
    }
    results: dict[str, tuple[Outputs, bool, list[str]]] = {}
    for name, key in keys.items():
        cached = cache.get_outputs(key)
        if cached is not None:
            results[name] = (cached, True, [])
    barrier()  # every rank has looked before any rank writes
    missing = [name for name in sources if name not in results]
    if missing and cache.enabled:
        cache.check_can_add(f"the outputs of {model_name} on {[sources[m].spec for m in missing]}")
    if missing and rank_and_world()[1] > 1:
        for name in missing:
            results[name] = _sharded_extract(
                get_model,
                sources[name],
                transform,
                input_size,
                cache,
                keys[name],
                options,
                progress,
            )
    elif missing:
        with contextlib.ExitStack() as stack:
            parts = {
                name: _Part(
                    sources[name],
                    OutputsWriter(
                        stack.enter_context(atomic_dir(cache.outputs_path(keys[name]))),
                        options.features_dtype,
                    )
                    if cache.enabled
                    else None,
                )
                for name in missing
            }
            # the network is built outside inference_mode (_extract_parts enters it), so that
            # its parameters stay ordinary tensors (Grad-CAM needs gradients through them)
            model = get_model()
            _extract_parts(model, list(parts.values()), transform, input_size, options, progress)
            finished = {name: part.finish(model) for name, part in parts.items()}
        for name in missing:
            # entries are read back from their final place (the temporary folder is gone)
            out = cache.load_written(keys[name]) if cache.enabled else finished[name]
            results[name] = (out, False, list(parts[name].bad))
    return {name: results[name] for name in sources}


def _sharded_extract(
    get_model, source, transform, input_size, cache, key, options: ExtractOptions, progress
):
    """Under torchrun: each rank writes its batches as a shard into the cache; rank 0
    assembles them in the original batch order into one entry; every rank then loads it."""
    if not cache.enabled:
        raise ValueError(
            "Sharded extraction (torchrun) writes its shards into the cache: drop --no-cache "
            "(and give every rank the same --cache-dir)."
        )
    rank, world = rank_and_world()
    shards = cache.outputs_path(key).parent / f".{key}.shards"
    mine = shards / f"rank{rank}"
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir(parents=True)
    report = ExtractionReport()
    extract_outputs(
        get_model(),
        source,
        transform,
        input_size,
        options,
        progress=progress,
        report=report,
        out_dir=mine,
        shard=(rank, world),
    )
    corrupt = [p for part in all_gather(report.corrupt) for p in part]
    barrier()
    if rank == 0:
        metas = [json.loads((shards / f"rank{r}" / "meta.json").read_text()) for r in range(world)]
        if sum(m["n"] for m in metas) == 0:
            raise ValueError(f"No readable images in {source.spec!r}.")
        parts = {r: Outputs.load_dir(shards / f"rank{r}") for r in range(world) if metas[r]["n"]}
        starts = [np.concatenate([[0], np.cumsum(m["block_rows"])]).astype(int) for m in metas]
        with atomic_dir(cache.outputs_path(key)) as tmp:
            writer = OutputsWriter(tmp, options.features_dtype)
            for b in range(sum(len(m["block_rows"]) for m in metas)):
                r, j = b % world, b // world
                lo, hi = starts[r][j], starts[r][j + 1]
                if hi > lo:
                    p = parts[r]
                    blocks = {k: v[lo:hi] for k, v in (p.blocks or {}).items()}
                    writer.append(p.logits[lo:hi], p.features[lo:hi], p.labels[lo:hi], blocks)
            head = next(iter(parts.values()))
            writer.finish(head.head_weight, head.head_bias)
        shutil.rmtree(shards, ignore_errors=True)
        cache.verify_entry(cache.outputs_path(key))  # once, here, before the others read it
    barrier()
    return Outputs.load_dir(cache.outputs_path(key)), False, corrupt
