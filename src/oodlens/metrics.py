r"""Metrics for OOD detection and selective classification, on numpy arrays.

Sign convention (fixed across oodlens): **a higher score means more in-distribution**, and a
sample is *accepted* when ``score >= threshold``. Unless a metric's name says otherwise,
in-distribution (ID) samples are the positive class.

OOD detection (:func:`ood_metrics`):

* ``auroc`` -- area under the ROC curve of ID (positive) vs OOD; the probability that a random
  ID sample outscores a random OOD one, ties counting one half.
* ``aupr_in`` -- average precision with ID positive:
  :math:`\sum_n (R_n - R_{n-1}) P_n` over the distinct thresholds (scikit-learn's definition).
* ``aupr_out`` -- average precision with OOD positive, ranking by the negated score.
* ``fpr95`` -- the ODIN / energy-paper definition: the fraction of OOD samples **accepted** at
  the threshold that accepts (at least) 95% of ID samples. ``threshold95`` is that threshold:
  the :math:`\lceil 0.95 N_{ID} \rceil`-th largest ID score.
* ``fpr95_ood_recall`` -- the OpenOOD / pytorch-ood convention, OOD as positive: the fraction of
  ID samples **rejected** at the threshold that rejects (at least) 95% of OOD samples.

The two FPR@95 conventions are different numbers; tables from OpenOOD are comparable with
``fpr95_ood_recall``, tables from the ODIN and energy papers with ``fpr95``.

``ood_metrics(..., convention="openood")`` instead returns OpenOOD v1.5's own definitions of
its four columns (its evaluator since December 2023), for tables that sit beside OpenOOD's:

* ``auroc`` -- as above;
* ``aupr_in`` / ``aupr_out`` -- the **trapezoidal** area under the precision-recall points of
  every distinct threshold plus the point (recall 0, precision 1), with ID / OOD positive
  (scikit-learn's ``auc(recall, precision)`` on ``precision_recall_curve``); on tied, binary
  or constant scores it exceeds the step-wise average precision by up to ~25 points;
* ``fpr95`` -- OOD positive, ranked by the negated score: the share of ID samples rejected at
  the first ROC point whose OOD recall reaches 95%, where the ROC points are those left after
  scikit-learn's ``roc_curve(drop_intermediate=True)`` removes points on straight runs. It
  equals ``fpr95_ood_recall`` except on tied scores, where the 95% point can fall inside a
  removed run.

See docs/concepts.md for every convention side by side (ours, OpenOOD before and after
August 2023, pytorch-ood).

Selective classification on ID data (:func:`selective_metrics`), with misclassification as
the event: samples are accepted from the highest score down; at coverage :math:`c` the risk
is the error rate among the accepted. Samples with tied scores are accepted together, so the
risk-coverage curve has one point per distinct score.

* ``aurc`` -- :math:`\sum_j (c_j - c_{j-1})\, r_j`, the area under the risk-coverage step
  curve (without ties: :math:`\frac1N \sum_{k=1}^N r(k/N)`; Geifman et al., ICLR 2019).
* ``eaurc`` -- ``aurc`` minus the AURC of the ideal ranking (all correct samples first),
  computed exactly for the finite sample rather than by the continuous approximation
  :math:`\hat r + (1-\hat r)\ln(1-\hat r)`.
* ``risk@c`` -- risk at the smallest achievable coverage >= c.
* ``coverage@risk<r>`` -- the largest coverage whose risk is <= r (0.0 when none).

Rejection at an operating threshold (:func:`rejection_report`): see its docstring.

Degenerate inputs have defined results: constant scores give ``auroc = 0.5``; empty inputs,
non-finite scores, mismatched shapes raise ``ValueError``. Rates whose denominator is zero
(e.g. the share of errors rejected when there are no errors) are ``nan`` by definition and
documented as such, never a made-up number.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Metric",
    "METRICS",
    "metric",
    "metric_columns",
    "higher_is_better",
    "CONVENTIONS",
    "auroc",
    "average_precision",
    "ood_metrics",
    "full_spectrum_metrics",
    "risk_coverage_curve",
    "selective_metrics",
    "rejection_report",
    "threshold_at_acceptance",
]

_EPS = 1e-9
_EXACT_INT = 2**53  # integers beyond this are not all representable in float64


@dataclass(frozen=True)
class Metric:
    """One metric column of the benchmark tables: the catalogue :data:`METRICS` is the only
    list of columns; the summary, the report writers, the bootstrap and the CLI read it."""

    name: str  #: the column (a family's prefix: its columns are ``name@value``)
    higher_is_better: bool  #: its direction (the best value of a column is set in bold)
    description: str  #: one line, for the docs and the HTML report
    id_only: bool = False  #: computed on ID test alone: one value per model, shown once
    table: bool = False  #: in the report tables (Markdown, LaTeX, HTML)
    terminal: bool = False  #: printed by ``oodlens bench``
    bootstrapped: bool = False  #: gets a 95% bootstrap interval with ``--ci``
    #: computed at an operating threshold: with ``--threshold`` also at that fixed score, as
    #: ``name@fixed`` (shown in the tables and the terminal)
    at_threshold: bool = False
    family: bool = False  #: a family of columns ``name@value`` (e.g. ``frr@0.05``)


#: Every metric column the harness reports, in the order the tables show them.
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("auroc", True, "area under the ROC curve, ID positive", table=True,
               terminal=True, bootstrapped=True),
        Metric("fpr95", False, "OOD accepted at the threshold accepting 95% of ID (ODIN); "
               "under the openood convention, ID rejected at 95% OOD recall", table=True,
               terminal=True, bootstrapped=True),
        Metric("fpr95_ood_recall", False, "ID rejected at the threshold rejecting 95% of OOD "
               "(OpenOOD, pytorch-ood)", table=True),
        Metric("aupr_in", True, "area under the precision-recall curve, ID positive",
               table=True, terminal=True, bootstrapped=True),
        Metric("aupr_out", True, "area under the precision-recall curve, OOD positive",
               table=True, terminal=True, bootstrapped=True),
        Metric("ood_rejected", True, "share of OOD rejected at the operating threshold",
               table=True, terminal=True, at_threshold=True),
        Metric("open_set_risk", False, "(accepted ID errors + accepted OOD) / accepted",
               table=True, at_threshold=True),
        Metric("id_accuracy", True, "accuracy on ID test", id_only=True, table=True,
               terminal=True),
        Metric("aurc", False, "area under the risk-coverage curve of ID test", id_only=True,
               table=True, terminal=True),
        Metric("eaurc", False, "AURC minus the AURC of the ideal ranking", id_only=True,
               table=True, terminal=True),
        Metric("id_errors_rejected", True, "share of ID errors rejected at the operating "
               "threshold", id_only=True, at_threshold=True),
        Metric("id_correct_rejected", False, "share of correct ID rejected at the operating "
               "threshold", id_only=True, at_threshold=True),
        Metric("error_rate_accepted", False, "error rate among the accepted ID", id_only=True,
               at_threshold=True),
        Metric("frr", False, "realised ID false-rejection rate of conformal p-values at level "
               "a (frr@a)", table=True, terminal=True, family=True),
        Metric("power", True, "share of OOD rejected by conformal p-values at level a "
               "(power@a)", table=True, terminal=True, family=True),
        Metric("fdr", False, "realised false discovery rate of Benjamini-Hochberg at level q "
               "(fdr@q)", table=True, terminal=True, family=True),
        Metric("fdr_power", True, "share of OOD flagged by Benjamini-Hochberg at level q "
               "(fdr_power@q)", table=True, terminal=True, family=True),
    )
}  # fmt: skip

#: The suffixes of the columns that accompany a metric column (not metrics themselves).
_COMPANIONS = ("_std", "_ci_lo", "_ci_hi")


def metric(column: str) -> Metric | None:
    """The catalogue entry of a table column (``None``: not a metric column).

    ``name@fixed`` is a metric computed at the fixed ``--threshold`` (shown in the tables
    and the terminal); ``family@value`` a member of a family (e.g. ``frr@0.05``).

    Example:
        >>> metric("ood_rejected@fixed").higher_is_better
        True
        >>> metric("frr@0.05").terminal, metric("threshold")
        (True, None)
    """
    if column in METRICS:
        return METRICS[column]
    base, at, suffix = column.partition("@")
    found = METRICS.get(base)
    if not at or found is None or column.endswith(_COMPANIONS):
        return None
    if suffix == "fixed" and found.at_threshold:
        return dataclasses.replace(found, name=column, table=True, terminal=True)
    if found.family:
        return dataclasses.replace(found, name=column, family=False)
    return None


def metric_columns(columns: Sequence[str], where: str = "summary") -> list[str]:
    """The metric columns among ``columns``, in the catalogue's order (members of a family
    and ``@fixed`` columns after the catalogue's own): every one for ``where="summary"``,
    those shown in the report tables for ``"table"``, in the terminal for ``"terminal"``.

    Example:
        >>> metric_columns(["scorer", "frr@0.1", "auroc", "aurc", "open_set_risk"], "terminal")
        ['auroc', 'aurc', 'frr@0.1']
    """
    if where not in ("summary", "table", "terminal"):
        raise ValueError(f"where must be summary, table or terminal, got {where!r}.")
    found = {c: metric(c) for c in columns}
    chosen = [
        c for c, m in found.items() if m is not None and (where == "summary" or getattr(m, where))
    ]
    order = {name: k for k, name in enumerate(METRICS)}
    return sorted(chosen, key=lambda c: (c not in METRICS, order.get(c, 0)))


def higher_is_better(column: str) -> bool | None:
    """Whether a higher value of a table column is better (``None``: not a metric); see
    :func:`metric`."""
    found = metric(column)
    return None if found is None else found.higher_is_better


#: Metric conventions accepted by :func:`ood_metrics` (see the module docstring).
CONVENTIONS = ("oodlens", "openood")


def _scores(name: str, x: np.ndarray, allow_empty: bool = False) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores, got shape {x.shape}.")
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be numeric, got dtype {x.dtype}.")
    if x.dtype.kind in "iu" and x.size and _int_absmax(x) > _EXACT_INT:
        raise ValueError(
            f"{name} holds integers beyond 2**53, which float64 cannot represent exactly "
            "(distinct scores would tie); pass them as ranks or floats."
        )
    x = x.astype(np.float64, copy=False)
    if x.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty; at least one score is needed.")
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} NaN or inf value(s) (first at index "
            f"{int(np.argmax(bad))}); a scorer must return finite scores."
        )
    return x


def _int_absmax(x: np.ndarray) -> int:
    return max(abs(int(x.min())), abs(int(x.max())))


def _exact_pair(pos_scores: np.ndarray, neg_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two integer score arrays with values beyond 2**53 as their joint ranks (exact, order and
    ties preserved, so every rank-based metric is unchanged); other inputs as given."""
    pos, neg = np.asarray(pos_scores), np.asarray(neg_scores)
    big = [a for a in (pos, neg) if a.dtype.kind in "iu" and a.size and _int_absmax(a) > _EXACT_INT]
    if not big or not (pos.dtype.kind in "iu" and neg.dtype.kind in "iu"):
        return pos, neg
    both = np.concatenate([pos.astype(object), neg.astype(object)])  # exact Python ints
    _, rank = np.unique(both, return_inverse=True)
    rank = rank.astype(np.float64)
    return rank[: pos.size], rank[pos.size :]


