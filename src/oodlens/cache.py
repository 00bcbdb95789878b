"""One on-disk cache for extracted :class:`Outputs` and trained checkpoints, each keyed by
everything that determines it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import iter_row_chunks, rows_per_chunk
from .files import atomic_dir, atomic_path, check_writable_dir, remove_stale_temporaries
from .outputs import Outputs, OutputsWriter, check_folder

__all__ = ["default_cache_dir", "file_sha256", "Cache", "EXTRACTION_VERSION"]

log = logging.getLogger(__name__)

#: Bump when extraction or training changes what it produces for the same inputs.
#: 2: entries are memory-mapped folders (OutputsWriter), not .npz; 3: entries list their
#: files' sizes and checksums, images are read as shown (EXIF orientation, 16-bit scaling)
EXTRACTION_VERSION = 3

#: The stamp an entry gets when its checksums were verified: each file's size and mtime then.
_VERIFIED = "verified.json"


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
    """A folder with ``outputs/<key>/`` (memory-mapped :class:`Outputs` folders, each
    listing its files' sizes and checksums) and ``checkpoints/<model>-<key>.safetensors``.

    Writes are atomic (temp file + rename). Keys hash a JSON description of everything that
    determines the entry (for outputs: model, weights hash, dataset fingerprint, transform,
    the extraction options that change a row; for checkpoints: the training config and the
    fingerprints of its data). Entries are checked when loaded (see :meth:`get_outputs`); a
    read-only cache that holds every entry a run needs is usable.

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
        """Raise ``OSError`` naming the folder if the cache is on and cannot be used: a file,
        or a folder that cannot be created. An existing read-only folder passes: its entries
        are read (a run that needs to write a missing one stops there, naming it)."""
        if self.enabled and not (self.directory.is_dir() and not self.writable):
            check_writable_dir(self.directory, "Cache folder (--cache-dir)")

    @property
    def writable(self) -> bool:
        """Whether entries can be added (the folder, or the parent it would be created in,
        is writable)."""
        probe = self.directory
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return os.access(probe, os.W_OK | os.X_OK)

    def check_can_add(self, what: str) -> None:
        """Raise ``PermissionError`` naming ``what`` if the cache is read-only (it holds no
        entry for ``what``, and one cannot be written)."""
        if self.enabled and not self.writable:
            raise PermissionError(
                f"Cache folder {str(self.directory)!r} is read-only and holds no entry for "
                f"{what}; give a writable --cache-dir (or --no-cache)."
            )

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
        """The cached outputs, memory-mapped, or ``None``: a miss, or a damaged entry
        (reported in one line naming it, then removed, so that it is extracted again).

        Every load checks that the entry's files are present with the sizes written (cheap);
        the checksums are verified once (the first load after the entry was written) and
        again whenever a file's size or modification time differs from that verification,
        never on every load of a large memory map.
        """
        if not self.enabled:
            return None
        path = self.outputs_path(key)
        if not path.exists():
            return None
        try:
            outputs = Outputs.load_dir(path)
            if not self._still_verified(path):
                self.verify_entry(path)
        except ValueError as exc:
            log.warning(
                "Cache entry %s is damaged (%s); removing it and extracting again.", path, exc
            )
            shutil.rmtree(path, ignore_errors=True)
            return None
        return outputs

    def load_written(self, key: str) -> Outputs:
        """Outputs an extraction has just written into the cache, their checksums verified
        (the entry's first verification: a disk that lost bytes fails here, not later)."""
        path = self.outputs_path(key)
        outputs = Outputs.load_dir(path)
        self.verify_entry(path)
        return outputs

    @staticmethod
    def _file_stamps(path: Path) -> dict[str, list[int]]:
        names = ["meta.json", *json.loads((path / "meta.json").read_text())["files"]]
        return {
            n: [(path / n).stat().st_size, (path / n).stat().st_mtime_ns]
            for n in names
            if (path / n).is_file()
        }

    def _still_verified(self, path: Path) -> bool:
        try:
            return json.loads((path / _VERIFIED).read_text()) == self._file_stamps(path)
        except (OSError, ValueError):
            return False

    def verify_entry(self, path: str | os.PathLike[str]) -> None:
        """Verify every checksum of one outputs entry and stamp it as verified (no stamp in
        a read-only cache: it is verified again next time).

        Raises:
            ValueError: naming the entry and the first damaged file.
        """
        path = Path(path)
        check_folder(path, verify=True)
        if self.writable:
            with contextlib.suppress(OSError):
                (path / _VERIFIED).write_text(json.dumps(self._file_stamps(path)))

    def verify(self, repair: bool = False) -> list[tuple[Path, str]]:
        """Verify every outputs entry's checksums (``oodlens cache verify``): returns the
        damaged entries with their problem; ``repair`` removes them (they are extracted
        again on the next run)."""
        damaged: list[tuple[Path, str]] = []
        folder = self.directory / "outputs"
        entries = (
            sorted(p for p in folder.iterdir() if not p.name.startswith("."))
            if (folder.is_dir())
            else []
        )
        for path in entries:
            try:
                self.verify_entry(path)
            except ValueError as exc:
                damaged.append((path, str(exc)))
                if repair:
                    shutil.rmtree(path, ignore_errors=True)
        return damaged

    def remove_stale_temporaries(self) -> list[Path]:
        """Remove the temporary files and folders that killed runs left in the cache (never
        those of a live process; see :func:`oodlens.files.remove_stale_temporaries`)."""
        removed: list[Path] = []
        for sub in ("outputs", "checkpoints", "hashes"):
            with contextlib.suppress(OSError):
                removed += remove_stale_temporaries(self.directory / sub)
        return removed

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
                blocks = {k: v[rows] for k, v in (outputs.blocks or {}).items()}
                writer.append(block, features, labels, blocks)
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
        if not self.enabled or not self.writable:
            return  # a read-only cache computes such values again each time
        with atomic_path(self.directory / kind / f"{key}.json") as tmp:
            tmp.write_text(json.dumps(value))

    def checkpoint_path(self, key: str, model: str) -> Path:
        """Where the checkpoint of a model trained with this key lives (or will)."""
        return self.directory / "checkpoints" / f"{model}-{key}.safetensors"
