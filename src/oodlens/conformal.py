r"""Rejections with a guarantee: split-conformal p-values on top of any fitted scorer.

With scores :math:`s_1, \dots, s_n` of **held-out** in-distribution calibration samples (the
harness's ``calib`` split: never the scorer's fitting or tuning rows, never test rows), the
conformal p-value of a new sample with score :math:`s` (higher = more in-distribution) is

.. math:: p(s) = \frac{1 + \#\{i : s_i \le s\}}{n + 1}

If the calibration and test ID samples are exchangeable, rejecting when :math:`p \le \alpha`
wrongly rejects an ID sample with probability at most :math:`\alpha`, marginally (over the
draw of the calibration set and the test sample). Benjamini-Hochberg on a batch of these
p-values controls the false discovery rate of the flagged set at level :math:`q`, because
conformal p-values are positively dependent (PRDS). Reference: Bates, Candès, Lei, Romano,
Sesia, "Testing for outliers with conformal p-values", Annals of Statistics 51 (2023),
https://arxiv.org/abs/2104.08279.

What it does **not** say: nothing about OOD samples (the power is whatever the scorer gives),
nothing conditional on a particular calibration set (use ``delta``), nothing under a shift
between calibration and test ID data, and with ``n`` calibration rows the smallest p-value
is :math:`1/(n+1)`, so any :math:`\alpha < 1/(n+1)` rejects nothing.

Options:

* ``ties="conservative"`` (default) counts tied calibration scores as at least as extreme
  (the formula above); ``ties="randomized"`` breaks ties with a uniform draw,
  :math:`p = (\#\{s_i < s\} + U\,(1 + \#\{s_i = s\}))/(n+1)`, which is exactly uniform under
  exchangeability (seeded by ``random_state``).
* ``delta``: calibration-conditional p-values (Bates et al. 2023, section 3, the DKW-Massart
  variant): :math:`p = \min(1, \hat F_n(s) + \sqrt{\log(1/\delta) / (2n)})` with
  :math:`\hat F_n` the empirical CDF of the calibration scores. With probability at least
  :math:`1 - \delta` over the calibration draw, :math:`P(p \le \alpha \mid \text{calibration})
  \le \alpha` for every :math:`\alpha` at once. The price is the additive
  :math:`\sqrt{\log(1/\delta)/(2n)}`: 0.11 at n = 100 and delta = 0.1, 0.011 at n = 10,000.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .arrays import row_fingerprints
from .errors import NotFittedError
from .outputs import Outputs
from .params import Interval, Options, validate_params
from .scorers.base import ModelInputs, Scorer

__all__ = ["ConformalRejector", "benjamini_hochberg", "conformal_p_values"]

log = logging.getLogger(__name__)


_P_VALUE_CONSTRAINTS = {
    "ties": [Options(("conservative", "randomized"))],
    "delta": [Interval(float, 0, 1, closed="neither"), None],
}


def conformal_p_values(
    calib_scores: np.ndarray,
    scores: np.ndarray,
    ties: str = "conservative",
    delta: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Conformal p-values of ``scores`` against ``calib_scores`` (higher = more ID); see the
    module docstring for the three variants.

    Args:
        calib_scores: (n,) scores of held-out ID calibration rows.
        scores: (N,) scores to test.
        ties: ``"conservative"`` (default) or ``"randomized"``.
        delta: ``None`` (marginal p-values) or a probability in (0, 1) (calibration-
            conditional p-values).
        rng: the generator of the randomized tie-breaking; every call draws fresh uniforms
            from it, so pass the same generator to successive calls (as
            :class:`ConformalRejector` does). ``None``: a new, unseeded one.

    Raises:
        InvalidParameterError: ``ties`` or ``delta`` is not valid (e.g. ``delta=nan`` or 0).
        ValueError: no calibration score, or a non-finite score.

    Example:
        >>> conformal_p_values(np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 9.0]))
        array([0.25, 0.75, 1.  ])
    """
    validate_params("conformal_p_values", {"ties": ties, "delta": delta}, _P_VALUE_CONSTRAINTS)
    calib = np.sort(np.asarray(calib_scores, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)
    n = calib.size
    if n == 0:
        raise ValueError("Conformal p-values need at least one calibration score.")
    if not (np.isfinite(calib).all() and np.isfinite(s).all()):
        raise ValueError("Conformal p-values need finite scores.")
    at_most = np.searchsorted(calib, s, side="right")  # #{calib <= s}
    if delta is not None:
        return np.minimum(1.0, at_most / n + math.sqrt(math.log(1.0 / delta) / (2.0 * n)))
    if ties == "conservative":
        return (1.0 + at_most) / (n + 1.0)
    below = np.searchsorted(calib, s, side="left")  # #{calib < s}
    u = (rng if rng is not None else np.random.default_rng()).uniform(size=s.shape)
    return (below + u * (1.0 + at_most - below)) / (n + 1.0)


def benjamini_hochberg(p_values: np.ndarray, q: float) -> np.ndarray:
    """Benjamini-Hochberg at false discovery rate ``q``: flags the k smallest p-values, k the
    largest index with :math:`p_{(k)} \\le k q / m`. Returns a boolean array.

    Example:
        >>> benjamini_hochberg(np.array([0.001, 0.02, 0.04, 0.5]), 0.1)
        array([ True,  True,  True, False])
    """
    p = np.asarray(p_values, dtype=np.float64)
    if not 0.0 < q < 1.0:
        raise ValueError(f"fdr must be in (0, 1), got {q!r}.")
    m = p.size
    if m == 0:
        return np.zeros(0, dtype=bool)
    order = np.sort(p)
    ok = np.flatnonzero(order <= q * np.arange(1, m + 1) / m)
    if ok.size == 0:
        return np.zeros(m, dtype=bool)
    return p <= order[ok[-1]]


class ConformalRejector:
    """Split-conformal rejection and batch flagging on top of a fitted scorer.

    Args:
        scorer: a fitted :class:`~oodlens.Scorer` (higher = more in-distribution).
        ties: ``"conservative"`` (default) or ``"randomized"``.
        delta: ``None`` (marginal p-values, default) or a probability in (0, 1) for
            calibration-conditional p-values.
        random_state: seed of the randomized tie-breaking.

    Example:
        >>> import oodlens
        >>> from oodlens.testing import synthetic_outputs
        >>> scorer = oodlens.create_scorer("msp").fit(synthetic_outputs(200, seed=0))
        >>> rej = ConformalRejector(scorer).calibrate(synthetic_outputs(99, seed=1))
        >>> p = rej.p_values(synthetic_outputs(5, seed=2))
        >>> bool(((p >= 0.01) & (p <= 1)).all())
        True
    """

    parameter_constraints = {
        **_P_VALUE_CONSTRAINTS,
        "random_state": [Interval(int, 0, None)],
    }

    def __init__(
        self,
        scorer: Scorer,
        ties: str = "conservative",
        delta: float | None = None,
        random_state: int = 0,
    ) -> None:
        validate_params(
            "ConformalRejector",
            {"ties": ties, "delta": delta, "random_state": random_state},
            self.parameter_constraints,
        )
        if not isinstance(scorer, Scorer) or "n_classes_" not in vars(scorer):
            raise NotFittedError(
                "ConformalRejector needs a fitted oodlens Scorer: call scorer.fit(train) first."
            )
        self.scorer, self.ties, self.delta, self.random_state = scorer, ties, delta, random_state
        self.calib_scores_: np.ndarray | None = None
        # one generator per rejector, seeded once: every call draws fresh uniforms (re-seeding
        # per call would give one-row calls the same draw, and up to 5x alpha rejected)
        self._rng = np.random.default_rng(random_state)

    def calibrate(self, calib: Outputs, model: ModelInputs | None = None) -> ConformalRejector:
        """Score the held-out ID calibration outputs (``model``: their images, for a
        model-aware scorer). Returns ``self``.

        Raises:
            ValueError: some calibration rows were used to fit the scorer (their p-values
                would be too small: the guarantee needs rows the scorer never saw).
        """
        self.check_calibration_rows(calib)
        return self.calibrate_scores(self.scorer.score(calib, model=model))

    def calibrate_scores(
        self, scores: np.ndarray, rows: Outputs | None = None
    ) -> ConformalRejector:
        """Calibrate on scores the scorer already gave held-out ID rows (e.g. the harness's
        calib split, scored with the rest); ``rows``: those rows' outputs, to check that
        none was used to fit the scorer. Returns ``self``.

        Raises:
            ValueError: no score, a non-finite or non-1-D score array, or (with ``rows``)
                rows the scorer was fitted on.
        """
        values = np.asarray(scores, dtype=np.float64)
        if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
            raise ValueError(
                "calibrate_scores needs a non-empty 1-D array of finite scores, got shape "
                f"{values.shape}."
            )
        if rows is not None:
            self.check_calibration_rows(rows)
        self.calib_scores_ = values
        return self

    def check_calibration_rows(self, calib: Outputs) -> None:
        """Raise ``ValueError`` if some of ``calib``'s rows were used to fit the scorer (their
        p-values would be too small: the guarantee needs rows the scorer never saw)."""
        fitted = getattr(self.scorer, "fit_rows_", None)
        if fitted is None:
            return
        used = np.isin(row_fingerprints(calib.logits), fitted)
        if used.any():
            raise ValueError(
                f"{int(used.sum())} of the {calib.n_samples} calibration rows were used to "
                f"fit the scorer {self.scorer.name!r}; conformal p-values need held-out ID "
                "rows the scorer never saw (the harness's calib split), or the guarantee "
                "does not hold."
            )

    def _calibration(self) -> np.ndarray:
        if self.calib_scores_ is None:
            raise NotFittedError("Call ConformalRejector.calibrate(calib_outputs) first.")
        return self.calib_scores_

    @property
    def n_calib(self) -> int:
        """Number of calibration rows."""
        return int(self._calibration().size)

    @property
    def min_alpha(self) -> float:
        """The smallest p-value possible, so any alpha below it rejects nothing: 1/(n+1)
        for conservative p-values, :math:`\\sqrt{\\log(1/\\delta)/(2n)}` for
        calibration-conditional ones, 0 with randomized ties (whose p-values reach 0)."""
        n = self.n_calib
        if self.delta is not None:
            return math.sqrt(math.log(1.0 / self.delta) / (2.0 * n))
        return 0.0 if self.ties == "randomized" else 1.0 / (n + 1.0)

    def p_values(self, outputs: Outputs, model: ModelInputs | None = None) -> np.ndarray:
        """(N,) conformal p-values; small = unlike the calibration ID data (``model``: the
        images, for a model-aware scorer). Randomized ties draw fresh uniforms at every
        call, from the rejector's one generator (seeded by ``random_state``)."""
        return conformal_p_values(
            self._calibration(),
            self.scorer.score(outputs, model=model),
            ties=self.ties,
            delta=self.delta,
            rng=self._rng,
        )

    def reject(
        self, outputs: Outputs, alpha: float, model: ModelInputs | None = None
    ) -> np.ndarray:
        """(N,) bool: reject when ``p <= alpha``; an ID sample is wrongly rejected with
        probability at most ``alpha`` (marginally; see the module docstring). ``model``: the
        images, for a model-aware scorer."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}.")
        if alpha < self.min_alpha:
            log.warning(
                "alpha=%g is below the smallest p-value %.4g with n=%d calibration rows "
                "(1/(n+1) for conservative p-values): nothing can be rejected; use more "
                "calibration rows.",
                alpha,
                self.min_alpha,
                self.n_calib,
            )
        return self.p_values(outputs, model=model) <= alpha

    def flag_batch(
        self, outputs: Outputs, fdr: float, model: ModelInputs | None = None
    ) -> np.ndarray:
        """(N,) bool: Benjamini-Hochberg on the batch's p-values; the expected share of ID
        samples among the flagged is at most ``fdr`` (``model``: as for :meth:`reject`)."""
        return benjamini_hochberg(self.p_values(outputs, model=model), fdr)
