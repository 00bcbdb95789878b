"""Datasets addressed by spec strings a user can type.

Grammar: ``KIND:ARG,key=value,...[@SPLIT]`` or a folder path ``PATH[@SPLIT]``.

* ``digits[:CLASSES]`` -- scikit-learn's embedded 8x8 digits (always offline), e.g.
  ``digits:0-4`` or ``digits:1,3,5``; labels are re-indexed 0..k-1 in the given order.
* ``noise:gaussian`` / ``noise:uniform`` -- synthetic far-OOD images, options ``n`` (500),
  ``size`` (32), ``seed`` (0).
* ``corrupt:BASE,types=a+b,severity=1-5,seed=0`` -- CIFAR-10-C-style corruptions of another
  set (see :mod:`oodlens.corruptions`), one per image; a covariate-shifted copy of ``BASE``.
* ``torchvision:NAME`` -- a torchvision dataset (downloaded; needs the internet), option
  ``root``.
* a folder path -- torchvision ``ImageFolder`` layout (one sub-folder per class), or a flat
  folder of images (one class named after the folder).

``@train`` / ``@test`` pick a deterministic split: a folder's own ``train/`` and ``test/``
sub-folders when present, otherwise a stable 80/20 split by a hash of each sample's id (file
path relative to the folder, or index for built-in sets, so a copy of the data elsewhere
splits the same way); torchvision sets use their official split. ``@all`` (the
default) takes everything.

New kinds come from plugins through the ``register_datasets`` hook; resolve any spec with
:func:`oodlens.load_dataset` (which looks the kind up in the registry).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .errors import moved_names
from .progress import progress_bar

__all__ = [
    "DatasetSource",
    "CorruptImageError",
    "align_classes",
    "holdout_split",
    "content_hashes",
    "parse_spec",
    "class_name",
    "as_shown",
    "files_source",
    "split_spec",
    "spec_split",
    "load_folder_source",
    "load_digits_source",
    "load_noise_source",
    "load_torchvision_source",
]

__getattr__ = moved_names(__name__, {"load_dataset": "oodlens", "list_datasets": "oodlens"})

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("all", "train", "test")


class CorruptImageError(ValueError):
    """An image file could not be read or decoded."""


@dataclass
class DatasetSource:
    """A dataset resolved from a spec: samples as PIL images with integer labels.

    Attributes:
        spec: the spec string it came from (with split).
        classes: class names, index = label.
        ids: one stable id per sample (file path or index) -- the cache fingerprint.
        loader: ``loader(i) -> PIL.Image`` (RGB); raises :class:`CorruptImageError`.
        labels: (N,) int labels.
        fingerprint_extra: anything else that changes the data (e.g. noise seed).
        keys: stable per-sample names for the deterministic splits (for folders, the path
            relative to the dataset folder, so a copy elsewhere splits the same way);
            ``None``: the ids.
        files: the ids are image files that ``loader`` only opens (as :func:`as_shown`
            shows them), so a decoder may read a file's bytes instead (``--decode device``).
    """

    spec: str
    classes: tuple[str, ...]
    ids: list[str]
    labels: np.ndarray
    loader: Callable[[int], Image.Image] = field(repr=False)
    fingerprint_extra: str = ""
    keys: list[str] | None = field(default=None, repr=False)
    files: bool = False

    def split_keys(self) -> list[str]:
        """The names the deterministic splits hash (``keys``, else ``ids``)."""
        return self.ids if self.keys is None else self.keys

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """Hash of the spec, sample ids, labels and (for files) sizes and mtimes."""
        h = hashlib.sha256(self.spec.encode())
        h.update(self.fingerprint_extra.encode())
        for sid in self.ids:
            h.update(sid.encode())
            if os.path.isfile(sid):
                st = os.stat(sid)
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()

    def subset(self, index: Sequence[int], spec: str) -> DatasetSource:
        index = list(index)
        base = self.loader
        return DatasetSource(
            spec=spec,
            classes=self.classes,
            ids=[self.ids[i] for i in index],
            labels=self.labels[index],
            loader=lambda i: base(index[i]),
            fingerprint_extra=self.fingerprint_extra,
            keys=None if self.keys is None else [self.keys[i] for i in index],
            files=self.files,
        )


def parse_spec(spec: str, kinds: Sequence[str] = ()) -> tuple[str, str, dict[str, str], str]:
    """Split ``KIND:ARG,k=v@SPLIT`` into (kind, arg, options, split). A path has kind ''.

    ``kinds`` are the registered kind names, so that a bare ``KIND`` (e.g. ``"digits"``) is
    read as a kind rather than a relative path.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"A dataset spec must be a non-empty string, got {spec!r}.")
    body, split = spec_split(spec)
    split = split or "all"
    kind, rest = "", body
    head = body.split(":", 1)[0]
    if ":" in body and head and all(ch.isalnum() or ch in "_-" for ch in head) and len(head) > 1:
        kind, rest = body.split(":", 1)
    elif body in kinds:
        kind, rest = body, ""
    if not kind:
        return "", body, {}, split
    arg, options = "", {}
    for token in (t for t in rest.split(",") if t):
        if "=" in token:
            k, v = token.split("=", 1)
            options[k.strip()] = v.strip()
        elif not arg:
            arg = token.strip()
        else:
            raise ValueError(
                f"Dataset spec {spec!r} has two positional arguments ({arg!r}, {token!r})."
            )
    return kind, arg, options, split


