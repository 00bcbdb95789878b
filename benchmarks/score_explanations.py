"""Do maps of the OOD score point at what is foreign? A known-answer test: patch localisation
and deletion curves, for class maps and the score maps of energy, KNN and logit-KDE.

    python benchmarks/score_explanations.py [--data-root ../shared/data] [--images 500]

For each ID test image (a seeded sample), a foreign patch covering a quarter of the image
(half its height and width, at a seeded random position) is pasted in; the patch is an
SVHN digit or a DTD texture (alternately) when ``../shared/data`` is there, else uniform
noise or a digit 5-9 (the digits demo without data). On the patched image, each map is
asked where the foreign evidence is:

* **mass in patch**: the share of the map's positive mass inside the patch, on the raw map
  (before any min-max scaling); a random map gives the patch's area, 0.25;
* **pointing game**: whether the map's maximum lies inside the patch (random: 0.25);
* **deletion**: pixels are replaced by the dataset's mean colour (0 after normalisation),
  10% of the image at a time up to 50%, most foreign first by the map; the ID-ness score
  should rise fastest when the map is right. Reported as the mean rise of the score over
  the curve, in units of the score's standard deviation on the ID test images, for the map
  and for a random order (the difference is the map's gain over chance).

Maps: the class map (the predicted class), each scorer's score map (``sign="foreign"``:
what lowers the score) and a random map, by Grad-CAM and by Integrated Gradients (16
steps, zero baseline = the mean colour). Grad-CAM's layer: ``layer2`` of resnet18 on the
32 px digits (its last stage is 1x1 there, so every map of ``layer4`` would be flat;
``layer2`` is 4x4) and ``layer3`` on CIFAR-10 at 64 px (4x4). Intervals: 95% bootstrap
over images (1,000 resamples). Writes ``benchmarks/results/score_explanations.md`` and the
figure ``docs/score_explanations.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import oodlens
from oodlens.bench import BenchmarkConfig, fit_detector
from oodlens.diagnose import make_explainer

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("energy", "knn", "logit_kde")
STEPS = np.linspace(0.1, 0.5, 5)  # shares of the image deleted


def _setting(name: str, data: Path, images: int):
    """(config, Grad-CAM layer, ID test spec, patch sources, number of images)."""
    if name == "digits":
        cfg = BenchmarkConfig(ood=(), scorers=("msp",))  # the demo: resnet18 at 32 px
        patches = (
            [str(data / "ood" / "svhn"), str(data / "ood" / "textures")]
            if (data / "ood").is_dir()
            else ["noise:uniform,n=64,size=32", "digits:5-9"]
        )
        return cfg, "layer2", "digits:0-4@test", patches, images
    ckpt = data.parent / "models" / "cifar10_resnet18_64px.safetensors"
    cfg = BenchmarkConfig(
        id=str(data / "cifar10"),
        ood=(),
        models=("resnet18",),
        checkpoints=(str(ckpt),),
        img_size=64,
        scorers=("msp",),
    )
    patches = [str(data / "ood" / "svhn"), str(data / "ood" / "textures")]
    return cfg, "layer3", str(data / "cifar10") + "@test", patches, images


def _patched(
    image: Image.Image, patch: Image.Image, size: int, rng
) -> tuple[Image.Image, np.ndarray]:
    """The image at ``size`` with ``patch`` pasted over a quarter of it; the patch mask."""
    base = image.convert("RGB").resize((size, size), Image.BICUBIC)
    half = size // 2
    top, left = (int(v) for v in rng.integers(0, size - half + 1, 2))
    base.paste(patch.convert("RGB").resize((half, half), Image.BICUBIC), (left, top))
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + half, left : left + half] = True
    return base, mask


def _bootstrap(values: np.ndarray, rng) -> tuple[float, float, float]:
    means = values[rng.integers(0, len(values), (1000, len(values)))].mean(1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _deletion(target, x: torch.Tensor, order: torch.Tensor) -> np.ndarray:
    """(N, len(STEPS) + 1) scores as the pixels are deleted in ``order`` (N, H*W)."""
    n, _, h, w = x.shape
    out = [target(x).numpy()]
    for share in STEPS:
        k = int(round(share * h * w))
        keep = torch.ones(n, h * w)
        keep.scatter_(1, order[:, :k], 0.0)
        out.append(target(x * keep.view(n, 1, h, w)).numpy())
    return np.stack(out, 1)


def _score_of(model, scorer):
    def score(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            from oodlens.network import forward_all, get_head

            logits, feats = forward_all(model, x)
            head = get_head(model)
            return scorer.torch_score(logits, feats, (head.weight, head.bias)).float()

    return score


def run(name: str, data: Path, images: int, seed: int) -> tuple[list[dict], dict]:
    cfg, layer, test_spec, patch_specs, n_images = _setting(name, data, images)
    detectors = {
        t: fit_detector(dataclasses.replace(cfg, scorers=(t,)), progress=False) for t in TARGETS
    }
    model = detectors["energy"].network().eval()
    transform, data_cfg = detectors["energy"].preprocessing()
    size = data_cfg["input_size"][-1]
    rng = np.random.default_rng(seed)
    test = oodlens.load_dataset(test_spec)
    pick = rng.choice(len(test), min(n_images, len(test)), replace=False)
    patch_sources = [oodlens.load_dataset(s) for s in patch_specs]
    originals, patched, masks = [], [], []
    for k, i in enumerate(pick):
        src = patch_sources[k % len(patch_sources)]
        patch = src.loader(int(rng.integers(len(src))))
        image, mask = _patched(test.loader(int(i)), patch, size, rng)
        originals.append(test.loader(int(i)).convert("RGB").resize((size, size), Image.BICUBIC))
        patched.append(image)
        masks.append(mask)
    x = torch.stack([transform(im) for im in patched])
    masks = torch.as_tensor(np.stack(masks))
    id_x = torch.stack([transform(im) for im in originals])
    rows, examples = [], {}
    for kind in ("gradcam", "integrated_gradients"):
        opts = {"layer": layer, "n_steps": 16, "batch_size": 16}
        maps = {"class": make_explainer(kind, model, **opts).explain(x)}
        for t in TARGETS:
            maps[t] = make_explainer(kind, model, score=detectors[t].scorer, **opts).explain(x)
        maps["random"] = torch.rand(
            maps["class"].shape, generator=torch.Generator().manual_seed(seed)
        )
        if kind == "gradcam":
            examples = {"original": originals[:4], "patched": patched[:4], "masks": masks[:4],
                        "class": maps["class"][:4], "logit_kde": maps["logit_kde"][:4]}  # fmt: skip
        for t in TARGETS:
            score = _score_of(model, detectors[t].scorer)
            spread = float(score(id_x).std())
            for map_name in ("class", t, "random"):
                m = maps[map_name]
                positive = m.clamp(min=0).flatten(1)
                inside = (positive * masks.flatten(1)).sum(1) / positive.sum(1).clamp_min(1e-12)
                hits = masks.flatten(1).gather(1, m.flatten(1).argmax(1, keepdim=True))[:, 0]
                order = m.flatten(1).argsort(1, descending=True)
                random_order = torch.rand(m.flatten(1).shape, generator=torch.Generator().manual_seed(seed + 1)).argsort(1)  # fmt: skip
                curve = _deletion(score, x, order)
                chance = _deletion(score, x, random_order)
                rise = (curve[:, 1:] - curve[:, :1]).mean(1) / spread
                rise_random = (chance[:, 1:] - chance[:, :1]).mean(1) / spread
                brng = np.random.default_rng(seed)
                rows.append(
                    {
                        "dataset": name,
                        "explainer": kind,
                        "score": t,
                        "map": "score map" if map_name == t else map_name + " map",
                        "mass_in_patch": _bootstrap(inside.numpy(), brng),
                        "pointing": _bootstrap(hits.float().numpy(), brng),
                        "deletion_rise": _bootstrap(rise, brng),
                        "deletion_gain": _bootstrap(rise - rise_random, brng),
                        "n": len(pick),
                    }
                )
    return rows, examples


def _cell(v: tuple[float, float, float], digits: int = 2) -> str:
    return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"


def _figure(examples: dict, path: Path) -> None:
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    from oodlens.explainers import minmax_normalize
    from oodlens.plots import figure_grid, save_figure

    n = len(examples["original"])
    fig, axes = figure_grid(4 * n, cols=4, panel=(2.2, 2.2))

    heat = colormaps["jet"]
    cls, kde = minmax_normalize(examples["class"]), minmax_normalize(examples["logit_kde"])
    for k in range(n):
        img = np.asarray(examples["patched"][k], dtype=np.float64) / 255.0
        panels = [
            (np.asarray(examples["original"][k]) / 255.0, "ID image"),
            (img, "patched (foreign quarter)"),
            (0.55 * img + 0.45 * heat(cls[k].numpy())[..., :3], "class map"),
            (0.55 * img + 0.45 * heat(kde[k].numpy())[..., :3], "logit-KDE score map"),
        ]
        for j, (pixels, title) in enumerate(panels):
            ax = axes[4 * k + j]
            ax.imshow(np.clip(pixels, 0, 1))
            if j >= 1:
                edge = np.argwhere(examples["masks"][k].numpy())
                (top, left), (bottom, right) = edge.min(0), edge.max(0)
                box = Rectangle(
                    (left - 0.5, top - 0.5),
                    right - left + 1,
                    bottom - top + 1,
                    fill=False,
                    ec="white",
                )
                ax.add_patch(box)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-root",
        default=os.environ.get("OODLENS_DATA_ROOT", str(ROOT.parent / "shared" / "data")),
    )
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    data = Path(args.data_root)
    names = ["digits"] + (
        ["cifar10"]
        if (data / "cifar10").is_dir()
        and (data.parent / "models" / "cifar10_resnet18_64px.safetensors").is_file()
        else []
    )
    lines = [
        "# Score explanations: patch localisation and deletion (benchmarks/score_explanations.py)",
        "",
        "Mean [95% bootstrap interval] over images. mass_in_patch and pointing: random = 0.25. "
        "deletion_rise: mean rise of the ID-ness score while the map's most foreign pixels are "
        "replaced by the mean colour (10-50% of the image), in ID-test standard deviations; "
        "deletion_gain: that rise minus a random order's.",
        "",
        "| dataset | explainer | score | map | n | mass_in_patch | pointing | deletion_rise | deletion_gain |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        t0 = time.perf_counter()
        rows, examples = run(name, data, args.images, args.seed)
        for r in rows:
            lines.append(
                f"| {r['dataset']} | {r['explainer']} | {r['score']} | {r['map']} | {r['n']} | "
                f"{_cell(r['mass_in_patch'])} | {_cell(r['pointing'])} | "
                f"{_cell(r['deletion_rise'])} | {_cell(r['deletion_gain'])} |"
            )
        lines.append("")
        lines.append(f"{name}: {time.perf_counter() - t0:.0f} s")
        lines.append("")
        if name == names[-1]:
            _figure(examples, ROOT / "docs" / "score_explanations.png")
    text = "\n".join(lines) + "\n"
    (ROOT / "benchmarks" / "results" / "score_explanations.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
