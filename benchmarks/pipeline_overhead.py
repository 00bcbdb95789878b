"""Harness overhead: run_benchmark against a bare loop of forward passes, same model and data.

    python benchmarks/pipeline_overhead.py [--config FILE]

(a) a bare loop: a DataLoader over every dataset of the benchmark (ID train, ID test, each
    OOD set) and ``model(x)`` under ``torch.inference_mode()`` -- what a user would write;
(b) ``run_benchmark`` with every installed scorer, first run (empty outputs cache: extract,
    cache, fit, score, metrics);
(c) the same, second run (outputs from the cache).
The model is trained (or taken from the cache) before any timing. Targets: (b) <= 1.15 x (a),
(c) <= 0.1 x (a). On the digits demo (no ``--config``) the result is written to
``benchmarks/results/pipeline_overhead.txt``, which docs/benchmarks.md quotes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from oodlens.backbones import build_transform, create_backbone
from oodlens.bench import BenchmarkConfig, load_config, run_benchmark
from oodlens.datasets import split_spec
from oodlens.extract import ImageDataset
from oodlens.registry import load_dataset


def bare_loop(model, transform, input_size, specs, batch_size) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for spec in specs:
            loader = torch.utils.data.DataLoader(
                ImageDataset(load_dataset(spec), transform, input_size), batch_size=batch_size
            )
            for x, *_ in loader:
                model(x)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", help="benchmark config (default: the digits demo)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cfg = load_config(args.config) if args.config else BenchmarkConfig()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        cfg = dataclasses.replace(cfg, cache_dir=str(cache))
        run_benchmark(cfg, progress=False)  # trains the model once (not timed)
        ckpt = str(next((cache / "checkpoints").glob("*.safetensors")))
        cfg = dataclasses.replace(cfg, checkpoints=(ckpt,), models=cfg.models[:1])
        model, mcfg = create_backbone(cfg.models[0], checkpoint=ckpt)
        transform, data_cfg = build_transform(model, mcfg.img_size)
        specs = [
            split_spec(cfg.id, "train"),
            split_spec(cfg.id, "test"),
            *(o.spec for o in cfg.ood),
        ]
        n_images = sum(len(load_dataset(s)) for s in specs)
        a, b, c = [], [], []
        for _ in range(args.repeats):
            a.append(
                bare_loop(model, transform, tuple(data_cfg["input_size"]), specs, cfg.batch_size)
            )
            shutil.rmtree(cache / "outputs", ignore_errors=True)
            t0 = time.perf_counter()
            first = run_benchmark(cfg, progress=False)
            b.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            second = run_benchmark(cfg, progress=False)
            c.append(time.perf_counter() - t0)
        # the same images: ID train, ID test (as test, val and calib) and the OOD sets
        entries = len(first.runs[0].outputs)
        assert first.info["cache_misses"] == entries and second.info["cache_hits"] == entries
    n_scorers = len(first.table.scorer.unique())
    ta, tb, tc = min(a), min(b), min(c)
    lines = [
        f"# pipeline overhead: {cfg.models[0]} at {mcfg.img_size}px, {n_images} images in "
        f"{len(specs)} sets, the {n_scorers} default scorers "
        f"({', '.join(first.table.scorer.unique())})",
        f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}; best of {args.repeats}",
        f"{'run':<44} {'seconds':>8} {'x bare':>7}",
        f"{'(a) bare DataLoader + forward loop':<44} {ta:>8.2f} {1:>7.2f}",
        f"{'(b) run_benchmark, first run (extract)':<44} {tb:>8.2f} {tb / ta:>7.2f}   "
        "target <= 1.15",
        f"{'(c) run_benchmark, second run (cached)':<44} {tc:>8.2f} {tc / ta:>7.2f}   "
        "target <= 0.10",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if not args.config:
        (Path(__file__).resolve().parent / "results" / "pipeline_overhead.txt").write_text(text)


if __name__ == "__main__":
    main()