def _bools(name: str, x: np.ndarray, n: int) -> np.ndarray:
    x = np.asarray(x)
    if x.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the scores, got {x.shape}.")
    if x.dtype != bool:
        if not np.isin(x, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1), got other values.")
        x = x.astype(bool)
    return x


def _fraction(name: str, value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}.")
    return float(value)


def auroc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """Area under the ROC curve with ``pos_scores`` as the positive class.

    Computed from mid-ranks (the Mann-Whitney U statistic), so ties count one half, which
    equals the trapezoidal area of scikit-learn's ``roc_auc_score``. Integer scores beyond
    2**53 are compared exactly (through their joint ranks).
    """
    pos_scores, neg_scores = _exact_pair(pos_scores, neg_scores)
    pos = _scores("pos_scores", pos_scores)
    neg = _scores("neg_scores", neg_scores)
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    sorted_v = allv[order]
    # mid-ranks of tied groups (1-based)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_v)) + 1]
    ends = np.r_[starts[1:], sorted_v.size]
    mid = (starts + ends + 1) / 2.0
    ranks = np.empty_like(allv)
    ranks[order] = np.repeat(mid, ends - starts)
    n_pos, n_neg = pos.size, neg.size
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    r"""Average precision :math:`\sum_n (R_n - R_{n-1}) P_n` with ``pos_scores`` positive.

    Thresholds are the distinct scores, high to low; tied samples enter together.
    """
    pos_scores, neg_scores = _exact_pair(pos_scores, neg_scores)
    pos = _scores("pos_scores", pos_scores)
    neg = _scores("neg_scores", neg_scores)
    tp, fp = _counts_by_threshold(pos, neg)
    precision = tp / (tp + fp)
    recall = tp / pos.size
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold_at_acceptance(scores: np.ndarray, acceptance: float = 0.95) -> float:
    r"""The highest threshold that accepts (``score >= t``) at least ``acceptance`` of ``scores``.

    It is the :math:`\lceil a N \rceil`-th largest score. With ties at the threshold more than
    ``acceptance`` may be accepted.
    """
    s = _scores("scores", scores)
    a = _fraction("acceptance", acceptance)
    k = max(1, math.ceil(a * s.size - _EPS))
    return float(np.sort(s)[::-1][k - 1])


