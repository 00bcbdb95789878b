"""Grad-CAM throughput: oodlens (captum LayerGradCam) vs pytorch-grad-cam's GradCAM.

    python benchmarks/gradcam_speed.py          # needs `pip install grad-cam` for the reference

Same resnet18 (random init), same 64 images at 224 px, same target layer (layer4), CPU, one
process, alternating runs; prints images per second and the ratio oodlens / reference, and
the correlation of the two maps (they compute the same thing).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import timm
import torch

from oodlens.explainers import GradCAM


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=1000).eval()
    x = torch.rand(args.images, 3, args.size, args.size)
    ours = GradCAM(model, layer="layer4", batch_size=args.batch_size)
    print(
        f"# Grad-CAM speed, resnet18, {args.images} images at {args.size}px, CPU ({platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )
    ours.explain(x[:2])  # warm-up
    t_ours = best_of(lambda: ours.explain(x), args.repeats)
    try:
        from pytorch_grad_cam import GradCAM as RefGradCAM
    except ImportError:
        print(
            f"oodlens: {args.images / t_ours:.1f} images/s; install grad-cam for the reference run"
        )
        return
    ref = RefGradCAM(model=model, target_layers=[model.layer4])
    ref.batch_size = args.batch_size

    def run_ref():
        return np.concatenate(
            [
                ref(input_tensor=x[s : s + args.batch_size], targets=None)
                for s in range(0, len(x), args.batch_size)
            ]
        )

    run_ref()
    t_ref = best_of(run_ref, args.repeats)
    a, b = ours.explain(x).numpy(), run_ref()
    corr = np.mean([np.corrcoef(p.ravel(), q.ravel())[0, 1] for p, q in zip(a, b, strict=True)])
    print(f"{'implementation':<22} {'seconds':>8} {'images/s':>9}")
    print(f"{'oodlens (captum)':<22} {t_ours:>8.2f} {args.images / t_ours:>9.1f}")
    print(f"{'pytorch-grad-cam':<22} {t_ref:>8.2f} {args.images / t_ref:>9.1f}")
    print(
        f"ratio oodlens / pytorch-grad-cam: {t_ref / t_ours:.2f}x (target >= 1.0); mean map correlation {corr:.4f}"
    )


if __name__ == "__main__":
    main()
