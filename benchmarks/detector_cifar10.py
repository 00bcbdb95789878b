"""A KNN detector on CIFAR-10 at alpha = 0.05: does it reject about 5% of the ID test images
it never saw, and how many SVHN images does it reject?

    python benchmarks/detector_cifar10.py [--data-root ../shared/data] [--cache-dir DIR]

Fits ``knn`` (k = 50) on the CIFAR-10 training outputs of ``cifar10_resnet18_64px`` (the
models folder beside the data root) and calibrates it on the held-out calib split of
CIFAR-10 test, exactly as ``oodlens fit`` does; then detects on the CIFAR-10 test images in
neither the val nor the calib split, and on SVHN. The realised rejection rate of those ID
images varies with the calibration set (standard deviation sqrt(alpha (1 - alpha) / n_calib),
about 0.7 points for 1,000 calibration images) and with the test images themselves; the 95%
interval printed includes both. Skipped (exit 0) without the data.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import oodlens
from oodlens.datasets import holdout_split

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-root",
        default=os.environ.get("OODLENS_DATA_ROOT", str(ROOT.parent / "shared" / "data")),
    )
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    data = Path(args.data_root)
    ckpt = data.parent / "models" / "cifar10_resnet18_64px.safetensors"
    if not (data / "cifar10").is_dir() or not ckpt.is_file():
        print(f"detector_cifar10: skipped: no CIFAR-10 data or model under {data.parent}")
        return
    cfg = oodlens.BenchmarkConfig(
        id=str(data / "cifar10"),
        ood=(),
        models=("resnet18",),
        checkpoints=(str(ckpt),),
        img_size=64,
        scorers=("knn",),
        alphas=(args.alpha,),
        cache_dir=args.cache_dir,
    )
    t0 = time.perf_counter()
    detector = oodlens.fit_detector(cfg, progress=False)
    t_fit = time.perf_counter() - t0
    test = oodlens.load_dataset(str(data / "cifar10") + "@test")
    rest = holdout_split(test, cfg.val_fraction, cfg.calib_fraction)[0]
    t0 = time.perf_counter()
    id_verdicts = detector.predict(rest)
    svhn = detector.predict(oodlens.load_dataset(str(data / "ood" / "svhn")))
    t_detect = time.perf_counter() - t0
    n_calib, n = len(detector.calib_scores), len(id_verdicts)
    rate = float(id_verdicts.rejected.mean())
    sd = math.sqrt(args.alpha * (1 - args.alpha) / n_calib + rate * (1 - rate) / n)
    lo, hi = rate - 1.96 * sd, rate + 1.96 * sd
    print(f"# detector_cifar10: knn (k=50) on {ckpt.name} at 64 px, alpha {args.alpha}")
    print(f"fit + calibration {t_fit:.0f} s (outputs cached after the first run); detect "
          f"{n + len(svhn)} images {t_detect:.0f} s")  # fmt: skip
    print(f"calibration images (calib split of CIFAR-10 test): {n_calib}")
    print(f"CIFAR-10 test images in neither val nor calib: {n}, rejected "
          f"{int(id_verdicts.rejected.sum())} = {100 * rate:.2f}% (95% interval with the "
          f"calibration's own variation: {100 * lo:.2f}-{100 * hi:.2f}%; contains "
          f"{100 * args.alpha:g}%: {'yes' if lo <= args.alpha <= hi else 'NO'})")  # fmt: skip
    print(f"SVHN ({len(svhn)} images): rejected {int(svhn.rejected.sum())} = "
          f"{100 * float(svhn.rejected.mean()):.2f}% (the power at this alpha)")  # fmt: skip


if __name__ == "__main__":
    main()
