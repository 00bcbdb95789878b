"""CIFAR-10-C-style corruptions (Hendrycks & Dietterich 2019, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations"), for covariate-shifted ID sets.

The definitions and the five severities of each are those of the authors'
``make_cifar_c.py`` (hendrycks/robustness, ``ImageNet-C/create_c``), the script that made
CIFAR-10-C; the operations run on numpy, Pillow and torchvision. Eleven of its nineteen
corruptions are here: the ones that are pixel formulas (noise, blur by a fixed kernel,
contrast, brightness, saturation, JPEG, pixelation). Motion blur (ImageMagick), snow,
frost (image files), fog, spatter, glass, zoom and elastic blur are not. ``imagecorruptions``
(bethgelab), the packaged version of the same code, fails under numpy 2 and scikit-image
0.26 (glass blur, Gaussian blur and fog raise; it imports ``pkg_resources``), which is why it
is not used.

Each function takes an RGB image as floats in [0, 1] of shape (H, W, 3), a severity 1-5
and a numpy ``Generator`` (for the random ones), and returns the corrupted image in [0, 1].
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

__all__ = ["CORRUPTIONS", "TEST_CORRUPTIONS", "VERSION", "corrupt"]

#: Bumped when a corruption changes its output (part of a corrupted set's cache key).
VERSION = 1


def _pick(values: tuple, severity: int):
    return values[severity - 1]


def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = _pick((0.04, 0.06, 0.08, 0.09, 0.10), severity)
    return np.clip(x + rng.normal(scale=c, size=x.shape), 0, 1)


def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = _pick((500, 250, 100, 75, 50), severity)
    return np.clip(rng.poisson(x * c) / c, 0, 1)


def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper: each value (pixel and channel) is replaced with probability c, by 0
    or 1 with equal odds (scikit-image's ``random_noise(mode="s&p")``)."""
    c = _pick((0.01, 0.02, 0.03, 0.05, 0.07), severity)
    hit = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(x.dtype), x)


def speckle_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = _pick((0.06, 0.1, 0.12, 0.16, 0.2), severity)
    return np.clip(x + x * rng.normal(scale=c, size=x.shape), 0, 1)


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Each channel filtered by ``kernel`` (odd size), borders mirrored."""
    import torch
    import torch.nn.functional as F

    k = kernel.shape[0] // 2
    img = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[:, None]
    pad = "reflect" if min(x.shape[:2]) > k else "replicate"
    img = F.pad(img, (k, k, k, k), mode=pad)
    out = F.conv2d(img, torch.from_numpy(kernel.astype(x.dtype))[None, None])
    return out[:, 0].numpy().transpose(1, 2, 0)


def _gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    return np.outer(g, g)


def gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A Gaussian of standard deviation c, truncated at 4 sigma (scikit-image's)."""
    c = _pick((0.4, 0.6, 0.7, 0.8, 1.0), severity)
    return np.clip(_convolve(x, _gaussian_kernel(c, int(4 * c + 0.5))), 0, 1)


def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A disk of radius r (17 x 17 support), its edge smoothed by a 3 x 3 Gaussian of
    standard deviation ``alias``."""
    radius, alias = _pick(((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)), severity)
    t = np.arange(-8, 9)
    xx, yy = np.meshgrid(t, t)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    smooth = _gaussian_kernel(alias, 1)
    padded = np.pad(disk, 1, mode="reflect")
    kernel = sum(smooth[i, j] * padded[i : i + 17, j : j + 17] for i in range(3) for j in range(3))
    return np.clip(_convolve(x, np.asarray(kernel)), 0, 1)


def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = _pick((0.75, 0.5, 0.4, 0.3, 0.15), severity)
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1)


def _with_hsv(x: np.ndarray, value=None, saturation=None) -> np.ndarray:
    """The image with its HSV value or saturation replaced (hue kept): every channel is
    ``V * (1 - S * g)`` with ``g`` fixed by the hue."""
    v = x.max(axis=2, keepdims=True)
    span = v - x.min(axis=2, keepdims=True)
    s = np.divide(span, v, out=np.zeros_like(v), where=v > 0)
    # g per channel; a grey pixel has hue 0 (red), as scikit-image's conversion gives it
    g = np.divide(v - x, v * s, out=np.zeros_like(x), where=(v * s) > 0)
    grey = (s == 0)[..., 0]
    g[grey] = (0.0, 1.0, 1.0)
    v2 = v if value is None else value(v)
    s2 = s if saturation is None else saturation(s)
    return v2 * (1 - s2 * g)


def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = _pick((0.05, 0.1, 0.15, 0.2, 0.3), severity)
    return np.clip(_with_hsv(x, value=lambda v: np.clip(v + c, 0, 1)), 0, 1)


def saturate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    a, b = _pick(((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)), severity)
    return np.clip(_with_hsv(x, saturation=lambda s: np.clip(s * a + b, 0, 1)), 0, 1)


def _to_pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.uint8(np.clip(x, 0, 1) * 255), mode="RGB")


def jpeg_compression(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    quality = _pick((80, 65, 58, 50, 40), severity)
    buf = io.BytesIO()
    _to_pil(x).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64) / 255


def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = _pick((0.95, 0.9, 0.85, 0.75, 0.65), severity)
    h, w = x.shape[:2]
    small = _to_pil(x).resize((int(w * c), int(h * c)), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BOX), dtype=np.float64) / 255


Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

#: Every corruption here, by Hendrycks & Dietterich's function name.
CORRUPTIONS: dict[str, Corruption] = {
    f.__name__: f
    for f in (
        gaussian_noise,
        shot_noise,
        impulse_noise,
        speckle_noise,
        gaussian_blur,
        defocus_blur,
        contrast,
        brightness,
        saturate,
        jpeg_compression,
        pixelate,
    )
}

#: The default: those of CIFAR-10-C's 15 test corruptions that are here (speckle noise,
#: Gaussian blur and saturation are its validation corruptions).
TEST_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "brightness",
    "contrast",
    "pixelate",
    "jpeg_compression",
)


def corrupt(image: Image.Image, name: str, severity: int, rng: np.random.Generator) -> Image.Image:
    """``image`` (any PIL mode; converted to RGB) with corruption ``name`` at ``severity``
    (1-5), quantised to 8 bits as CIFAR-10-C's files are."""
    if name not in CORRUPTIONS:
        raise ValueError(f"Unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}.")
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"Corruption severity must be 1 to 5, got {severity!r}.")
    x = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    return _to_pil(CORRUPTIONS[name](x, severity, rng))