def ood_metrics(
    id_scores: np.ndarray, ood_scores: np.ndarray, convention: str = "oodlens"
) -> dict[str, float]:
    """OOD-detection metrics of ID vs OOD scores (higher = more ID).

    Args:
        id_scores: (N_id,) scores of in-distribution samples.
        ood_scores: (N_ood,) scores of out-of-distribution samples.
        convention: ``"oodlens"`` (default): ``auroc``, ``aupr_in``, ``aupr_out`` (step-wise
            average precision), ``fpr95`` (OOD accepted at 95% ID acceptance),
            ``fpr95_ood_recall`` and ``threshold95``; ``"openood"``: ``auroc``,
            ``aupr_in``, ``aupr_out`` and ``fpr95`` exactly as OpenOOD v1.5's evaluator
            computes them (trapezoidal AUPR, FPR of ID at 95% OOD recall). All fractions.

    Example:
        >>> m = ood_metrics(np.array([3.0, 2.0, 1.0]), np.array([0.0, 1.5]))
        >>> round(m["auroc"], 4)
        0.8333
        >>> round(ood_metrics([1.0, 1.0], [1.0, 0.0], convention="openood")["aupr_in"], 4)
        0.8333
    """
    if convention not in CONVENTIONS:
        raise ValueError(
            f"convention={convention!r} is not valid; use one of {', '.join(CONVENTIONS)}."
        )
    raw_id = np.asarray(id_scores)
    id_scores, ood_scores = _exact_pair(id_scores, ood_scores)
    ind = _scores("id_scores", id_scores)
    ood = _scores("ood_scores", ood_scores)
    if convention == "openood":
        return {
            "auroc": auroc(ind, ood),
            "aupr_in": _trapezoid_aupr(ind, ood),
            "aupr_out": _trapezoid_aupr(-ood, -ind),
            "fpr95": _openood_fpr(ind, ood, 0.95),
        }
    t95 = threshold_at_acceptance(ind, 0.95)
    k = max(1, math.ceil(0.95 * ood.size - _EPS))
    t_ood = float(np.sort(ood)[k - 1])  # rejects (score <= t) at least 95% of OOD
    return {
        "auroc": auroc(ind, ood),
        "aupr_in": average_precision(ind, ood),
        "aupr_out": average_precision(-ood, -ind),
        "fpr95": float(np.mean(ood >= t95)),
        "fpr95_ood_recall": float(np.mean(ind <= t_ood)),
        # the original score at the threshold (ranks stand in for integers beyond 2**53)
        "threshold95": float(raw_id[int(np.argmax(ind == t95))]),
    }


