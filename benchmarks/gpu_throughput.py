"""Throughput: images per second of the harness against a pure forward pass and a bare loop,
side by side in one run, on whatever device is present.

    python benchmarks/gpu_throughput.py [--profile cpu|gpu] [--config FILE] [--workers N]
        [--bare-workers N] [--repeats N] [--scoring N,M]

Rows (every ratio is to row 1, measured in the same process):
1. pure forward, fp32: one resident batch on the device, ``model(x)`` repeated;
2. the same under bf16 autocast;
3. bare loop: a DataLoader over every set of the benchmark with ``--bare-workers`` workers and
   timm's PIL transform, ``model(x.to(device))`` -- what a user would write;
4. ``run_benchmark``, first run (empty outputs cache), output-based scorers only: its
   extraction alone (the harness's own timer: it includes building the network and
   starting the workers), then end to end; on a GPU also its extraction with the PIL
   transform on the workers, and under bf16 autocast in channels-last;
5. the same, second run (outputs from the cache).
Each repeat runs rows 3, 4 and 5 back to back; besides the best of each row, the median over
the repeats of (row 4b's time / row 3's time in the same repeat) is printed: on a shared
machine whose speed drifts it moves less than a ratio of two bests.
Then, with ``--scoring N,M``: every installed output-based scorer fitted on N and scoring M
synthetic rows of 2048-d features (memory-mapped float32, 10 classes), on the compute device
the harness would use (torch on CUDA, numpy on a CPU), against the time the harness's
extraction would take for N + M images at the rate of row 4a; and, on a GPU, the torch
path's scores against numpy's on a smaller set (largest relative difference).
Model-aware scorers (ODIN, GradNorm, ...) make their own passes and are left out here (see
benchmarks/method_cost.py). Profiles: ``cpu`` (what ``make bench`` runs): resnet18 at 64 px
on the embedded digits demo (2,297 images in 4 sets); ``gpu``: resnet50 at 224 px on the
benchmark given by ``--config`` (e.g. the CIFAR-10 protocol). The model is trained (CPU
profile) or built with random weights (GPU profile) before any timing.

Profile ``jpeg`` (ImageNet-shaped decoding; ``make bench`` runs it on the CPU): makes
``--jpegs`` JPEGs shaped like ImageNet's photos (``benchmarks/make_jpeg_set.py``, on the
machine itself) and measures, side by side in one process:
1. decoding alone: PIL (open, EXIF turn, RGB) against torchvision's decoder, on the CPU
   (images/s and their ratio); on CUDA also torchvision's batched nvJPEG decoding;
2. the harness's extraction (``extract_outputs``) against a bare loop (a DataLoader with
   timm's PIL transform, then the network), the same network (resnet18 at 224 px on the CPU,
   resnet50 at 224 px on a GPU) and images: the ratio of their rates;
3. on CUDA: the harness with ``--decode device`` and with CPU decoding against the pure fp32
   forward of resnet50 at 224 px (target >= 0.7x), and the time OpenOOD's full ImageNet-1k
   protocol (ID train and test, near and far sets) would take at that rate on one GPU and,
   scaled linearly, on eight with torchrun.
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

import numpy as np
import timm
import torch

from oodlens.backbones import (
    ModelConfig,
    build_transform,
    create_backbone,
    resolve_device,
    save_checkpoint,
)
from oodlens.bench import BenchmarkConfig, load_config, run_benchmark
from oodlens.bench.config import expand_scorers
from oodlens.compute import compute_device
from oodlens.datasets import split_spec
from oodlens.extract import ImageDataset, default_num_workers
from oodlens.outputs import Outputs
from oodlens.registry import create_scorer_from_spec, load_dataset

PROFILES = {"cpu": ("resnet18", 64, 256), "gpu": ("resnet50", 224, 256), "jpeg": ("", 224, 0)}

#: Images of OpenOOD v1.5's ImageNet-1k protocol as its paper lists them: ID train
#: 1,281,167 (fitted on), ID test 45,000 (of the 50,000 validation images), near SSB-hard
#: 49,000 and NINCO 5,879, far iNaturalist 10,000, Textures 5,160, OpenImage-O 15,869.
IMAGENET1K_PROTOCOL = {
    "id_train": 1_281_167,
    "id_test": 45_000,
    "ssb_hard": 49_000,
    "ninco": 5_879,
    "inaturalist": 10_000,
    "textures": 5_160,
    "openimage_o": 15_869,
}


def pure_forward(model, x, device, precision: str, seconds: float = 3.0) -> float:
    """Images per second of ``model(x)`` on a resident batch."""
    x = x.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        model(x)  # warm-up
        _sync(device)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x)
            n += len(x)
        _sync(device)
    return n / (time.perf_counter() - t0)


def bare_loop(model, transform, input_size, specs, batch_size, workers, device) -> float:
    """Seconds for a plain DataLoader + forward loop over every set."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        for spec in specs:
            loader = torch.utils.data.DataLoader(
                ImageDataset(load_dataset(spec), transform, input_size),
                batch_size=batch_size,
                num_workers=workers,
                pin_memory=device.type == "cuda",
            )
            for x, *_ in loader:
                model(x.to(device, non_blocking=True))
    _sync(device)
    return time.perf_counter() - t0


