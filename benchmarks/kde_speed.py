"""logit_kde (grid) against scipy.stats.gaussian_kde, side by side in one process.

    python benchmarks/kde_speed.py              # full run (needs ~6 GB of free disk in /tmp)
    python benchmarks/kde_speed.py --quick      # 10k and 100k only, no ImageNet-sized case

(a) n_train = n_test in {10k, 100k, 1M}, C = 10. scipy is what a user would otherwise
    write: one gaussian_kde per column, mean of the densities. Its evaluation is O(n_train)
    per test value, so for large n it is timed on a subsample of test rows and extrapolated
    linearly to all of them (printed as "extrapolated").
(b) ImageNet-sized: 1.28M training rows x 1000 classes (float32, memory-mapped, synthetic:
    one high logit per row), 50k test rows; fit + score time, and peak RSS of a fresh process
    at 128k and at 1.28M training rows (streaming: the larger may be at most 1.5x the smaller).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import gaussian_kde

import oodlens
from oodlens.arrays import iter_row_chunks


def realistic(n: int, c: int, seed: int, dtype=np.float64) -> np.ndarray:
    """Logits of a trained classifier: one high (own-class) logit per row, the rest low."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, c), dtype=np.float32).astype(dtype, copy=False)
    z -= 1.0
    z[np.arange(n), rng.integers(0, c, n)] = rng.normal(8.0, 2.0, n)
    return z


