"""The :class:`Outputs` container: what a classifier produced on one dataset."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import iter_row_chunks, rows_per_chunk
from .files import atomic_path, file_digest, new_digest
from .options import FEATURE_DTYPES

__all__ = ["Outputs", "OutputsWriter", "FEATURE_DTYPES", "check_folder"]

_FORMAT_VERSION = 1

#: What a named feature block may be called (it names a file of the cache's folders).
_BLOCK_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


def _count_bad_rows(name: str, array: np.ndarray) -> tuple[int, int]:
    """Count rows holding NaN/inf, in chunks so a memory-mapped array is never loaded whole."""
    bad, first = 0, -1
    n_cols = int(np.prod(array.shape[1:], dtype=np.int64)) if array.ndim > 1 else 1
    for start, chunk in iter_row_chunks(array, rows_per_chunk(n_cols)):
        rows = ~np.isfinite(chunk)
        if rows.ndim > 1:
            rows = rows.any(axis=tuple(range(1, rows.ndim)))
        n = int(rows.sum())
        if n and first < 0:
            first = start + int(np.argmax(rows))
        bad += n
    return bad, first


def _as_float(name: str, value: Any, ndim: int) -> np.ndarray:
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.ndim != ndim:
        raise ValueError(
            f"Outputs.{name} must be a {ndim}-D array, got shape {array.shape}."
            + (" Reshape it to (N, C)." if name == "logits" and array.ndim == 1 else "")
        )
    if array.dtype.kind not in "fiub":
        raise TypeError(f"Outputs.{name} must hold real numbers, got dtype {array.dtype}.")
    if array.dtype.kind != "f":
        array = array.astype(np.float64)
    bad, first = _count_bad_rows(name, array)
    if bad:
        raise ValueError(
            f"Outputs.{name} has {bad} row(s) with NaN or inf values (first at row {first}). "
            "Drop or fix those samples before building Outputs; a NaN usually means the "
            "model diverged or an input image was corrupt."
        )
    return array


@dataclass(frozen=True)
class Outputs:
    """A classifier's outputs on one dataset: everything a scorer may need.

    The backbone runs once per (model, checkpoint, dataset, transform); these arrays are
    cached and every scorer works on them.

    Args:
        logits: (N, C) float array of pre-softmax class scores.
        labels: (N,) integer class labels, or ``None`` when unknown (e.g. noise).
            ``-1`` marks an unknown label inside a labelled set.
        features: (N, D) penultimate features (the head's input), optional.
        head_weight: (C, D) weight of the final linear classifier, optional.
        head_bias: (C,) bias of the final linear classifier, optional.
        class_names: names of the C classes, optional.
        blocks: named (N, D_b) feature blocks beside the penultimate features, optional:
            ``"stage2"`` the pooled features of the backbone's stage 2 (timm's
            ``feature_info`` index), ``"gram3"`` the Gram-matrix statistics of stage 3 (see
            :func:`oodlens.network.gram_statistics`); names are lower-case letters, digits
            and ``_``.

    Arrays are validated on construction (shapes agree, real dtype, no NaN/inf) and never
    copied when already floating point, so memory-mapped arrays stay memory-mapped.

    Example:
        >>> import numpy as np
        >>> out = Outputs(logits=np.array([[2.0, -1.0], [0.1, 0.3]]), labels=np.array([0, 1]))
        >>> out.n_samples, out.n_classes
        (2, 2)
    """

    logits: np.ndarray
    labels: np.ndarray | None = None
    features: np.ndarray | None = None
    head_weight: np.ndarray | None = None
    head_bias: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    blocks: Mapping[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        logits = _as_float("logits", self.logits, 2)
        n, c = logits.shape
        if n == 0 or c == 0:
            raise ValueError(
                f"Outputs.logits is empty (shape {logits.shape}); at least one sample and one "
                "class are needed."
            )
        object.__setattr__(self, "logits", logits)
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != (n,):
                raise ValueError(
                    f"Outputs.labels must have shape ({n},) to match logits, got {labels.shape}."
                )
            if labels.dtype.kind == "u" and labels.size and labels.max() > np.iinfo(np.int64).max:
                raise ValueError(
                    f"Outputs.labels has a value ({labels.max()}) too large for int64; class "
                    "labels must be small non-negative integers (or -1 for unknown)."
                )
            if labels.dtype.kind not in "iu":
                if labels.dtype.kind == "f" and np.all(np.isfinite(labels)):
                    if not np.array_equal(labels, np.round(labels)):
                        raise TypeError("Outputs.labels must be integers, got fractional values.")
                    labels = labels.astype(np.int64)
                else:
                    raise TypeError(f"Outputs.labels must be integers, got dtype {labels.dtype}.")
            if labels.size and labels.min() < -1:
                raise ValueError(
                    "Outputs.labels must be >= 0, or -1 for an unknown label; "
                    f"got minimum {labels.min()}."
                )
            object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        if self.features is not None:
            features = _as_float("features", self.features, 2)
            if features.shape[0] != n:
                raise ValueError(
                    f"Outputs.features has {features.shape[0]} rows but logits has {n}; "
                    "both must describe the same samples."
                )
            object.__setattr__(self, "features", features)
        if (self.head_weight is None) != (self.head_bias is None):
            raise ValueError(
                "Outputs.head_weight and Outputs.head_bias must be given together "
                "(a head without bias: pass head_bias=np.zeros(C))."
            )
        if self.head_weight is not None:
            weight = _as_float("head_weight", self.head_weight, 2)
            bias = _as_float("head_bias", self.head_bias, 1)
            if weight.shape[0] != c or bias.shape != (c,):
                raise ValueError(
                    f"The head must map D features to C={c} logits: head_weight must be (C, D) "
                    f"and head_bias (C,), got {weight.shape} and {bias.shape}."
                )
            if self.features is not None and weight.shape[1] != self.features.shape[1]:
                raise ValueError(
                    f"head_weight expects {weight.shape[1]} features but features has "
                    f"{self.features.shape[1]} columns."
                )
            object.__setattr__(self, "head_weight", weight)
            object.__setattr__(self, "head_bias", bias)
        if self.class_names is not None:
            names = tuple(str(x) for x in self.class_names)
            if len(names) != c:
                raise ValueError(f"Outputs.class_names has {len(names)} names for {c} classes.")
            object.__setattr__(self, "class_names", names)
        if self.blocks is not None:
            object.__setattr__(self, "blocks", self._checked_blocks(n) or None)

    def _checked_blocks(self, n: int) -> dict[str, np.ndarray]:
        if not isinstance(self.blocks, Mapping):
            raise TypeError(
                "Outputs.blocks must map block names to (N, D) arrays, got "
                f"{type(self.blocks).__name__}."
            )
        checked = {}
        for name, value in self.blocks.items():
            if not isinstance(name, str) or not _BLOCK_NAME.match(name):
                raise ValueError(
                    f"Outputs.blocks: {name!r} is not a valid block name (lower-case letters, "
                    "digits and '_', starting with a letter, e.g. 'stage2')."
                )
            array = _as_float(f"blocks[{name!r}]", value, 2)
            if array.shape[0] != n:
                raise ValueError(
                    f"Outputs.blocks[{name!r}] has {array.shape[0]} rows but logits has {n}; "
                    "both must describe the same samples."
                )
            checked[name] = array
        return checked

    def block(self, name: str) -> np.ndarray:
        """The named feature block; ``KeyError`` naming the blocks there are when absent."""
        if not self.blocks or name not in self.blocks:
            raise KeyError(
                f"These Outputs have no feature block {name!r} (they have "
                f"{sorted(self.blocks or {}) or 'none'}); extract them with that stage (e.g. "
                "--stages / ExtractOptions(stages=...))."
            )
        return self.blocks[name]

    @property
    def n_samples(self) -> int:
        """Number of samples N."""
        return int(self.logits.shape[0])

    @property
    def n_classes(self) -> int:
        """Number of classes C (logit columns)."""
        return int(self.logits.shape[1])

    @property
    def predictions(self) -> np.ndarray:
        """(N,) predicted class (argmax of the logits)."""
        return np.argmax(self.logits, axis=1)

    @property
    def has_head(self) -> bool:
        """Whether the classifier head (weight and bias) is present."""
        return self.head_weight is not None

    def correct(self) -> np.ndarray:
        """(N,) bool: prediction equals label.

        Raises ``ValueError`` if labels are missing or unknown (-1), or name a class the
        model does not have (a label >= C could never be predicted, so counting it as an
        error would be wrong: map the dataset's class names to the model's first).
        """
        if self.labels is None or np.any(self.labels < 0):
            raise ValueError(
                "These Outputs have no (or unknown) labels, so correctness is undefined; "
                "pass labels=... when building them."
            )
        if self.labels.size and self.labels.max() >= self.n_classes:
            raise ValueError(
                f"Outputs.labels go up to {self.labels.max()} but the model has "
                f"{self.n_classes} classes, so correctness is undefined; map the dataset's "
                "classes to the model's by name first."
            )
        return self.predictions == self.labels

    def subset(self, index: np.ndarray | slice) -> Outputs:
        """Rows selected by an index array, boolean mask or slice (head kept as is)."""
        return Outputs(
            logits=np.asarray(self.logits[index]),
            labels=None if self.labels is None else self.labels[index],
            features=None if self.features is None else np.asarray(self.features[index]),
            head_weight=self.head_weight,
            head_bias=self.head_bias,
            class_names=self.class_names,
            blocks=None
            if self.blocks is None
            else {k: np.asarray(v[index]) for k, v in self.blocks.items()},
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to an uncompressed ``.npz`` file (no pickle), atomically.

        The file is written to a temporary name and renamed, so a crash never leaves a
        half-written file under ``path``. Returns the path written.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        arrays: dict[str, np.ndarray] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.name == "class_names":
                continue
            if f.name == "blocks":
                arrays.update({f"block.{k}": np.asarray(v) for k, v in value.items()})
                continue
            arrays[f.name] = np.asarray(value)
        meta = {"format_version": _FORMAT_VERSION, "class_names": self.class_names}
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        return path

    @classmethod
    def load_dir(cls, folder: str | os.PathLike[str]) -> Outputs:
        """Memory-map a folder written by :class:`OutputsWriter` (the cache's format):
        logits, features and labels stay on disk and are read in row blocks; raises
        ``ValueError`` on a missing, truncated or foreign folder."""
        return _load_dir(cls, folder)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Outputs:
        """Read a file written by :meth:`save`; raises ``ValueError`` on a corrupt file."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"No Outputs file at {str(path)!r}.")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:  # zipfile/ValueError/OSError: all mean the same to the user
            raise ValueError(
                f"{str(path)!r} is not a readable oodlens Outputs file ({exc}); delete it and "
                "extract again."
            ) from exc
        if "logits" not in arrays or "__meta__" not in arrays:
            raise ValueError(f"{str(path)!r} is not an oodlens Outputs file (no logits/meta).")
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(
                f"{str(path)!r} has Outputs format {meta.get('format_version')}, this oodlens "
                f"reads {_FORMAT_VERSION}; extract again."
            )
        names = meta.get("class_names")
        blocks = {k[len("block.") :]: arrays.pop(k) for k in list(arrays) if k.startswith("block.")}
        return cls(
            **arrays, class_names=None if names is None else tuple(names), blocks=blocks or None
        )


#: Version of the folder format of :class:`OutputsWriter` / :meth:`Outputs.load_dir`
#: (2: meta.json lists every file with its size and checksum).
FOLDER_FORMAT_VERSION = 2

#: The keys a folder's ``meta.json`` must hold.
_META_KEYS = (
    "format",
    "format_version",
    "n",
    "logits_shape",
    "features_shape",
    "features_dtype",
    "files",
)


class OutputsWriter:
    """Writes :class:`Outputs` straight into a folder, block by block, so that an extraction
    never holds every feature in memory: raw little-endian row-major files ``logits.bin``
    (float32), ``features.bin`` (float32 or float16) and ``labels.bin`` (int64), the head as
    ``.npy`` files and ``meta.json`` with the shapes and dtypes and, for every file, its
    size and checksum (:func:`oodlens.files.new_digest`), computed while the bytes are
    written (no second read).
    :meth:`Outputs.load_dir` memory-maps it back and checks the files against them.

    Args:
        folder: an existing, empty folder (the cache writes into a temporary one and renames
            it, see :func:`oodlens.files.atomic_dir`).
        features_dtype: ``"float32"`` (default) or ``"float16"`` (half the disk and memory,
            about 3 significant digits).
    """

    def __init__(self, folder: str | os.PathLike[str], features_dtype: str = "float32") -> None:
        if features_dtype not in FEATURE_DTYPES:
            raise ValueError(
                f"features_dtype={features_dtype!r} is not valid; use one of {FEATURE_DTYPES}."
            )
        self.folder = Path(folder)
        self.features_dtype = np.dtype(features_dtype).newbyteorder("<")
        self.n = 0
        self.block_rows: list[int] = []  #: rows of each appended block (for shard assembly)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._files = {
            name: open(self.folder / f"{name}.bin", "wb")  # noqa: SIM115 (closed in finish)
            for name in ("logits", "features", "labels")
        }
        self._digests = {name: new_digest() for name in self._files}
        self._sizes = dict.fromkeys(self._files, 0)
        #: the names of the feature blocks (set by the first append)
        self.block_names: tuple[str, ...] | None = None

    def append(
        self,
        logits: np.ndarray,
        features: np.ndarray | None,
        labels: np.ndarray,
        blocks: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Append a block of rows (the same number in each array; ``features`` may be
        ``None`` for outputs without features, in every block; ``blocks``: the named feature
        blocks of these rows, the same names in every block, stored as float32 whatever
        ``features_dtype`` (Gram statistics exceed float16's range) in ``block_<name>.bin``)."""
        rows = len(logits)
        blocks = dict(blocks or {})
        if (
            (features is not None and len(features) != rows)
            or len(labels) != rows
            or any(len(b) != rows for b in blocks.values())
        ):
            raise ValueError("OutputsWriter.append needs the same number of rows in each array.")
        if self.block_names is None:
            self.block_names = tuple(sorted(blocks))
            for name in self.block_names:
                key = f"block_{name}"
                self._files[key] = open(self.folder / f"{key}.bin", "wb")  # noqa: SIM115
                self._digests[key], self._sizes[key] = new_digest(), 0
        elif tuple(sorted(blocks)) != self.block_names:
            raise ValueError(
                f"OutputsWriter: feature blocks changed from {list(self.block_names)} to "
                f"{sorted(blocks)}."
            )
        for name, array, dtype in (
            ("logits", logits, np.dtype("<f4")),
            ("features", features, self.features_dtype),
            ("labels", labels, np.dtype("<i8")),
            *((f"block_{k}", v, np.dtype("<f4")) for k, v in sorted(blocks.items())),
        ):
            if array is None:
                continue
            block = np.ascontiguousarray(array, dtype=dtype)
            shape = block.shape[1:]
            if self.shapes.setdefault(name, shape) != shape:
                raise ValueError(f"OutputsWriter: {name} rows changed shape to {shape}.")
            data = block.tobytes()
            self._files[name].write(data)
            self._digests[name].update(data)
            self._sizes[name] += len(data)
        self.n += rows
        self.block_rows.append(rows)

    def empty_block(self) -> None:
        """Record a block with no rows (a batch whose images were all skipped as corrupt)."""
        self.block_rows.append(0)

    def finish(
        self,
        head_weight: np.ndarray | None,
        head_bias: np.ndarray | None,
        class_names: tuple[str, ...] | None = None,
        load: bool = True,
    ) -> Outputs | None:
        """Close the files, write the head and ``meta.json``; return the memory-mapped
        :class:`Outputs` (validated like any other), or ``None`` with ``load=False`` (a
        shard may hold no rows at all)."""
        for fh in self._files.values():
            fh.close()
        files = {
            f"{name}.bin": {"size": self._sizes[name], "xxh3_128": d.hexdigest()}
            for name, d in self._digests.items()
        }
        if head_weight is not None:
            for name, array in (("head_weight", head_weight), ("head_bias", head_bias)):
                buffer = io.BytesIO()
                np.save(buffer, np.asarray(array, dtype=np.float32))
                data = buffer.getvalue()
                (self.folder / f"{name}.npy").write_bytes(data)
                digest = new_digest()
                digest.update(data)
                files[f"{name}.npy"] = {"size": len(data), "xxh3_128": digest.hexdigest()}
        meta = {
            "format": "oodlens-outputs-folder",
            "format_version": FOLDER_FORMAT_VERSION,
            "n": self.n,
            "logits_shape": list(self.shapes.get("logits", ())),
            "features_shape": list(self.shapes["features"]) if "features" in self.shapes else None,
            "features_dtype": self.features_dtype.str,
            "class_names": None if class_names is None else list(class_names),
            "block_rows": self.block_rows,
            "blocks": {k: list(self.shapes.get(f"block_{k}", ())) for k in self.block_names or ()},
            "files": files,
        }
        (self.folder / "meta.json").write_text(json.dumps(meta))
        return Outputs.load_dir(self.folder) if load else None

    def close(self) -> None:
        """Close the files without finishing (after a failure)."""
        for fh in self._files.values():
            fh.close()


def check_folder(folder: str | os.PathLike[str], verify: bool = False) -> dict[str, Any]:
    """Check a folder written by :class:`OutputsWriter` against its ``meta.json``: every
    listed file present with its recorded size (cheap), and with ``verify`` its
    digest too (reads every byte). Returns the meta.

    Raises:
        ValueError: naming the folder and the first problem (an unreadable ``meta.json``, a
            missing field, a missing, truncated, grown or altered file).
    """
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{str(folder)!r} has no readable meta.json ({exc}).") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{str(folder)!r}: meta.json does not hold a mapping.")
    if meta.get("format") != "oodlens-outputs-folder" or meta.get("format_version") != (
        FOLDER_FORMAT_VERSION
    ):
        raise ValueError(
            f"{str(folder)!r} has an unknown Outputs folder format "
            f"({meta.get('format')!r} version {meta.get('format_version')!r}); extract again."
        )
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{str(folder)!r}: meta.json lacks {missing}.")
    files = meta["files"]
    if not isinstance(files, dict) or not {"logits.bin", "labels.bin"} <= set(files):
        raise ValueError(f"{str(folder)!r}: meta.json does not list the entry's files.")
    for name, record in files.items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{str(path)!r} is missing.")
        size = path.stat().st_size
        if size != record.get("size"):
            raise ValueError(f"{str(path)!r} has {size} bytes, {record.get('size')} were written.")
        if verify and file_digest(path) != record.get("xxh3_128"):
            raise ValueError(f"{str(path)!r} does not match its checksum (its bytes changed).")
    return meta


def _load_dir(cls: type[Outputs], folder: str | os.PathLike[str]) -> Outputs:
    folder = Path(folder)
    meta = check_folder(folder)
    try:
        n = int(meta["n"])
        arrays: dict[str, Any] = {}
        for name, dtype, shape in (
            ("logits", "<f4", meta["logits_shape"]),
            ("features", meta["features_dtype"], meta["features_shape"]),
            ("labels", "<i8", []),
        ):
            if shape is None:  # written without features
                continue
            path = folder / f"{name}.bin"
            full = (n, *shape)
            expected = int(np.prod(full, dtype=np.int64)) * np.dtype(dtype).itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise ValueError(f"{str(path)!r} is missing or truncated; extract again.")
            # an empty file cannot be mapped (a zero-width array): read it as an empty array
            arrays[name] = (
                np.memmap(path, dtype=dtype, mode="r", shape=full)
                if expected
                else np.zeros(full, dtype=dtype)
            )
        blocks = {}
        for name, shape in (meta.get("blocks") or {}).items():
            path = folder / f"block_{name}.bin"
            full = (n, *shape)
            expected = int(np.prod(full, dtype=np.int64)) * 4
            if not path.is_file() or path.stat().st_size != expected:
                raise ValueError(f"{str(path)!r} is missing or truncated; extract again.")
            blocks[name] = (
                np.memmap(path, dtype="<f4", mode="r", shape=full)
                if expected
                else np.zeros(full, dtype="<f4")
            )
        if "head_weight.npy" in meta["files"]:
            arrays["head_weight"] = np.load(folder / "head_weight.npy", allow_pickle=False)
            arrays["head_bias"] = np.load(folder / "head_bias.npy", allow_pickle=False)
    except (OSError, EOFError, TypeError, KeyError) as exc:
        raise ValueError(f"{str(folder)!r} cannot be read ({type(exc).__name__}: {exc}).") from None
    names = meta.get("class_names")
    return cls(**arrays, class_names=None if names is None else tuple(names), blocks=blocks or None)
