"""One on-disk cache for extracted :class:`Outputs` and trained checkpoints, each keyed by
everything that determines it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import iter_row_chunks, rows_per_chunk
from .files import atomic_dir, atomic_path, check_writable_dir
from .outputs import Outputs, OutputsWriter

__all__ = ["default_cache_dir", "file_sha256", "Cache", "EXTRACTION_VERSION"]

log = logging.getLogger(__name__)

#: Bump when extraction or training changes what it produces for the same inputs.
EXTRACTION_VERSION = 2  # 2: entries are memory-mapped folders (OutputsWriter), not .npz


def default_cache_dir() -> Path:
    """``$OODLENS_CACHE_DIR``, else ``$XDG_CACHE_HOME/oodlens``, else ``~/.cache/oodlens``."""
    env = os.environ.get("OODLENS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "oodlens"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Cache:
    """A folder with ``outputs/<key>.npz`` and ``checkpoints/<model>-<key>.safetensors``.

    Writes are atomic (temp file + rename). Keys hash a JSON description of everything that
    determines the entry (for outputs: model, weights hash, dataset fingerprint, transform;
    for checkpoints: the training config and the fingerprints of its data).

    Args:
        directory: cache folder (created on first write; default :func:`default_cache_dir`).
        enabled: ``False`` makes every lookup a miss and stores nothing (``--no-cache``).
    """

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, enabled: bool = True
    ) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.enabled = enabled

    def check_writable(self) -> None:
        """Raise ``OSError`` naming the folder if the cache is on and cannot be written."""
        if self.enabled:
            check_writable_dir(self.directory, "Cache folder (--cache-dir)")

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        """Stable hash of a JSON-able description of an entry."""
        blob = json.dumps(
            {**parts, "extraction_version": EXTRACTION_VERSION}, sort_keys=True, default=str
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def outputs_path(self, key: str) -> Path:
        """The folder of one cached :class:`Outputs` (see :meth:`Outputs.load_dir`)."""
        return self.directory / "outputs" / key

    def get_outputs(self, key: str) -> Outputs | None:
        """The cached outputs, memory-mapped, or ``None`` (a miss, or an unreadable entry,
        which is removed)."""
        if not self.enabled:
            return None
        path = self.outputs_path(key)
        if not path.exists():
            return None
        try:
            return Outputs.load_dir(path)
        except ValueError as exc:
            log.warning("Discarding unreadable cache entry %s (%s); extracting again.", path, exc)
            shutil.rmtree(path, ignore_errors=True)
            return None

    def put_outputs(
        self, key: str, outputs: Outputs, features_dtype: str = "float32"
    ) -> Path | None:
        """Store outputs (atomically: written under a temporary name, then renamed)."""
        if not self.enabled:
            return None
        path = self.outputs_path(key)
        with atomic_dir(path) as tmp:
            writer = OutputsWriter(tmp, features_dtype)
            for start, block in iter_row_chunks(outputs.logits, rows_per_chunk(outputs.n_classes)):
                rows = slice(start, start + len(block))
                features = None if outputs.features is None else outputs.features[rows]
                labels = np.full(len(block), -1) if outputs.labels is None else outputs.labels[rows]
                writer.append(block, features, labels)
            writer.finish(outputs.head_weight, outputs.head_bias, outputs.class_names)
        return path

    def get_json(self, kind: str, key: str) -> Any:
        """A cached JSON value (e.g. ``kind="hashes"``), or ``None`` (miss or unreadable)."""
        if not self.enabled:
            return None
        path = self.directory / kind / f"{key}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def put_json(self, kind: str, key: str, value: Any) -> None:
        """Store a JSON value atomically (nothing when the cache is off)."""
        if not self.enabled:
            return
        with atomic_path(self.directory / kind / f"{key}.json") as tmp:
            tmp.write_text(json.dumps(value))

    def checkpoint_path(self, key: str, model: str) -> Path:
        """Where the checkpoint of a model trained with this key lives (or will)."""
        return self.directory / "checkpoints" / f"{model}-{key}.safetensors"
