"""A saved detector's speed against its references, side by side in one run (CPU profile:
resnet18 at 64 px, a KNN detector).

    python benchmarks/detect_speed.py [--repeats 5] [--images 2000]

(a) one image through ``Detector.predict`` against the bare network's forward pass on that
    image, already preprocessed, plus the scorer's own ``score`` on its outputs, both in one
    warm process (best of N, interleaved). Target <= 1.3x.
(b) a folder of images through ``oodlens detect`` against ``oodlens bench``'s extraction of
    the same images (a bench with the folder as its ID set, msp only, no cache), both as
    whole commands, imports included (best of N, interleaved). Target <= 1.1x.
(c) ``Detector.load`` (checksums, hash of the checkpoint, the network built) against
    loading the checkpoint alone (``create_backbone``). Target <= 2x.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import oodlens
from oodlens.backbones import build_transform, create_backbone
from oodlens.detector import Detector
from oodlens.train import TrainConfig, train_model

BIN = Path(sys.executable).parent


def images(folder: Path, n: int) -> Path:
    """``n`` 64 px images in an ImageFolder with train/ and test/ (digits, upscaled, with
    noise: PNGs of a realistic size to decode)."""
    digits = oodlens.load_dataset("digits")
    rng = np.random.default_rng(0)
    for i in range(n):
        split = "test" if i % 5 == 0 else "train"
        label = int(digits.labels[i % len(digits)])
        target = folder / split / str(label)
        target.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(digits.loader(i % len(digits)).resize((64, 64)), dtype=np.float64)
        pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(target / f"{i}.png")
    return folder


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def command(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = images(tmp / "data", args.images)
        ckpt = tmp / "net.safetensors"
        cfg = TrainConfig(data=str(data), img_size=64, epochs=1, batch_size=128, hflip=False)
        train_model(cfg, ckpt, progress=False)
        det_path = tmp / "knn.oodlens"
        fit = [str(BIN / "oodlens"), "fit", "--model", "resnet18", "--checkpoint", str(ckpt),
               "--id", str(data), "--img-size", "64", "--scorer", "knn:k=10", "--out",
               str(det_path), "--cache-dir", str(tmp / "cache"), "-q"]  # fmt: skip
        subprocess.run(fit, check=True, capture_output=True)

        # (a) one image, warm
        det = Detector.load(det_path, checkpoint=ckpt)
        model, _ = create_backbone("resnet18", checkpoint=str(ckpt), img_size=64)
        model.eval()
        transform, _ = build_transform(model, 64)
        image = Image.open(next((data / "test").rglob("*.png"))).convert("RGB")
        x = transform(image)[None]
        with torch.inference_mode():
            features = model.forward_head(model.forward_features(x), pre_logits=True)
            logits = model.get_classifier()(features)
        outputs = oodlens.Outputs(logits=logits.double().numpy(), features=features.numpy())
        det.predict([image])  # warm up both paths
        t_predict, t_bare = [], []
        for _ in range(args.repeats * 4):
            t_predict.append(best(lambda: det.predict([image]), 1))

            def bare() -> None:
                with torch.inference_mode():
                    model(transform(image)[None])
                det.scorer.score(outputs)

            t_bare.append(best(bare, 1))
        one = min(t_predict) / min(t_bare)

        # (b) a folder, whole commands
        detect = [str(BIN / "oodlens"), "detect", str(det_path), str(data), "--checkpoint",
                  str(ckpt), "--out", str(tmp / "v.csv"), "--overwrite", "-q"]  # fmt: skip
        bench = [str(BIN / "oodlens"), "bench", "--model", "resnet18", "--checkpoint", str(ckpt),
                 "--id", str(data), "--img-size", "64", "--scorers", "msp", "--ood",
                 "far:noise=noise:gaussian,n=8,size=64", "--no-cache", "--no-plots", "-q",
                 "--val-fraction", "0"]  # fmt: skip
        t_detect, t_bench = [], []
        for _ in range(args.repeats):
            t_detect.append(command(detect))
            t_bench.append(command(bench))
        folder = min(t_detect) / min(t_bench)

        # (c) loading
        t_load = best(lambda: Detector.load(det_path, checkpoint=ckpt), args.repeats)
        t_ckpt = best(
            lambda: create_backbone("resnet18", checkpoint=str(ckpt), img_size=64), args.repeats
        )
        load = t_load / t_ckpt

    print(f"# detect_speed, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    print(f"(a) one image: predict {min(t_predict) * 1e3:.1f} ms, bare forward + score "
          f"{min(t_bare) * 1e3:.1f} ms: {one:.2f}x (target <= 1.3x)")  # fmt: skip
    print(f"(b) {args.images} images: oodlens detect {min(t_detect):.2f} s, oodlens bench "
          f"{min(t_bench):.2f} s: {folder:.2f}x (target <= 1.1x)")  # fmt: skip
    print(f"(c) Detector.load {t_load * 1e3:.0f} ms, create_backbone {t_ckpt * 1e3:.0f} ms: "
          f"{load:.2f}x (target <= 2x)")  # fmt: skip


if __name__ == "__main__":
    main()
