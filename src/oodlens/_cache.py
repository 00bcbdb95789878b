"""On-disk cache of extracted :class:`Outputs`, keyed by everything that determines them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ._outputs import Outputs

__all__ = ["default_cache_dir", "file_sha256", "OutputsCache", "EXTRACTION_VERSION"]

log = logging.getLogger(__name__)

#: Bump when extraction changes what it produces for the same inputs.
EXTRACTION_VERSION = 1


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


class OutputsCache:
    """A folder of ``<key>.npz`` files. Writes are atomic (temp file + rename).

    Args:
        directory: cache folder (created on first write).
        enabled: ``False`` makes every lookup a miss and stores nothing (``--no-cache``).
    """

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, enabled: bool = True
    ) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.enabled = enabled

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        """Stable hash of a JSON-able description of the extraction."""
        blob = json.dumps(
            {**parts, "extraction_version": EXTRACTION_VERSION}, sort_keys=True, default=str
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.directory / "outputs" / f"{key}.npz"

    def get(self, key: str) -> Outputs | None:
        """The cached outputs, or ``None`` (a miss, or an unreadable entry, which is removed)."""
        if not self.enabled:
            return None
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return Outputs.load(path)
        except ValueError as exc:
            log.warning("Discarding unreadable cache entry %s (%s); extracting again.", path, exc)
            path.unlink(missing_ok=True)
            return None

    def put(self, key: str, outputs: Outputs) -> Path | None:
        if not self.enabled:
            return None
        return outputs.save(self.path(key))
