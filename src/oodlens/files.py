"""Safe file writing: atomic replacement, cleanup on failure, and early writability checks."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_dir", "check_writable_dir", "check_new_or_owned_file"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``.

    On any failure (an exception, or Ctrl-C) the temporary file is removed and ``path`` is
    left as it was, so a reader never sees a half-written file and nothing is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``.

    The old folder (if any) is moved aside, the new one renamed into place, and the old one
    deleted; on failure (an exception, or Ctrl-C) the temporary folder is deleted and the
    old ``path`` is untouched, so a report is never a mix of two runs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_writable_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Raise ``OSError`` naming ``path`` unless it is (or can be created as) a writable folder.

    Creates nothing: an absent folder is checked through its nearest existing parent.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what} {str(path)!r} is a file, not a folder.")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(
            f"{what} {str(path)!r} cannot be created: {str(probe)!r} is a file, not a folder."
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{what} {str(path)!r} is not writable (no write access to {str(probe)!r})."
        )
    return path


def check_new_or_owned_file(path: str | os.PathLike[str], what: str, owned: bool | None) -> Path:
    """Raise unless ``path`` can be written without destroying someone else's file.

    Args:
        path: the file to write.
        what: how to name it in messages (e.g. ``"--out"``).
        owned: whether an existing file at ``path`` was written by oodlens (``None`` when
            ``path`` does not exist); a file that is not is never overwritten.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{what} {str(path)!r} is a folder; give a file name inside it.")
    if path.exists() and not owned:
        raise FileExistsError(
            f"{what} {str(path)!r} exists and is not an oodlens file; refusing to overwrite it. "
            "Choose another name or delete it."
        )
    check_writable_dir(path.parent, f"The folder of {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{what} {str(path)!r} is not writable.")
    return path