def full_spectrum_metrics(
    id_scores: np.ndarray,
    covariate_scores: Sequence[np.ndarray],
    ood_scores: np.ndarray,
    convention: str = "openood",
    id_correct: np.ndarray | None = None,
    covariate_correct: Sequence[np.ndarray] = (),
) -> dict[str, float]:
    """Full-spectrum OOD metrics (OpenOOD's FS-OOD, Yang et al. 2022): the covariate-shifted
    ID sets (same classes, another distribution) count as in-distribution, so the ID side of
    every OOD metric is ID test together with all of them; the accuracy (``id_accuracy``,
    when the correctness of each prediction is given) is over the same rows.

    Args:
        id_scores: (N_id,) scores of the ID test rows (higher = more ID).
        covariate_scores: the scores of each covariate-shifted ID set.
        ood_scores: (N_ood,) scores of one OOD set.
        convention: as :func:`ood_metrics` (default OpenOOD's, whose evaluator defines the
            setting).
        id_correct, covariate_correct: whether each row's prediction is right (optional).

    Example:
        >>> m = full_spectrum_metrics([3.0, 2.0], [np.array([0.5])], [1.0, 0.0])
        >>> round(m["auroc"], 4)  # ID {3, 2, 0.5} vs OOD {1, 0}: 5 of 6 pairs ordered
        0.8333
    """
    if len(covariate_scores) == 0:
        raise ValueError(
            "Full-spectrum metrics need at least one covariate-shifted ID set (a set of the "
            "ID classes under another distribution, e.g. corrupt:PATH@test)."
        )
    ind = np.concatenate(
        [np.asarray(id_scores, dtype=np.float64).ravel()]
        + [np.asarray(c, dtype=np.float64).ravel() for c in covariate_scores]
    )
    out = ood_metrics(ind, ood_scores, convention=convention)
    if id_correct is not None:
        if len(covariate_correct) != len(covariate_scores):
            raise ValueError(
                f"covariate_correct has {len(covariate_correct)} arrays for "
                f"{len(covariate_scores)} covariate-shifted set(s): give one per set."
            )
        right = np.concatenate(
            [np.asarray(id_correct, dtype=bool).ravel()]
            + [np.asarray(c, dtype=bool).ravel() for c in covariate_correct]
        )
        if right.size != ind.size:
            raise ValueError(
                f"{right.size} correctness values for {ind.size} ID and covariate rows."
            )
        out["id_accuracy"] = float(right.mean())
    return out