def scipy_marginal(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    return np.mean(
        [gaussian_kde(train[:, j]).pdf(test[:, j]) for j in range(train.shape[1])], axis=0
    )


def bench_small(n: int, c: int = 10) -> dict:
    train, test = realistic(n, c, 0), realistic(n, c, 1)
    t0 = time.perf_counter()
    scorer = oodlens.create_scorer("logit_kde", method="grid").fit(oodlens.Outputs(logits=train))
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    grid_scores = scorer.score(oodlens.Outputs(logits=test))
    t_score = time.perf_counter() - t0

    m = min(n, max(20, int(2e8 // (n * c))))  # test rows scipy evaluates for real
    sub = np.random.default_rng(2).choice(n, m, replace=False)
    t0 = time.perf_counter()
    kdes = [gaussian_kde(train[:, j]) for j in range(c)]
    s_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = np.mean([kdes[j].pdf(test[sub, j]) for j in range(c)], axis=0)
    s_score = (time.perf_counter() - t0) * (n / m)
    peak = max(ref.max(), grid_scores.max())
    err = float(np.max(np.abs(grid_scores[sub] - ref)))
    return {
        "n_train": n,
        "n_test": n,
        "classes": c,
        "grid_fit_s": t_fit,
        "grid_score_s": t_score,
        "scipy_fit_s": s_fit,
        "scipy_score_s": s_score,
        "scipy_rows_timed": m,
        "scipy_extrapolated": m < n,
        "speedup": (s_fit + s_score) / (t_fit + t_score),
        "max_abs_err": err,
        "max_err_over_peak": err / peak,
    }


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Unlike getrusage's ru_maxrss, it is not
    inherited from the parent across fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(train_path: str, n: int, c: int, test_path: str, n_test: int) -> None:
    """Run in a fresh process: fit + score on memory-mapped files, report time and peak RSS."""
    train = np.memmap(train_path, dtype=np.float32, mode="r", shape=(n, c))
    test = np.memmap(test_path, dtype=np.float32, mode="r", shape=(n_test, c))
    t0 = time.perf_counter()
    outputs = oodlens.Outputs(logits=train)
    scorer = oodlens.create_scorer("logit_kde").fit(outputs)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = scorer.score(oodlens.Outputs(logits=test))
    t_score = time.perf_counter() - t0
    np.save(train_path + f".scores{n}.npy", scores[:20])
    rss_mb = peak_rss_mb()
    print(json.dumps({"n_train": n, "fit_s": t_fit, "score_s": t_score, "peak_rss_mb": rss_mb}))


def write_memmap(path: Path, n: int, c: int, seed: int) -> None:
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, c))
    step = 65536
    for start in range(0, n, step):
        k = min(step, n - start)
        mm[start : start + k] = realistic(k, c, seed * 100_000 + start, dtype=np.float32)
    mm.flush()
    del mm


def bench_imagenet(workdir: Path, n: int = 1_281_167, c: int = 1000, n_test: int = 50_000) -> dict:
    train_path, test_path = workdir / "train.f32", workdir / "test.f32"
    t0 = time.perf_counter()
    write_memmap(train_path, n, c, 0)
    write_memmap(test_path, n_test, c, 1)
    gen_s = time.perf_counter() - t0
    runs = []
    for rows in (n // 10, n):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(train_path),
            str(rows),
            str(c),
            str(test_path),
            str(n_test),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    # accuracy at full size: 20 test rows, 5 columns, against scipy (columns read by streaming)
    cols = [0, 1, 2, 3, 4]
    train = np.memmap(train_path, dtype=np.float32, mode="r", shape=(n, c))
    col_data = np.concatenate(
        [chunk[:, cols].astype(np.float64) for _, chunk in iter_row_chunks(train, 65536)]
    )
    test = np.asarray(
        np.memmap(test_path, dtype=np.float32, mode="r", shape=(n_test, c))[:20], dtype=np.float64
    )
    scorer_cols = oodlens.create_scorer("logit_kde").fit(oodlens.Outputs(logits=col_data))
    ref = scipy_marginal(col_data, test[:, cols])
    got = scorer_cols.score(oodlens.Outputs(logits=test[:, cols]))
    err = float(np.max(np.abs(got - ref)) / max(ref.max(), 1e-300))
    return {"generate_s": gen_s, "runs": runs, "five_column_err_over_peak": err}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="10k and 100k only; skip the ImageNet-sized case"
    )
    ap.add_argument("--workdir", default=None, help="where to write the 5 GB memory-mapped file")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        p, n, c, tp, nt = args.child
        child(p, int(n), int(c), tp, int(nt))
        return
    print(
        f"# logit_kde speed, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}"
    )
    sizes = (10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000)
    small = [bench_small(n) for n in sizes]
    print("\n(a) C = 10, marginal mode, n_test = n_train")
    print(
        f"{'n':>9} {'grid fit':>9} {'grid score':>11} {'scipy fit':>10} {'scipy score':>12} {'speedup':>9} {'err/peak':>9}"
    )
    for r in small:
        note = (
            f"  (scipy timed on {r['scipy_rows_timed']} test rows, extrapolated)"
            if r["scipy_extrapolated"]
            else ""
        )
        print(
            f"{r['n_train']:>9,} {r['grid_fit_s']:>8.3f}s {r['grid_score_s']:>10.3f}s {r['scipy_fit_s']:>9.4f}s "
            f"{r['scipy_score_s']:>11.1f}s {r['speedup']:>8.0f}x {r['max_err_over_peak']:>9.1e}{note}"
        )
    result = {"small": small}
    if not args.quick:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            big = bench_imagenet(Path(tmp))
        result["imagenet"] = big
        print(
            "\n(b) ImageNet-sized: 1000 classes, float32 memory-mapped training logits, 50,000 test rows"
        )
        print(
            f"    (synthetic data written in {big['generate_s']:.0f}s; each size run in a fresh process)"
        )
        print(f"{'n_train':>11} {'fit':>8} {'score':>8} {'fit+score':>10} {'peak RSS':>10}")
        for r in big["runs"]:
            print(
                f"{r['n_train']:>11,} {r['fit_s']:>7.1f}s {r['score_s']:>7.1f}s {r['fit_s'] + r['score_s']:>9.1f}s {r['peak_rss_mb']:>8.0f}MB"
            )
        a, b = big["runs"]
        print(
            f"    peak RSS ratio 1.28M / 128k: {b['peak_rss_mb'] / a['peak_rss_mb']:.2f} (target <= 1.5)"
        )
        print(
            f"    max error vs scipy (5 columns, 20 test rows, full 1.28M fit): {big['five_column_err_over_peak']:.1e} of peak"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
