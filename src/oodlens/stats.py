"""Statistics for tables a paper needs: bootstrap confidence intervals of the OOD metrics and
a paired bootstrap test between two scorers on the same rows (seeded, numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .metrics import METRICS, auroc, ood_metrics

__all__ = ["bootstrap_ci", "paired_bootstrap"]

#: The metrics :func:`bootstrap_ci` gives intervals for (``bootstrapped`` in the catalogue).
CI_METRICS = tuple(m.name for m in METRICS.values() if m.bootstrapped)


def _resamples(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n, size=(count, n))


def bootstrap_ci(
    id_scores: np.ndarray,
    ood_scores: np.ndarray,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    convention: str = "oodlens",
    metrics: Sequence[str] | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the OOD metrics: ID and OOD rows are resampled
    with replacement, independently (they are independent samples), ``n_resamples`` times.

    Returns ``{metric: (low, high)}`` at the given ``level`` (default 95%).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> lo, hi = bootstrap_ci(rng.normal(1, 1, 300), rng.normal(0, 1, 300), 200)["auroc"]
        >>> bool(0.6 < lo < hi < 0.85)
        True
    """
    metrics = CI_METRICS if metrics is None else metrics
    if n_resamples < 10:
        raise ValueError(f"n_resamples must be at least 10, got {n_resamples}.")
    ind, ood = np.asarray(id_scores, dtype=np.float64), np.asarray(ood_scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ri, ro = _resamples(ind.size, n_resamples, rng), _resamples(ood.size, n_resamples, rng)
    values = {m: np.empty(n_resamples) for m in metrics}
    for b in range(n_resamples):
        m = ood_metrics(ind[ri[b]], ood[ro[b]], convention=convention)
        for key in metrics:
            values[key][b] = m[key]
    tail = (1.0 - level) / 2.0 * 100.0
    return {
        k: (float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail)))
        for k, v in values.items()
    }


def paired_bootstrap(
    id_a: np.ndarray,
    ood_a: np.ndarray,
    id_b: np.ndarray,
    ood_b: np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap test of the AUROC difference between scorers a and b scored on the
    **same** rows: each resample draws ID and OOD row indices once and evaluates both
    scorers on them, so the correlation between the two is kept.

    Returns ``diff`` (AUROC a − b on the full data), ``ci_low``/``ci_high`` (95% percentile
    interval of the difference) and ``p_value``: two-sided, twice the smaller share of
    resampled differences on either side of 0 (at least 1/(n_resamples + 1)).
    """
    id_a, ood_a = np.asarray(id_a, dtype=np.float64), np.asarray(ood_a, dtype=np.float64)
    id_b, ood_b = np.asarray(id_b, dtype=np.float64), np.asarray(ood_b, dtype=np.float64)
    if id_a.shape != id_b.shape or ood_a.shape != ood_b.shape:
        raise ValueError("A paired test needs both scorers' scores on the same rows.")
    rng = np.random.default_rng(seed)
    ri, ro = _resamples(id_a.size, n_resamples, rng), _resamples(ood_a.size, n_resamples, rng)
    diffs = np.array(
        [
            auroc(id_a[ri[b]], ood_a[ro[b]]) - auroc(id_b[ri[b]], ood_b[ro[b]])
            for b in range(n_resamples)
        ]
    )
    side = min(np.mean(diffs <= 0.0), np.mean(diffs >= 0.0))
    return {
        "diff": auroc(id_a, ood_a) - auroc(id_b, ood_b),
        "ci_low": float(np.percentile(diffs, 2.5)),
        "ci_high": float(np.percentile(diffs, 97.5)),
        "p_value": float(max(min(1.0, 2.0 * side), 1.0 / (n_resamples + 1))),
    }
