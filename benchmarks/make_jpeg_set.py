"""Make N JPEGs shaped like ImageNet's photos, from the images at hand, seeded.

    python benchmarks/make_jpeg_set.py --out /tmp/jpegs [--n 2000] [--seed 0]
        [--source FOLDER] [--classes 10] [--workers N]

ImageNet-1k's validation photos are mostly 500 px on the long side (500 x 375 the most
common, then 500 x 333, 375 x 500, 500 x 500, ...) at about 110 KB each, i.e. about 0.6 bytes
per pixel: at that size decoding, not the network, limits a GPU. This script draws, per
image, a long side (500 px for 80% of the images, else 300-800), an aspect ratio (4:3, 3:2,
3:4, 2:3, 1:1, 16:9) and a target of bytes per pixel (log-normal around 0.59), cuts a random
crop of a source photo (flipped at random), resizes it to that size and saves it at the JPEG
quality (bisected over 30-97) that first reaches the target, after adding a camera's sensor
noise (2-6 grey levels; upscaled crops are smoother than photos). Sources: the photos of a
folder (``--source``, e.g. ../shared/data/catsdogs), else the two sample photos scikit-learn
ships (427 x 640 each), so the set can be made on any machine. The images go into
``--classes`` class folders (an ImageFolder). It prints the sizes it made.
"""

from __future__ import annotations

import argparse
import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

#: (width / height, share of images): landscape 4:3 and 3:2 dominate ImageNet
ASPECTS = ((4 / 3, 0.45), (3 / 2, 0.2), (3 / 4, 0.15), (2 / 3, 0.08), (1.0, 0.07), (16 / 9, 0.05))
#: ImageNet's mean bytes per pixel (about 110 KB for 500 x 375)
BYTES_PER_PIXEL = 0.59


def sources(folder: str | None) -> list[np.ndarray]:
    """The source photos as RGB arrays (at most 200 of a folder, in name order)."""
    if folder is None:
        from sklearn.datasets import load_sample_images

        return [np.asarray(im) for im in load_sample_images().images]
    exts = (".jpg", ".jpeg", ".png")
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in exts)[:200]
    if not paths:
        raise SystemExit(f"make_jpeg_set: no images under {folder!r}.")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def plan(n: int, seed: int) -> list[tuple[int, int, float, int, int]]:
    """Per image: width, height, target bytes per pixel, source index seed, class."""
    rng = np.random.default_rng(seed)
    ratios, shares = zip(*ASPECTS, strict=True)
    out = []
    for i in range(n):
        long = 500 if rng.random() < 0.8 else int(rng.integers(300, 801))
        ratio = ratios[rng.choice(len(ratios), p=np.array(shares) / sum(shares))]
        w, h = (long, round(long / ratio)) if ratio >= 1 else (round(long * ratio), long)
        target = float(np.exp(rng.normal(np.log(BYTES_PER_PIXEL), 0.35)))
        out.append((w, h, target, int(rng.integers(2**31)), i))
    return out


def _encode(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_one(args: tuple) -> tuple[int, int, int]:
    """Write one JPEG; returns (width, height, bytes)."""
    (w, h, target, seed, index), photos, out, classes = args
    rng = np.random.default_rng(seed)
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    # the largest crop of the target's aspect that fits, scaled by 0.6-1.0, at a random place
    scale = rng.uniform(0.6, 1.0)
    cw = min(pw, ph * w / h) * scale
    ch = cw * h / w
    x0, y0 = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    crop = Image.fromarray(photo).crop((int(x0), int(y0), int(x0 + cw), int(y0 + ch)))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = crop.resize((w, h), Image.Resampling.BICUBIC)
    # a camera's sensor noise (2-6 grey levels): upscaled crops are smoother than photos and
    # would not reach a photo's bytes per pixel at any quality
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, rng.uniform(2, 6), (h, w, 3))
    image = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
    want = target * w * h
    lo, hi = 30, 97
    while lo < hi:  # the smallest quality whose file reaches the target
        mid = (lo + hi) // 2
        if len(_encode(image, mid)) < want:
            lo = mid + 1
        else:
            hi = mid
    data = _encode(image, lo)
    folder = out / f"c{index % classes}"
    (folder / f"{index:06d}.jpg").write_bytes(data)
    return w, h, len(data)


def make_set(
    out: str | os.PathLike[str],
    n: int,
    seed: int = 0,
    source: str | None = None,
    classes: int = 10,
    workers: int | None = None,
) -> list[tuple[int, int, int]]:
    """Write the set; returns (width, height, bytes) per image."""
    out = Path(out)
    for c in range(classes):
        (out / f"c{c}").mkdir(parents=True, exist_ok=True)
    photos = sources(source)
    jobs = [(p, photos, out, classes) for p in plan(n, seed)]
    workers = workers or max(1, (os.cpu_count() or 1) - 1)
    if workers == 1:
        return [make_one(j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(make_one, jobs, chunksize=16))


def describe(sizes: list[tuple[int, int, int]]) -> str:
    """The sizes made, in a few lines."""
    w, h, b = (np.array(v, dtype=np.float64) for v in zip(*sizes, strict=True))
    bpp = b / (w * h)
    common = {}
    for size in zip(w.astype(int), h.astype(int), strict=True):
        common[size] = common.get(size, 0) + 1
    top = sorted(common.items(), key=lambda kv: -kv[1])[:4]
    return "\n".join(
        [
            f"{len(sizes)} JPEGs: mean {w.mean():.0f} x {h.mean():.0f} px, "
            f"{b.mean() / 1024:.0f} KB (median {np.median(b) / 1024:.0f} KB, "
            f"5-95%: {np.percentile(b, 5) / 1024:.0f}-{np.percentile(b, 95) / 1024:.0f} KB), "
            f"{bpp.mean():.2f} bytes per pixel, {b.sum() / 2**20:.0f} MB in all",
            "most common sizes: "
            + ", ".join(f"{a} x {c} ({k / len(sizes):.0%})" for (a, c), k in top),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, help="folder to write (class sub-folders)")
    ap.add_argument("--n", type=int, default=2000, help="images (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", help="folder of photos (default: scikit-learn's samples)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--workers", type=int, help="processes (default: cores - 1)")
    args = ap.parse_args()
    sizes = make_set(args.out, args.n, args.seed, args.source, args.classes, args.workers)
    print(describe(sizes))


if __name__ == "__main__":
    main()
