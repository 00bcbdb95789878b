"""Method cost: fit and score seconds of every installed scorer on the CIFAR-10 benchmark
(OpenOOD protocol, the shared resnet18 checkpoint at 64 px), as ratios to the extraction
time measured in the same run (an empty cache, so the forward pass over all 67,800 images
is timed too).

    python benchmarks/method_cost.py [--data-root ../shared/data] [--models-root ../shared/models]

Writes benchmarks/results/method_cost.md. Skips with a message when the data is absent.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import oodlens
from oodlens.bench import BenchmarkConfig, run_benchmark

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--models-root", default=str(HERE.parent.parent / "shared" / "models"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(HERE / "results" / "method_cost.md"))
    args = parser.parse_args()
    ckpt = Path(args.models_root) / "cifar10_resnet18_64px.safetensors"
    if not (Path(args.data_root) / "cifar10").is_dir() or not ckpt.exists():
        print(f"skipped: CIFAR-10 data or checkpoint not found under {args.data_root}")
        return 0
    with tempfile.TemporaryDirectory() as cache:
        cfg = BenchmarkConfig.from_protocol(
            "cifar10",
            args.data_root,
            models=("resnet18",),
            checkpoints=(str(ckpt),),
            img_size=64,
            device=args.device,
            scorers=("all+model", "logit_kde:mode=class_conditional"),
            cache_dir=cache,
        )
        t0 = time.perf_counter()
        res = run_benchmark(cfg, progress=False)
        wall = time.perf_counter() - t0
    extract = res.timings["extract"]
    counts = {k: out.n_samples for k, out in res.runs[0].outputs.items()}
    n_train = counts["id_train"]
    n_test = sum(v for k, v in counts.items() if k.startswith("id_") and k != "id_train")
    n_ood = sum(counts[o.name] for o in cfg.ood)
    rows = []
    for spec, s in res.info["scorer_seconds"].items():
        total = s["fit"] + s["score"]
        rows.append((total, spec, s["fit"], s["score"]))
    lines = [
        "# Method cost on the CIFAR-10 benchmark",
        "",
        f"`python benchmarks/method_cost.py`: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {args.device}, torch {torch.__version__}, "
        f"oodlens {oodlens.__version__}. One run from an empty cache: extraction of all "
        f"{n_train + n_test + n_ood:,} images ({n_train:,} ID train, {n_test:,} ID test incl. "
        f"val/calib, {n_ood:,} OOD) at 64 px took **{extract:.1f} s**; the whole run "
        f"{wall:.0f} s. Fit = on the {n_train:,} training outputs; score = ID test, calib and "
        f"the {len(cfg.ood)} OOD sets. Model-aware scorers (odin) run their own passes over "
        "the images, so their cost includes the network.",
        "",
        "| scorer | fit s | score s | (fit + score) / extraction |",
        "| --- | ---: | ---: | ---: |",
    ]
    for total, spec, fit, score in sorted(rows, reverse=True):
        lines.append(f"| {spec} | {fit:.2f} | {score:.2f} | {total / extract:.3f} |")
    if res.failures:
        lines += ["", "Failed: " + "; ".join(f"{f.scorer}: {f.error}" for f in res.failures)]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