def spec_split(spec: str) -> tuple[str, str | None]:
    """``(body, split)`` of a spec: the text after its last ``@`` is the split when it is one
    of ``all``, ``train``, ``test``; an ``@`` inside a path (the text after it holds a ``/``,
    or the whole spec is an existing path) is part of the path, and the split is ``None``.

    Example:
        >>> spec_split("digits:0-4@test")
        ('digits:0-4', 'test')
        >>> spec_split("data/with@sign/cats")
        ('data/with@sign/cats', None)

    Raises:
        ValueError: the text after the last ``@`` is neither a split nor part of a path.
    """
    body, at, tail = spec.rpartition("@")
    if not at:
        return spec, None
    if tail in SPLITS:
        return body, tail
    if "/" in tail or os.sep in tail or Path(spec).expanduser().exists():
        return spec, None
    raise ValueError(
        f"Unknown split {tail!r} in dataset spec {spec!r}; valid splits: {', '.join(SPLITS)}."
    )


def split_spec(spec: str, split: str) -> str:
    """``spec`` with its split replaced by ``split``."""
    return f"{spec_split(spec)[0]}@{split}"


def _hash_split(source: DatasetSource, split: str, test_fraction: float = 0.2) -> DatasetSource:
    """Deterministic split: the ``round(test_fraction * N)`` samples with the smallest hash of
    their id form ``test``, the rest ``train`` (independent of order and of other files)."""
    if split == "all":
        return source
    keys = [hashlib.sha1(sid.encode()).hexdigest() for sid in source.split_keys()]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    n_test = round(test_fraction * len(keys))
    test = set(order[:n_test])
    pick = [i for i in range(len(keys)) if (i in test) == (split == "test")]
    if not pick:
        raise ValueError(
            f"'{source.spec}@{split}' has no images: the {len(keys)} image(s) of "
            f"{source.spec!r} give {n_test} test and {len(keys) - n_test} train image(s) in the "
            f"{1 - test_fraction:.0%}/{test_fraction:.0%} hash split. Add images, give the folder "
            "its own train/ and test/ sub-folders, or use @all."
        )
    return source.subset(pick, f"{source.spec}@{split}")


