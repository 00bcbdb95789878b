"""Fitted state on disk without pickle: one safetensors file holding the arrays, with the
rest (parameters, scalars, strings, provenance) as JSON in its metadata.

A state is plain data: numpy arrays, numbers, strings, booleans, ``None``, tuples and lists of these,
and mappings with string keys of any of these (nested). :func:`write_state` splits it into
the arrays (stored as safetensors tensors, any of which may be stored as float16 on request)
and a JSON document; :func:`read_state` puts it back together, the arrays memory-mapped from
the file (a large neighbour bank is not read into memory). Reading never executes code from
the file: the header is parsed as JSON, the arrays are mapped by their offsets.

Every array's checksum is recorded, and one checksum covers the JSON document with them,
so a truncated or altered file is refused with a message naming the file and what is wrong.
The file is a standard safetensors file (``safetensors.safe_open`` reads it too).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_path, new_digest

__all__ = ["FORMAT", "FORMAT_VERSION", "write_state", "read_state", "check_plain"]

#: The ``format`` of every oodlens state file; ``kind`` tells a scorer from a detector.
FORMAT = "oodlens-state"
#: Version of the layout; a file of a newer version is refused (upgrade oodlens to read it).
FORMAT_VERSION = 1
#: Arrays of at least this many bytes are memory-mapped by :func:`read_state`; smaller ones
#: are read into memory.
MMAP_BYTES = 16 << 20

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_SCALARS = (str, int, float, bool, type(None))


def _digest(data: bytes | memoryview | np.ndarray) -> str:
    h = new_digest()
    if isinstance(data, np.ndarray):
        flat = data.reshape(-1)
        step = max(1, (1 << 24) // max(1, data.itemsize))  # 16 MiB at a time
        for start in range(0, flat.size, step):
            h.update(np.ascontiguousarray(flat[start : start + step]).view(np.uint8))
    else:
        h.update(data)
    return h.hexdigest()


def check_plain(value: Any, where: str) -> None:
    """Raise ``TypeError`` naming ``where`` unless ``value`` is plain state data (see the
    module docstring)."""
    if isinstance(value, (np.ndarray, np.generic, *_SCALARS)):
        return
    if isinstance(value, tuple | list):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or "/" in key:
                raise TypeError(f"{where}: key {key!r} is not a string without '/'.")
            check_plain(item, f"{where}/{key}")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which a state file cannot hold (arrays, "
        "numbers, strings, None, tuples, lists and mappings of these only)."
    )


def _split(value: Any, where: str, arrays: dict[str, np.ndarray], half: Collection[str]) -> Any:
    """The JSON form of ``value``; its arrays go into ``arrays`` under their path."""
    if isinstance(value, np.ndarray):
        # a Fortran-ordered array is stored as its (C-ordered) transpose and read back as
        # a Fortran-ordered view: the memory order decides which BLAS kernels a product
        # uses, so keeping it keeps the scores bit for bit
        fortran = value.ndim > 1 and value.flags.f_contiguous and not value.flags.c_contiguous
        array = np.array(value.T if fortran else value, order="C", copy=None)  # keeps 0-d
        if where in half and array.dtype.kind == "f":
            array = array.astype(np.float16)
        if array.dtype.kind not in "fiub" or array.dtype.byteorder == ">":
            raise TypeError(f"{where}: arrays of dtype {array.dtype} cannot be stored.")
        arrays[where] = array
        return {"$array": where, "fortran": True} if fortran else {"$array": where}
    if isinstance(value, np.generic):
        return _split(value.item(), where, arrays, half)
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, tuple | list):
        kind = "$tuple" if isinstance(value, tuple) else "$list"
        return {kind: [_split(v, f"{where}/{i}", arrays, half) for i, v in enumerate(value)]}
    if isinstance(value, Mapping):
        return {"$map": {k: _split(v, f"{where}/{k}", arrays, half) for k, v in value.items()}}
    return value


def _join(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if "$array" in value:
            array = arrays[value["$array"]]
            return array.T if value.get("fortran") else array
        if "$float" in value:
            return float(value["$float"])
        if "$tuple" in value:
            return tuple(_join(v, arrays) for v in value["$tuple"])
        if "$list" in value:
            return [_join(v, arrays) for v in value["$list"]]
        if "$map" in value:
            return {k: _join(v, arrays) for k, v in value["$map"].items()}
    return value


def write_state(
    path: str | os.PathLike[str],
    kind: str,
    state: Mapping[str, Any],
    half: Collection[str] = (),
) -> Path:
    """Write ``state`` (plain data, see the module docstring) as one safetensors file,
    atomically. ``kind`` names what it is (``"scorer"``, ``"detector"``); ``half``: the
    paths of arrays (``state/<key>/<key>...``) to store as float16: half the disk and
    memory, about 3 significant digits (scores from them differ slightly from the fitted
    object's); they are read back as float16, memory-mapped. Returns the path written."""
    from safetensors.numpy import save_file

    check_plain(state, kind)
    arrays: dict[str, np.ndarray] = {}
    document = _split(dict(state), "state", arrays, half)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "state": document,
        "digests": {name: _digest(a) for name, a in arrays.items()},
    }
    text = json.dumps(meta, sort_keys=True, allow_nan=False)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(
            arrays,
            str(tmp),
            metadata={"oodlens": text, "oodlens_digest": _digest(text.encode())},
        )
    return path