def _counts_by_threshold(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives) accepting ``score >= t`` for every
    distinct score t, from the highest down (ties enter together)."""
    s = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last]
    return tp, (last + 1) - tp


def _trapezoid_aupr(pos: np.ndarray, neg: np.ndarray) -> float:
    """Trapezoidal area under the precision-recall points (one per distinct threshold) joined
    to (recall 0, precision 1): OpenOOD's ``auc(recall, precision)``."""
    tp, fp = _counts_by_threshold(pos, neg)
    precision = np.r_[1.0, tp / (tp + fp)]
    recall = np.r_[0.0, tp / pos.size]
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2.0))


def _openood_fpr(ind: np.ndarray, ood: np.ndarray, recall: float) -> float:
    """Share of ID rejected at the first ROC point (OOD positive, ranked by the negated
    score) with OOD recall >= ``recall``, after dropping the points scikit-learn's
    ``roc_curve(drop_intermediate=True)`` drops (those where neither count changes slope)."""
    tps, fps = _counts_by_threshold(-ood, -ind)
    if tps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps, fps = tps[keep], fps[keep]
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(fpr[int(np.argmax(tpr >= recall))])


def risk_coverage_curve(
    id_scores: np.ndarray, id_correct: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The risk-coverage curve of selective classification.

    Samples are accepted from the highest score down; tied scores enter together.

    Args:
        id_scores: (N,) confidence scores of ID samples.
        id_correct: (N,) bool, whether each prediction is correct.

    Returns:
        ``(coverage, risk, thresholds)``, each of shape (K,) for the K distinct scores in
        decreasing order: accepting ``score >= thresholds[j]`` covers ``coverage[j]`` of the
        samples with error rate ``risk[j]``.
    """
    s = _scores("id_scores", id_scores)
    correct = _bools("id_correct", id_correct, s.size)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, err = s[order], ~correct[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    accepted = last + 1
    errors = np.cumsum(err)[last]
    return accepted / s.size, errors / accepted, s_sorted[last]


def _aurc(coverage: np.ndarray, risk: np.ndarray) -> float:
    return float(np.sum(np.diff(np.r_[0.0, coverage]) * risk))


def selective_metrics(
    id_scores: np.ndarray,
    id_correct: np.ndarray,
    coverages: Sequence[float] = (0.8, 0.9, 0.95),
    risks: Sequence[float] = (0.01, 0.05, 0.1),
) -> dict[str, float]:
    """Selective-classification metrics with misclassification as the event.

    Args:
        id_scores: (N,) scores of ID test samples (higher = more confident).
        id_correct: (N,) bool, prediction correct.
        coverages: coverages at which to report ``risk@<c>``.
        risks: risks at which to report ``coverage@risk<r>``.

    Returns:
        ``accuracy``, ``aurc``, ``eaurc``, ``risk@<c>`` for each coverage and
        ``coverage@risk<r>`` for each risk (see the module docstring).
    """
    coverage, risk, _ = risk_coverage_curve(id_scores, id_correct)
    correct = np.asarray(id_correct, dtype=bool)
    n, n_err = correct.size, int((~correct).sum())
    k = np.arange(1, n + 1)
    ideal_risk = np.maximum(0, k - (n - n_err)) / k  # all correct samples accepted first
    aurc = _aurc(coverage, risk)
    out: dict[str, float] = {
        "accuracy": float(correct.mean()),
        "aurc": aurc,
        "eaurc": aurc - float(ideal_risk.mean()),
    }
    for c in coverages:
        c = _fraction("coverage", c)
        j = int(np.searchsorted(coverage, c - _EPS, side="left"))
        out[f"risk@{c:g}"] = float(risk[min(j, risk.size - 1)])
    for r in risks:
        ok = risk <= r + _EPS
        out[f"coverage@risk{r:g}"] = float(coverage[ok].max()) if ok.any() else 0.0
    return out


def rejection_report(
    id_scores: np.ndarray,
    id_correct: np.ndarray,
    ood_scores: np.ndarray | None = None,
    threshold: float | None = None,
    id_acceptance: float = 0.95,
) -> dict[str, float]:
    """What a deployed threshold rejects: ID errors, correct ID, OOD.

    A sample is accepted when ``score >= threshold``.

    Args:
        id_scores: (N_id,) scores of ID test samples.
        id_correct: (N_id,) bool, whether each ID prediction is correct.
        ood_scores: (N_ood,) scores of OOD samples, optional.
        threshold: a fixed score threshold (e.g. the origin's density 0.04). ``None`` uses the
            threshold that accepts ``id_acceptance`` of the ID samples.
        id_acceptance: share of ID to accept when ``threshold`` is ``None`` (default 0.95).

    Returns:
        ``threshold``; ``id_accepted`` (share of ID accepted); ``id_errors_rejected`` (share of
        ID errors rejected; ``nan`` if there are no errors); ``id_correct_rejected`` (share of
        correct ID rejected; ``nan`` if none is correct); ``error_rate_accepted`` (error rate
        among accepted ID; ``nan`` if none accepted); and, with ``ood_scores``,
        ``ood_rejected`` (share of OOD rejected) and ``open_set_risk`` = (accepted ID errors +
        accepted OOD) / (accepted ID + accepted OOD) (``nan`` if nothing is accepted).
    """
    ind = _scores("id_scores", id_scores)
    correct = _bools("id_correct", id_correct, ind.size)
    if threshold is None:
        t = threshold_at_acceptance(ind, _fraction("id_acceptance", id_acceptance))
    else:
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold!r}.")
        t = float(threshold)
    acc = ind >= t
    n_err, n_cor = int((~correct).sum()), int(correct.sum())
    acc_err = int((acc & ~correct).sum())
    nan = float("nan")
    out = {
        "threshold": t,
        "id_accepted": float(acc.mean()),
        "id_errors_rejected": (n_err - acc_err) / n_err if n_err else nan,
        "id_correct_rejected": float((~acc & correct).sum()) / n_cor if n_cor else nan,
        "error_rate_accepted": acc_err / int(acc.sum()) if acc.any() else nan,
    }
    if ood_scores is not None:
        ood = _scores("ood_scores", ood_scores)
        ood_acc = int((ood >= t).sum())
        n_acc = int(acc.sum()) + ood_acc
        out["ood_rejected"] = 1.0 - ood_acc / ood.size
        out["open_set_risk"] = (acc_err + ood_acc) / n_acc if n_acc else nan
    return out