def holdout_split(
    source: DatasetSource, val_fraction: float, calib_fraction: float
) -> tuple[DatasetSource, DatasetSource | None, DatasetSource | None]:
    """Deterministic held-out splits: ``(rest, val, calib)``.

    Each sample goes to ``val`` when a hash of its id, read as a number u in [0, 1), is below
    ``val_fraction``, to ``calib`` when u lies in the next ``calib_fraction``, else to
    ``rest``. The assignment depends only on the sample's own id (adding or removing other
    samples never moves it), and the hash is salted differently from the ``@train/@test``
    split. A fraction of 0 gives ``None``.

    Raises:
        ValueError: a positive fraction that selects no sample, or one that leaves nothing.
    """
    for name, frac in (("val_fraction", val_fraction), ("calib_fraction", calib_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {frac!r}.")
    if val_fraction + calib_fraction >= 1.0:
        raise ValueError("val_fraction + calib_fraction must be below 1.")
    u = np.array(
        [
            int(hashlib.sha1(f"holdout:{key}".encode()).hexdigest()[:13], 16)
            for key in source.split_keys()
        ]
    )
    u = u / float(16**13)
    groups = np.where(u < val_fraction, 1, np.where(u < val_fraction + calib_fraction, 2, 0))
    parts: list[DatasetSource | None] = []
    for k, (label, frac) in enumerate(
        (("rest", 1.0), ("val", val_fraction), ("calib", calib_fraction))
    ):
        index = np.flatnonzero(groups == k).tolist()
        if frac == 0.0:
            parts.append(None)
            continue
        if not index:
            raise ValueError(
                f"The {label} split of {source.spec!r} is empty: {len(source)} sample(s) with "
                f"val_fraction={val_fraction} and calib_fraction={calib_fraction}. Use more "
                "data or other fractions."
            )
        parts.append(source.subset(index, f"{source.spec}#{label}"))
    return parts[0], parts[1], parts[2]


def content_hashes(source: DatasetSource, threads: int = 0, progress: bool = False) -> list[str]:
    """SHA-1 of each image's decoded pixels (size and RGB bytes): equal hashes are exactly
    the same image, whatever the file format or name. Corrupt images hash as ``""``.
    ``threads`` > 0 decodes in that many threads (PIL's decoders and SHA-1 release the GIL);
    ``progress`` shows how far it is (see :mod:`oodlens.progress`)."""

    def one(i: int) -> str:
        try:
            img = source.loader(i)
        except CorruptImageError:
            return ""
        h = hashlib.sha1(f"{img.size}".encode())
        h.update(img.tobytes())
        return h.hexdigest()

    from concurrent.futures import ThreadPoolExecutor

    desc = f"hash {source.spec} (duplicate check)"
    out: list[str] = []
    with (
        progress_bar(total=len(source), desc=desc, unit="img", enabled=progress) as bar,
        ThreadPoolExecutor(max(threads, 1)) as pool,
    ):
        hashes = (
            map(one, range(len(source)))
            if threads <= 0
            else pool.map(one, range(len(source)), chunksize=64)
        )
        for value in hashes:
            out.append(value)
            bar.update(1)
    return out


def _parse_classes(arg: str, valid: Sequence[int], spec: str) -> list[int]:
    if not arg:
        return list(valid)
    out: list[int] = []
    try:
        for part in arg.replace(";", ",").split("+"):
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise ValueError(
            f"Cannot read classes {arg!r} in {spec!r}; write e.g. 'digits:0-4' or 'digits:1+3+5'."
        ) from None
    bad = [c for c in out if c not in valid]
    if bad or not out:
        raise ValueError(
            f"Classes {bad or arg!r} in {spec!r} do not exist; valid: {min(valid)}-{max(valid)}."
        )
    return out


@functools.lru_cache(maxsize=1)
def _digits() -> Any:
    from sklearn.datasets import load_digits

    return load_digits()


def load_digits_source(spec: str, arg: str, options: dict[str, str], split: str) -> DatasetSource:
    """scikit-learn's 8x8 digits as 8x8 RGB images (0-16 scaled to 0-255)."""
    if options:
        raise ValueError(f"digits takes no options, got {sorted(options)} in {spec!r}.")
    data = _digits()
    classes = _parse_classes(arg, range(10), spec)
    index = [i for i, t in enumerate(data.target) if t in classes]
    images = (data.images[index] * (255.0 / 16.0)).round().astype(np.uint8)
    remap = {c: k for k, c in enumerate(classes)}
    labels = np.array([remap[t] for t in data.target[index]], dtype=np.int64)

    def loader(i: int) -> Image.Image:
        return Image.fromarray(images[i], mode="L").convert("RGB")

    source = DatasetSource(
        spec=spec_split(spec)[0],
        classes=tuple(str(c) for c in classes),
        ids=[f"digits#{i}" for i in index],
        labels=labels,
        loader=loader,
    )
    return _hash_split(source, split)


def load_noise_source(spec: str, arg: str, options: dict[str, str], split: str) -> DatasetSource:
    """Synthetic noise images: ``gaussian`` (mean 128, sd 64, clipped) or ``uniform``."""
    if arg not in ("gaussian", "uniform"):
        raise ValueError(
            f"Unknown noise {arg!r} in {spec!r}; valid: gaussian, uniform (e.g. 'noise:gaussian,n=500')."
        )
    unknown = set(options) - {"n", "size", "seed"}
    if unknown:
        raise ValueError(f"Unknown option(s) {sorted(unknown)} in {spec!r}; valid: n, size, seed.")
    try:
        n, size, seed = (
            int(options.get("n", 500)),
            int(options.get("size", 32)),
            int(options.get("seed", 0)),
        )
    except ValueError:
        raise ValueError(f"Options n, size and seed must be integers in {spec!r}.") from None
    if n <= 0 or size <= 0:
        raise ValueError(f"n and size must be positive in {spec!r}.")

    def loader(i: int) -> Image.Image:
        rng = np.random.default_rng([seed, i])
        if arg == "gaussian":
            x = np.clip(rng.normal(128, 64, size=(size, size, 3)), 0, 255)
        else:
            x = rng.uniform(0, 256, size=(size, size, 3))
        return Image.fromarray(x.astype(np.uint8), mode="RGB")

    source = DatasetSource(
        spec=spec_split(spec)[0],
        classes=("noise",),
        ids=[f"noise-{arg}#{i}" for i in range(n)],
        labels=np.zeros(n, dtype=np.int64),
        loader=loader,
        fingerprint_extra=f"{arg}:{size}:{seed}",
    )
    return _hash_split(source, split)


#: PIL modes of 16- and 32-bit integer images (PNG and TIFF with 16 bits per sample).
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def as_shown(img: Image.Image) -> Image.Image:
    """An image as a viewer shows it, in RGB: turned by its EXIF orientation tag (a phone's
    portrait JPEG is stored sideways), and a 16-bit image scaled to 8 bits by the range of
    its type (0..65535 -> 0..255; PIL's and torchvision's ``convert("RGB")`` clip it at 255
    instead, so 99.6% of a 0..65535 ramp would come out white).

    Example:
        >>> ramp = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
        >>> np.asarray(as_shown(ramp))[0, :, 0].tolist()
        [0, 128, 255]
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in _WIDE_MODES:
        values = np.asarray(img)
        top = 65535 if img.mode != "I" or values.max(initial=0) <= 65535 else int(values.max())
        scaled = np.clip(np.rint(values.astype(np.float64) * (255.0 / top)), 0, 255)
        img = Image.fromarray(scaled.astype(np.uint8), mode="L")
    return img.convert("RGB")


def _open_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return as_shown(img)
    except Exception as exc:  # PIL raises many types for broken files
        raise CorruptImageError(f"{path}: {type(exc).__name__}: {exc}") from exc


def load_folder_source(path: str, split: str, spec: str) -> DatasetSource:
    """An ImageFolder-layout folder, or a flat folder of images (one class)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"Dataset folder {str(root)!r} does not exist (from spec {spec!r}). Give an existing "
            "folder, or a registered kind such as 'digits:0-4' or 'noise:gaussian' (oodlens datasets)."
        )
    if not root.is_dir():
        raise ValueError(f"Dataset spec {spec!r} points to a file, not a folder of images.")
    if split != "all" and (root / split).is_dir():
        root, split = root / split, "all"
    elif split == "test" and (root / "train").is_dir() and (root / "val").is_dir():
        root, split = root / "val", "all"  # ImageNet's layout: its val set is the test set
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    found = [(d.name, _image_files(str(d))) for d in subdirs]
    empty = [name for name, images in found if not images]
    found = [(name, images) for name, images in found if images]
    if found and empty:
        raise ValueError(
            f"Dataset folder {str(root)!r} (spec {spec!r}): class folder(s) {empty[:10]} hold no "
            f"images ({', '.join(IMG_EXTENSIONS)}), while {len(found)} other(s) do; every class "
            "needs images (as in torchvision's ImageFolder). Add images there, or remove the "
            "empty folder(s)."
        )
    if found:
        classes = tuple(class_name(name) for name, _ in found)
        clash = sorted({c for c in classes if classes.count(c) > 1})
        if clash:
            raise ValueError(
                f"Dataset folder {str(root)!r}: class folders {clash} differ only in their "
                "Unicode form (NFC vs NFD, e.g. one copied from macOS); rename one of them."
            )
        files = [(p, k) for k, (_, images) in enumerate(found) for p in images]
    else:
        classes = (root.name,)
        files = [(str(p), 0) for p in sorted(root.iterdir()) if _is_image(str(p))]
    if not files:
        raise ValueError(
            f"No images ({', '.join(IMG_EXTENSIONS)}) found in {str(root)!r}; expected one sub-folder "
            "per class (ImageFolder layout) or image files directly in the folder."
        )
    paths = [f for f, _ in files]
    prefix = os.path.join(str(root), "")
    source = DatasetSource(
        spec=str(Path(path).expanduser()),
        classes=classes,
        ids=paths,
        labels=np.array([k for _, k in files], dtype=np.int64),
        loader=lambda i: _open_image(paths[i]),
        keys=[p[len(prefix) :].replace(os.sep, "/") for p in paths],
        files=True,
    )
    return _hash_split(source, split)


def class_name(name: str) -> str:
    """A class name in Unicode's NFC form: the folder ``café`` copied from macOS (NFD, ``e``
    plus a combining accent) and the same name typed elsewhere (NFC) are one class."""
    return unicodedata.normalize("NFC", name)


def _is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMG_EXTENSIONS and os.path.isfile(path)


def _image_files(folder: str) -> list[str]:
    """The image files under ``folder``, recursively (linked folders are not entered), in
    the order of their sorted path parts (as sorting ``Path`` objects gives). ``os.walk``
    rather than ``Path.rglob``: listing 14,000 files took 0.7 s through pathlib."""
    paths = (os.path.join(top, name) for top, _, names in os.walk(folder) for name in names)
    images = [p for p in paths if _is_image(p)]
    return sorted(images, key=lambda p: p.split(os.sep))


def load_torchvision_source(
    spec: str, arg: str, options: dict[str, str], split: str
) -> DatasetSource:
    """A torchvision dataset by class name (downloads; needs the internet)."""
    import torchvision.datasets as tvd

    names = sorted(
        n for n in dir(tvd) if not n.startswith("_") and isinstance(getattr(tvd, n), type)
    )
    if arg not in names:
        import difflib

        close = difflib.get_close_matches(arg, names, n=3)
        raise ValueError(
            f"Unknown torchvision dataset {arg!r}"
            + (f"; did you mean {', '.join(close)}?" if close else f"; valid: {', '.join(names)}.")
        )
    from .cache import default_cache_dir

    root = options.get("root", str(default_cache_dir() / "torchvision"))
    cls = getattr(tvd, arg)
    kwargs: dict[str, Any] = {"root": root, "download": True}
    # other options go to the dataset class, as Python literals where they parse
    for key, value in options.items():
        if key != "root":
            try:
                kwargs[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                kwargs[key] = value
    if split != "all" and "split" not in options:
        import inspect

        params = inspect.signature(cls.__init__).parameters
        if "train" in params:
            kwargs["train"] = split == "train"
        elif "split" in params:
            kwargs["split"] = split
    try:
        ds = cls(**kwargs)
    except Exception as exc:
        raise RuntimeError(
            f"Could not load torchvision dataset {arg!r} into {root!r} ({exc}); it needs the internet on first use."
        ) from exc
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = getattr(ds, "labels", None)
    labels = np.asarray(
        targets if targets is not None else [ds[i][1] for i in range(len(ds))], dtype=np.int64
    )
    classes = tuple(str(c) for c in getattr(ds, "classes", range(int(labels.max()) + 1)))

    def loader(i: int) -> Image.Image:
        img = ds[i][0]
        return (
            img.convert("RGB")
            if isinstance(img, Image.Image)
            else Image.fromarray(np.asarray(img)).convert("RGB")
        )

    return DatasetSource(
        spec=spec,
        classes=classes,
        ids=[f"{arg}#{split}#{i}" for i in range(len(ds))],
        labels=labels,
        loader=loader,
    )


def files_source(paths: Sequence[str | os.PathLike[str]]) -> DatasetSource:
    """Image files and folders (expanded to their images, sorted) as one unlabelled source."""
    files: list[str] = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            found = sorted(
                str(f)
                for f in path.rglob("*")
                if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS
            )
            if not found:
                raise ValueError(f"No images found in folder {str(path)!r}.")
            files.extend(found)
        elif path.is_file():
            files.append(str(path))
        else:
            raise FileNotFoundError(f"Image {str(path)!r} does not exist.")
    if not files:
        raise ValueError("No images given.")
    return DatasetSource(
        spec="files",
        classes=("unknown",),
        ids=files,
        labels=np.zeros(len(files), dtype=np.int64),
        loader=lambda i: _open_image(files[i]),
        files=True,
    )


def align_classes(source: DatasetSource, classes: Sequence[str], what: str) -> DatasetSource:
    """``source`` with its labels re-indexed to ``classes`` **by name**.

    Datasets that list their classes separately per split (e.g. ``train/{a,b,c}`` and
    ``test/{a,c}``) would otherwise label test class ``c`` as 1. A class of ``source`` that
    is not in ``classes`` is an error naming it; classes missing from ``source`` are fine.

    Args:
        source: the dataset to relabel.
        classes: the reference class names (the model's, or the training split's), index =
            label.
        what: how to name ``source`` in the error (e.g. ``"ID test"``).
    """
    classes = tuple(class_name(str(c)) for c in classes)
    own = tuple(class_name(str(c)) for c in source.classes)
    if own == classes[: len(own)] and len(own) <= len(classes):
        return source
    unknown = [c for c in own if c not in classes]
    if unknown:
        raise ValueError(
            f"{what} {source.spec!r} has class(es) {unknown[:10]} that are not among the "
            f"reference classes {list(classes)[:20]} (the training split's, or those the "
            "checkpoint records); give every split the same class folders (names must match)."
        )
    index = {c: k for k, c in enumerate(classes)}
    remap = np.array([index[c] for c in own], dtype=np.int64)
    labels = np.asarray(source.labels, dtype=np.int64)
    return DatasetSource(
        spec=source.spec,
        classes=classes,
        ids=source.ids,
        labels=np.where(labels >= 0, remap[np.clip(labels, 0, None)], labels),
        loader=source.loader,
        fingerprint_extra=source.fingerprint_extra,
        keys=source.keys,
        files=source.files,
    )