def _damaged(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{str(path)!r} is not a usable oodlens state file: {problem}. It is damaged or was "
        "changed since it was written: write it again (oodlens fit, or save)."
    )


def read_state(path: str | os.PathLike[str], kind: str, mmap: bool = True) -> dict[str, Any]:
    """The state written by :func:`write_state`: with ``mmap``, its arrays of
    :data:`MMAP_BYTES` or more memory-mapped (read-only) from the file, the others (and all
    without ``mmap``) read into memory. Every digest is checked (which reads every byte
    once).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an oodlens state file of this ``kind``, a newer format version, or a
            truncated or altered file, in one line naming the file and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No oodlens {kind} file at {str(path)!r}.")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _damaged(path, f"{size} bytes, shorter than any safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise _damaged(path, f"its header claims {n} bytes of a {size}-byte file")
        try:
            header = json.loads(fh.read(n))
        except ValueError as exc:
            raise _damaged(path, f"its header is not JSON ({exc})") from None
    metadata = header.pop("__metadata__", None) or {}
    text = metadata.get("oodlens")
    if not isinstance(text, str):
        raise ValueError(
            f"{str(path)!r} is a safetensors file without oodlens's description: not an "
            f"oodlens {kind} file, or its header was damaged."
        )
    if metadata.get("oodlens_digest") != _digest(text.encode()):
        raise _damaged(path, "its description does not match its checksum")
    meta = json.loads(text)
    if meta.get("format") != FORMAT or meta.get("kind") != kind:
        raise ValueError(
            f"{str(path)!r} is an oodlens {meta.get('kind')!r} file, not a {kind} file."
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has state format version {version!r}; this oodlens reads up to "
            f"{FORMAT_VERSION}: upgrade oodlens (pip install -U oodlens) to load it."
        )
    digests = meta.get("digests", {})
    if set(digests) != set(header):
        raise _damaged(path, "its list of arrays does not match its header")
    start = 8 + n
    arrays: dict[str, np.ndarray] = {}
    for name, info in header.items():
        dtype = _DTYPES.get(info.get("dtype"))
        lo, hi = info.get("data_offsets", (0, -1))
        shape = tuple(info.get("shape", ()))
        if dtype is None:
            raise _damaged(path, f"array {name!r} has dtype {info.get('dtype')!r}")
        if start + hi > size or hi - lo != math.prod(shape) * np.dtype(dtype).itemsize:
            raise _damaged(path, f"array {name!r} lies beyond the end of the file (truncated)")
        if mmap and hi - lo >= MMAP_BYTES:
            array = np.memmap(path, dtype=dtype, mode="r", offset=start + lo, shape=shape)
        else:  # into memory numpy allocates (a mapped array's alignment can change the
            # vectorised kernels' rounding, so small arrays are read: bit-for-bit scores)
            array = np.empty(shape, dtype=dtype)
            with open(path, "rb") as fh:
                fh.seek(start + lo)
                fh.readinto(memoryview(array.reshape(-1)).cast("B"))
        if _digest(array) != digests[name]:
            raise _damaged(path, f"array {name!r} does not match its checksum")
        arrays[name] = array
    return _join(meta["state"], arrays)