def synthetic(n: int, folder: Path, tag: str, d: int = 2048, c: int = 10) -> Outputs:
    """Post-ReLU-like features with a class signal on every c-th dimension, memory-mapped
    float32 on disk, and the logits of a head that reads that signal (so that every class is
    predicted correctly most of the time, as SHE needs)."""
    rng = np.random.default_rng(abs(hash(tag)) % 2**32)
    labels = rng.integers(0, c, n)
    path = folder / f"{tag}.npy"
    feats = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    weight = np.zeros((c, d), np.float32)
    for j in range(c):
        weight[j, j::c] = 1.0 / (d // c)
    logits = np.empty((n, c), np.float32)
    for s in range(0, n, 8192):
        y = labels[s : s + 8192]
        f = np.abs(rng.normal(size=(len(y), d))).astype(np.float32)
        f += 1.5 * (np.arange(d)[None, :] % c == y[:, None])
        feats[s : s + len(y)] = f
        logits[s : s + len(y)] = f @ weight.T
    feats.flush()
    return Outputs(
        logits=logits,
        labels=labels,
        features=np.load(path, mmap_mode="r"),
        head_weight=weight,
        head_bias=np.zeros(c, np.float32),
    )


def scoring_at_size(
    n_train: int, n_test: int, device, folder: Path
) -> list[tuple[str, float, float]]:
    """(scorer, fit s, score s) for every output-based scorer on synthetic outputs."""
    train, test = synthetic(n_train, folder, "train"), synthetic(n_test, folder, "test")
    val = synthetic(2000, folder, "val")
    rows = []
    with compute_device(device if device.type == "cuda" else None):
        for name in expand_scorers(["all"]):
            scorer = create_scorer_from_spec(name)
            t0 = time.perf_counter()
            scorer.fit(train, val=val)
            _sync(device)
            t1 = time.perf_counter()
            scorer.score(test)
            _sync(device)
            rows.append((name, t1 - t0, time.perf_counter() - t1))
    return rows


def device_vs_numpy(device, folder: Path) -> dict[str, float]:
    """Largest relative difference between the torch path on ``device`` and numpy."""
    train, test = synthetic(20000, folder, "small_train"), synthetic(4000, folder, "small_test")
    val = synthetic(2000, folder, "val")
    out = {}
    for name in expand_scorers(["all"]):
        a = create_scorer_from_spec(name).fit(train, val=val).score(test)
        with compute_device(device):
            b = create_scorer_from_spec(name).fit(train, val=val).score(test)
        out[name] = float(np.max(np.abs(a - b)) / max(1e-12, np.max(np.abs(a))))
    return out


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_rates(files: list[Path], device) -> dict[str, float]:
    """Images per second of decoding alone: PIL, torchvision on the CPU, and (CUDA) nvJPEG."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    from oodlens.datasets import as_shown

    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as img:
            np.asarray(as_shown(img))
    rates = {"PIL (open, EXIF turn, RGB)": len(files) / (time.perf_counter() - t0)}
    data = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]
    t0 = time.perf_counter()
    for k in range(0, len(data), 64):
        decode_jpeg(data[k : k + 64], mode=ImageReadMode.RGB)
    rates["torchvision, CPU (libjpeg-turbo)"] = len(files) / (time.perf_counter() - t0)
    if device.type == "cuda":
        decode_jpeg(data[:64], mode=ImageReadMode.RGB, device=device)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for k in range(0, len(data), 256):
            decode_jpeg(data[k : k + 256], mode=ImageReadMode.RGB, device=device)
        _sync(device)
        rates["torchvision, CUDA (nvJPEG, batches of 256)"] = len(files) / (
            time.perf_counter() - t0
        )
    return rates


def jpeg_profile(args, device) -> None:
    """``--profile jpeg``: see the module docstring."""
    from make_jpeg_set import describe, make_set

    from oodlens.backbones import BatchPreprocess, resolve_preprocess
    from oodlens.extract import extract_outputs
    from oodlens.options import ExtractOptions

    cuda = device.type == "cuda"
    model_name = "resnet50" if cuda else "resnet18"
    n = args.jpegs or (10000 if cuda else 300)
    batch = 256 if cuda else 32
    workers = default_num_workers() if args.workers is None else args.workers
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sizes = make_set(Path(tmp) / "jpegs", n, seed=0)
        made = time.perf_counter() - t0
        files = sorted((Path(tmp) / "jpegs").rglob("*.jpg"))
        source = load_dataset(str(Path(tmp) / "jpegs"))
        model = timm.create_model(model_name, pretrained=False, num_classes=1000)
        model = model.to(device).eval()
        transform, data_cfg = build_transform(model, 224)
        input_size = tuple(data_cfg["input_size"])
        rates = decode_rates(files[: min(len(files), 2000)], device)
        fp32 = max(
            pure_forward(model, torch.randn(batch, *input_size), device, "fp32")
            for _ in range(args.repeats)
        )
        bare = min(
            bare_loop(
                model, transform, input_size, [str(Path(tmp) / "jpegs")], batch, workers, device
            )
            for _ in range(args.repeats)
        )
        preprocess = resolve_preprocess("auto", device)
        harness = {}
        for decode in ("cpu", "device") if cuda else ("cpu",):
            tf = BatchPreprocess(transform) if preprocess == "device" else transform
            options = ExtractOptions(
                device=str(device),
                batch_size=batch,
                num_workers=workers,
                preprocess=preprocess,
                decode=decode,
            )
            times = []
            for _ in range(args.repeats):
                t1 = time.perf_counter()
                extract_outputs(model, source, tf, input_size, options, progress=False)
                _sync(device)
                times.append(time.perf_counter() - t1)
            harness[decode] = n / min(times)
    name = torch.cuda.get_device_name(device) if cuda else platform.machine()
    lines = [
        f"# python benchmarks/gpu_throughput.py --profile jpeg --repeats {args.repeats}",
        f"# {model_name} at 224 px, batch {batch}, {workers} workers; {device} ({name}), "
        f"{os.cpu_count()} cores, torch {torch.__version__}; best of {args.repeats}",
        f"# {describe(sizes)} (made in {made:.1f}s)".replace("\n", "\n# "),
        f"{'decoding alone':<56} {'images/s':>10} {'x PIL':>8}",
    ]
    pil = next(iter(rates.values()))
    lines += [f"{label:<56} {rate:>10.0f} {rate / pil:>8.2f}" for label, rate in rates.items()]
    lines += ["", f"{'end to end':<56} {'images/s':>10} {'x pure fp32':>12} {'x bare':>8}"]
    rows = [
        ("pure forward, resident batch, fp32", fp32),
        (f"bare loop, {workers} workers, PIL transform", n / bare),
        *(
            (f"harness extraction, {preprocess} preprocessing, decode {d}", r)
            for d, r in harness.items()
        ),
    ]
    lines += [
        f"{label:<56} {rate:>10.0f} {rate / fp32:>12.2f} {rate / (n / bare):>8.2f}"
        for label, rate in rows
    ]
    if cuda:
        best = max(harness.values())
        total = sum(IMAGENET1K_PROTOCOL.values())
        lines += [
            "",
            f"OpenOOD's ImageNet-1k protocol ({total:,} images, ID train included) at "
            f"{best:.0f} images/s: {total / best / 60:.1f} min on one GPU, "
            f"{total / best / 8 / 60:.1f} min on eight (torchrun, linear scaling assumed)",
        ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = Path(__file__).resolve().parent / "results" / f"gpu_throughput_jpeg_{device.type}.txt"
    out.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--profile", choices=sorted(PROFILES), help="default: gpu if CUDA, else cpu")
    ap.add_argument("--config", help="benchmark config (default: the digits demo)")
    ap.add_argument("--workers", type=int, default=None, help="default: from the CPU count")
    ap.add_argument(
        "--bare-workers", type=int, default=None, help="workers of row 3 (default: --workers)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--scoring",
        help="N,M: time every output-based scorer fitted on N and scoring M synthetic rows",
    )
    ap.add_argument(
        "--jpegs",
        type=int,
        help="jpeg profile: images to make (default 300 on a CPU, 10000 on CUDA)",
    )
    args = ap.parse_args()
    device = resolve_device("auto")
    profile = args.profile or ("gpu" if device.type == "cuda" else "cpu")
    if profile == "jpeg":
        jpeg_profile(args, device)
        return
    model_name, img_size, batch = PROFILES[profile]
    workers = default_num_workers() if args.workers is None else args.workers
    bare_workers = workers if args.bare_workers is None else args.bare_workers
    cfg = load_config(args.config) if args.config else BenchmarkConfig()
    cfg = dataclasses.replace(
        cfg,
        models=(model_name,),
        img_size=img_size,
        device=str(device),
        batch_size=batch,
        num_workers=workers,
        scorers=("all",),
        train={**cfg.train, "epochs": 2},
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        if profile == "cpu" and not cfg.checkpoints:
            run_benchmark(dataclasses.replace(cfg, cache_dir=str(cache)), progress=False)
            ckpt = str(next((cache / "checkpoints").glob("*.safetensors")))
        elif cfg.checkpoints:
            ckpt = cfg.checkpoints[0]
        else:  # random weights with the ID set's classes, saved like a trained checkpoint
            names = tuple(load_dataset(split_spec(cfg.id, "train")).classes)
            net = timm.create_model(model_name, pretrained=False, num_classes=len(names))
            ckpt = str(cache / "random.safetensors")
            mc = ModelConfig(model_name, len(names), class_names=names, img_size=img_size)
            save_checkpoint(net, mc, ckpt)
        cfg = dataclasses.replace(cfg, checkpoints=(ckpt,), cache_dir=str(cache))
        model, mcfg = create_backbone(model_name, checkpoint=ckpt)
        model = model.to(device).eval()
        transform, data_cfg = build_transform(model, img_size)
        input_size = tuple(data_cfg["input_size"])
        specs = [
            split_spec(cfg.id, "train"),
            split_spec(cfg.id, "test"),
            *(o.spec for o in cfg.ood),
        ]
        n_images = sum(len(load_dataset(s)) for s in specs)
        x = torch.randn(batch, *input_size)
        fp32 = max(pure_forward(model, x, device, "fp32") for _ in range(args.repeats))
        bf16 = max(pure_forward(model, x, device, "bf16") for _ in range(args.repeats))
        bare, extract, first, second, pil, fast = [], [], [], [], [], []
        pil_cfg = dataclasses.replace(cfg, preprocess="pil")
        fast_cfg = dataclasses.replace(cfg, precision="bf16", channels_last=True)
        for _ in range(args.repeats):
            bare.append(bare_loop(model, transform, input_size, specs, batch, bare_workers, device))
            shutil.rmtree(cache / "outputs", ignore_errors=True)
            t0 = time.perf_counter()
            res = run_benchmark(cfg, progress=False)
            first.append(time.perf_counter() - t0)
            extract.append(res.timings["extract"])
            t0 = time.perf_counter()
            res2 = run_benchmark(cfg, progress=False)
            second.append(time.perf_counter() - t0)
            if res.info["preprocess"] == "device":
                shutil.rmtree(cache / "outputs", ignore_errors=True)
                pil.append(run_benchmark(pil_cfg, progress=False).timings["extract"])
            if device.type == "cuda":
                shutil.rmtree(cache / "outputs", ignore_errors=True)
                fast.append(run_benchmark(fast_cfg, progress=False).timings["extract"])
        assert res.info["cache_misses"] > 0 and res2.info["cache_misses"] == 0
        scorers = sorted(res.table.scorer.unique())
    rows = [
        ("1. pure forward, resident batch, fp32", fp32),
        ("2. same, bf16 autocast", bf16),
        (f"3. bare loop, {bare_workers} workers, PIL transform", n_images / min(bare)),
        (
            f"4a. harness extraction ({res.info['preprocess']}, {workers} workers)",
            n_images / min(extract),
        ),
        *([("4c. same, PIL preprocessing", n_images / min(pil))] if pil else []),
        *([("4d. same as 4a, bf16 + channels-last", n_images / min(fast))] if fast else []),
        ("4b. harness end to end (first run)", n_images / min(first)),
        ("5. harness end to end (cached)", n_images / min(second)),
    ]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(
        f"# throughput ({profile} profile): {model_name} at {img_size}px, batch {batch}, "
        f"{n_images} images in {len(specs)} sets, {len(scorers)} output-based scorers"
    )
    print(
        f"# {device} ({name}), {os.cpu_count()} cores, torch {torch.__version__}; "
        f"best of {args.repeats}"
    )
    print(f"{'path':<48} {'images/s':>10} {'x pure fp32':>12} {'x bare':>8}")
    bare_rate = rows[2][1]
    for label, rate in rows:
        print(f"{label:<48} {rate:>10.0f} {rate / fp32:>12.2f} {rate / bare_rate:>8.2f}")
    # each repeat runs the bare loop and the harness back to back: their paired ratio moves
    # less with the machine's speed than a ratio of two independent bests
    paired = [f / b for f, b in zip(first, bare, strict=True)]
    print(
        f"harness end to end / bare loop, time, median of the {args.repeats} paired repeats: "
        f"{np.median(paired):.2f}x (each: {', '.join(f'{r:.2f}' for r in paired)})"
    )
    print(
        f"scoring share of the first run: fit {res.timings['fit']:.2f}s + score "
        f"{res.timings['score']:.2f}s vs extract {res.timings['extract']:.2f}s "
        f"(scoring on {res.info['score_device']})"
    )
    if args.scoring:
        n_train, n_test = (int(v) for v in args.scoring.split(","))
        rate = n_images / min(extract)
        with tempfile.TemporaryDirectory() as tmp:
            rows = scoring_at_size(n_train, n_test, device, Path(tmp))
            diffs = device_vs_numpy(device, Path(tmp)) if device.type == "cuda" else {}
        total = sum(f + s for _, f, s in rows)
        extraction = (n_train + n_test) / rate
        where = f"torch on {device}" if device.type == "cuda" else "numpy on the CPU"
        print(
            f"\n# scoring at {n_train} train x {n_test} test x 2048-d ({where}); extraction of "
            f"{n_train + n_test} images at row 4a's rate: {extraction:.1f}s"
        )
        print(f"{'scorer':<16} {'fit s':>8} {'score s':>8}" + ("  torch vs numpy" if diffs else ""))
        for name, f, sc in rows:
            extra = f"  {diffs[name]:.1e}" if diffs else ""
            print(f"{name:<16} {f:>8.2f} {sc:>8.2f}{extra}")
        print(f"all output-based scorers: {total:.1f}s = {total / extraction:.2f}x extraction")


if __name__ == "__main__":
    main()
