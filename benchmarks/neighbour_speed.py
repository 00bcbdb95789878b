"""KNN and NNGuide on the CPU, side by side in one process against a reference written here:
an in-memory bank of normalised rows (float32 for KNN, float64 for NNGuide), exact blocked
float64 products keeping the running k largest similarities -- how the plugin worked before
its bank had to stay under 4 GB at 1.28M x 2048. The plugin keeps such a bank up to
IN_MEMORY_BANK_BYTES (1 GiB) and streams a reference to the features above it; both modes are
timed (the streamed one with the limit set to 0), and the scores compared.

    python benchmarks/neighbour_speed.py [--n-train 50000] [--n-test 2000] [--dim 512]

Both read the same memory-mapped float32 features. Prints seconds (best of 5) and the ratio
plugin / reference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import oodlens_feature_scorers
from scipy.special import logsumexp

import oodlens
from oodlens.arrays import iter_row_chunks, rows_per_chunk

BLOCK = 1 << 22


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def reference_top_k(bank: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) largest products of the unit queries with an in-memory float32 bank."""
    n, d = bank.shape
    bank_rows = min(n, rows_per_chunk(d, BLOCK))
    out = np.empty((len(queries), k))
    for start, block in iter_row_chunks(queries, rows_per_chunk(max(d, bank_rows + k), BLOCK)):
        z = _unit(np.asarray(block, np.float64))
        top = np.empty((len(z), 0))
        for b in range(0, n, bank_rows):
            top = np.concatenate([top, z @ bank[b : b + bank_rows].astype(np.float64).T], axis=1)
            if top.shape[1] > k:
                top = -np.partition(-top, k - 1, axis=1)[:, :k]
        out[start : start + len(z)] = top
    return out


class _Reference(oodlens.Scorer):
    """The former in-memory bank as an oodlens Scorer, so that both sides pay the same
    checks (requirements, fitted-row fingerprints, finite scores)."""

    requires = frozenset({"features", "logits"})

    def __init__(self, kind: str = "knn", k: int = 50) -> None:
        self.kind, self.k = kind, k

    def _fit(self, train: oodlens.Outputs) -> None:
        feats = np.asarray(train.features, np.float32)
        if self.kind == "knn":
            self.bank_ = _unit(feats).astype(np.float32)
        else:  # NNGuide's bank was float64
            energy = logsumexp(np.asarray(train.logits, np.float64), axis=1)
            self.bank_ = _unit(feats.astype(np.float64)) * energy[:, None]

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        top = reference_top_k(self.bank_, outputs.features, self.k)
        if self.kind == "knn":
            return -np.sqrt(np.maximum(2.0 - 2.0 * top.min(axis=1), 0.0))
        return logsumexp(np.asarray(outputs.logits, np.float64), axis=1) * top.mean(axis=1)


def best_of(fn, repeats: int = 5) -> tuple[float, np.ndarray]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=2_000)
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        outs = []
        for tag, n in (("train", args.n_train), ("test", args.n_test)):
            path = Path(tmp) / f"{tag}.npy"
            np.save(path, np.abs(rng.normal(size=(n, args.dim))).astype(np.float32))
            outs.append(
                oodlens.Outputs(
                    logits=rng.normal(size=(n, 10)).astype(np.float32),
                    features=np.load(path, mmap_mode="r"),
                    labels=rng.integers(0, 10, n),
                )
            )
        train, test = outs
        print(
            f"# {args.n_train} train x {args.n_test} test x {args.dim}-d float32 (memory-mapped); "
            "seconds for fit + score, best of 5"
        )
        print(f"{'scorer':<22} {'plugin s':>9} {'reference s':>12} {'ratio':>6} {'max |diff|':>11}")
        limit = oodlens_feature_scorers.IN_MEMORY_BANK_BYTES
        for name, params in (("knn", {"k": 50, "use_faiss": False}), ("nnguide", {"k": 10})):
            ref_s, ref = best_of(
                lambda n=name, p=params: _Reference(n, p["k"]).fit(train).score(test)
            )
            for mode, bytes_ in (("in memory", limit), ("streamed", 0)):
                oodlens_feature_scorers.IN_MEMORY_BANK_BYTES = bytes_
                ours_s, ours = best_of(
                    lambda n=name, p=params: oodlens.create_scorer(n, **p).fit(train).score(test)
                )
                diff = float(np.max(np.abs(ours - ref)))
                label = f"{name} ({mode})"
                print(
                    f"{label:<22} {ours_s:>9.2f} {ref_s:>12.2f} {ours_s / ref_s:>6.2f} {diff:>11.1e}"
                )
            oodlens_feature_scorers.IN_MEMORY_BANK_BYTES = limit


if __name__ == "__main__":
    main()
