"""Memory check at ImageNet size: peak resident memory of fit + score per output-based scorer
on memory-mapped synthetic outputs (outside ``make test``).

    python benchmarks/memory_check.py [--n-train 1281167] [--n-test 4000] [--dim 2048]
        [--classes 1000] [--scorers msp knn ...] [--dir FOLDER]

Writes synthetic training and test outputs (Gaussian class clusters; features float16,
logits float32 = features @ W + b from a head aligned with the class centres) as memory-mapped cache entries
with :class:`oodlens.outputs.OutputsWriter`, in blocks, so writing them needs little memory.
Then each scorer runs in its own process (fit on train, ``val`` = the test rows for those
that need it, score test) and the parent reads that process's peak RSS from the kernel
(``wait4``); the process samples its own anonymous memory (heap, ``RssAnon``) too. Target (issue 13): every scorer under 4 GB at 1.28M x 2048.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from oodlens.bench.config import expand_scorers
from oodlens.outputs import Outputs, OutputsWriter

BLOCK = 20_000


def write_entry(folder: Path, n: int, dim: int, classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(0, 1, (classes, dim)).astype(np.float32)
    w = centres * dim**-0.5  # a head aligned with the clusters: most rows classified right
    b = np.zeros(classes, np.float32)
    folder.mkdir(parents=True)
    writer = OutputsWriter(folder, "float16")
    for lo in range(0, n, BLOCK):
        rows = min(BLOCK, n - lo)
        y = rng.integers(0, classes, rows)
        f = np.maximum(centres[y] + rng.normal(0, 1, (rows, dim)).astype(np.float32), 0)
        writer.append(f @ w.T + b, f.astype(np.float16), y)
    writer.finish(w, b)


def rss_anon_gb() -> float:
    """This process's anonymous resident memory (heap, not file-backed map pages), in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def child(train_dir: str, test_dir: str, spec: str) -> None:
    from oodlens.registry import create_scorer_from_spec

    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_anon_gb())

    threading.Thread(target=sample, daemon=True).start()
    train, test = Outputs.load_dir(train_dir), Outputs.load_dir(test_dir)
    scorer = create_scorer_from_spec(spec)
    t0 = time.perf_counter()
    scorer.fit(train, val=test)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = scorer.score(test)
    score_s = time.perf_counter() - t0
    done.set()
    peak[0] = max(peak[0], rss_anon_gb())
    print(json.dumps({"fit_s": fit_s, "score_s": score_s, "anon_gb": peak[0], "n": len(scores)}))


def run_measured(cmd: list[str], tmp: Path) -> tuple[int, float, str, str]:
    """Run ``cmd``; its exit code, its peak RSS in GB (``wait4``'s ``ru_maxrss``, KiB on
    Linux), its stdout and stderr."""
    with open(tmp / "out.txt", "w+") as out, open(tmp / "err.txt", "w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps it: Popen.wait is not called
        out.seek(0)
        err.seek(0)
        code = os.waitstatus_to_exitcode(status)
        return code, usage.ru_maxrss * 1024 / 1e9, out.read(), err.read()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n-train", type=int, default=1_281_167)
    ap.add_argument("--n-test", type=int, default=4000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--scorers", nargs="+", default=["all"])
    ap.add_argument("--dir", help="where the entries go (default: a temporary folder)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        train_dir, test_dir = Path(tmp) / "train", Path(tmp) / "test"
        t0 = time.perf_counter()
        write_entry(train_dir, args.n_train, args.dim, args.classes, seed=2)
        write_entry(test_dir, args.n_test, args.dim, args.classes, seed=3)
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*.bin")) / 2**30
        print(
            f"# memory check: {args.n_train} train x {args.n_test} test rows, {args.dim}-d "
            f"float16 features, {args.classes} classes; {size:.1f} GiB on disk, written in "
            f"{time.perf_counter() - t0:.0f}s; {os.cpu_count()} cores"
        )
        print(f"{'scorer':<36} {'peak RSS GB':>12} {'heap GB':>8} {'fit s':>8} {'score s':>8}")
        worst = 0.0
        for spec in expand_scorers(args.scorers):
            cmd = [sys.executable, __file__, "--child", str(train_dir), str(test_dir), spec]
            code, rss_gb, out, err = run_measured(cmd, Path(tmp))
            if code != 0:
                tail = (err.strip().splitlines() or ["(no message)"])[-1][:80]
                print(f"{spec:<36} {rss_gb:>12.2f} {'-':>8} {'-':>8} {'-':>8}  failed: {tail}")
                continue
            r = json.loads(out.strip().splitlines()[-1])
            worst = max(worst, r["anon_gb"])
            print(
                f"{spec:<36} {rss_gb:>12.2f} {r['anon_gb']:>8.2f} {r['fit_s']:>8.1f} "
                f"{r['score_s']:>8.1f}"
            )
        print(
            f"largest heap: {worst:.2f} GB (target < 4 GB at 1.28M x 2048). Peak RSS (the "
            "kernel's ru_maxrss) also counts the pages of the memory maps that were read, which "
            "the kernel can drop under pressure; heap = peak RssAnon, sampled every 20 ms."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
