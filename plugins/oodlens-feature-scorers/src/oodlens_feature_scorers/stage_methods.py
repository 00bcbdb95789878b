r"""Scorers on statistics of earlier stages that are not pooled features: the Gram-matrix
deviations of Sastry & Oore (issue "Methods v2 (a)").

The statistics are computed during extraction, in the same forward pass as the logits
(``--gram-stages``, or the scorer's own declaration: :func:`oodlens.network.gram_statistics`
on the unpooled maps, which no cache of pooled features could give afterwards), and stored as
``gram{i}`` blocks of the outputs; the scorer itself needs no network (it is not
model-aware), so it is cached, tuned and saved like any output-based scorer.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

import oodlens
from oodlens.arrays import iter_row_chunks, rows_per_chunk
from oodlens.options import GRAM_POWERS
from oodlens.params import Interval, ListOf
from oodlens.scorers import stage_blocks

__all__ = ["Gram", "StageScorer"]

#: The small constant of the deviation's denominators (as the reference implementations).
_EPS = 1e-6


def _deviation(g: np.ndarray, mins: np.ndarray, maxs: np.ndarray) -> np.ndarray:
    """Per row, the summed relative excursions of ``g`` below ``mins`` and above ``maxs``."""
    below = np.maximum(mins - g, 0.0) / np.abs(mins + _EPS)
    above = np.maximum(g - maxs, 0.0) / np.abs(maxs + _EPS)
    return (below + above).sum(axis=1)


class StageScorer(oodlens.Scorer):
    """What the scorers on earlier stages share: a ``stages`` parameter (indices into the
    backbone's ``feature_info``; ``None``: every stage the outputs carry) naming blocks of
    ``block_kind`` (``"stage"`` or ``"gram"``), and the networks they apply to."""

    block_kind: ClassVar[str] = "stage"
    stages: list[int] | None

    def _stage_list(self) -> list[int] | None:
        if self.stages is None:
            return None
        return sorted({int(i) for i in np.atleast_1d(self.stages)})

    def _block_requirements(self) -> set[str]:
        """``{"stages"}`` (or ``{"grams"}``) for every stage, else one name per stage."""
        stages = self._stage_list()
        kind = self.block_kind
        return {f"{kind}s"} if stages is None else {f"{kind}{i}" for i in stages}

    def _block_names(self, outputs: oodlens.Outputs) -> list[str]:
        return stage_blocks(outputs, self.block_kind, self._stage_list())

    def applies_to(self, model: Any, input_size: tuple[int, int, int] | None = None) -> str | None:
        """The network must name its stages (timm's ``feature_info`` and
        ``forward_intermediates``), as extraction reads them."""
        if getattr(model, "feature_info", None) and hasattr(model, "forward_intermediates"):
            return None
        return "it does not name its stages (no timm feature_info / forward_intermediates)"


class Gram(StageScorer):
    r"""Gram-matrix deviations (Sastry & Oore, ICML 2020, "Detecting Out-of-Distribution
    Examples with In-distribution Examples and Gram Matrices").

    For stage :math:`l` with (C, HW) maps :math:`F_l` and orders :math:`p`, the statistic
    :math:`G^p_l = \operatorname{sign}(g)|g|^{1/p}`, :math:`g = (F_l^p F_l^{p\top})\mathbf 1`
    (:func:`oodlens.network.gram_statistics`). Fitted: per predicted class :math:`c`, the
    minimum and maximum of every entry over the training rows predicted as :math:`c`. The
    deviation of a row predicted as :math:`c`:

    .. math::
        \delta_l(x) = \sum_{p, j} \frac{[\min_{c} - G]_+}{|\min_{c} + \epsilon|}
            + \frac{[G - \max_{c}]_+}{|\max_{c} + \epsilon|}, \qquad
        s(x) = -\sum_l \frac{\delta_l(x)}{\mathbb E_{\text{val}}[\delta_l]}

    normalised per stage by its mean deviation on the held-out ID ``val`` split (the
    paper's validation data; 1 when that mean is 0), :math:`\epsilon = 10^{-6}`.

    Defaults: every stage the outputs carry (the harness extracts all of the backbone's),
    orders 1-10 (the paper's and OpenOOD's ``POWERS=range(1, 11)``). pytorch-ood's ``Gram``
    bounds the rows by their labels, holds out a random 10% of the fitting rows to
    normalise, and uses orders 1..L (L the number of layers); OpenOOD bounds by predicted
    class as here. A class no training row is predicted as is bounded by all training rows.
    Paper: https://arxiv.org/abs/1912.12510

    Args:
        stages: the stages (indices into the backbone's ``feature_info``); ``None``: every
            ``gram`` block the outputs carry.
        powers: the orders used, among those recorded (:data:`oodlens.options.GRAM_POWERS`,
            1-10); ``None``: all of them.
    """

    name = "gram"
    block_kind = "gram"
    description = (
        "Gram-matrix deviations of earlier stages, per predicted class (Sastry & Oore 2020)"
    )
    requires = frozenset({"logits", "val", "grams"})
    parameter_constraints = {
        "stages": [ListOf([Interval(int, 0, None)], min_length=1, single=True), None],
        "powers": [
            ListOf([Interval(int, 1, max(GRAM_POWERS))], min_length=1, single=True),
            None,
        ],
    }

    def __init__(self, stages: list[int] | None = None, powers: list[int] | None = None) -> None:
        self.stages = stages
        self.powers = powers

    def requirements(self) -> frozenset[str]:
        return frozenset({"logits", "val", *self._block_requirements()})

    def _columns(self, width: int, name: str) -> np.ndarray:
        """The block's columns of the chosen orders (a block holds every recorded order,
        one after another)."""
        if width % len(GRAM_POWERS):
            raise ValueError(
                f"Scorer {self.name!r}: block {name} has {width} columns, not a multiple of "
                f"the {len(GRAM_POWERS)} recorded orders; it was not written by oodlens's "
                "gram_statistics."
            )
        channels = width // len(GRAM_POWERS)
        powers = GRAM_POWERS if self.powers is None else np.atleast_1d(self.powers)
        return np.concatenate(
            [np.arange(channels) + GRAM_POWERS.index(int(p)) * channels for p in powers]
        )

    def _block(self, outputs: oodlens.Outputs, name: str, cols: np.ndarray):
        """``(start, float64 rows of the chosen columns)`` over one block."""
        block = outputs.block(name)
        for start, rows in iter_row_chunks(block, rows_per_chunk(block.shape[1])):
            yield start, rows[:, cols].astype(np.float64)

    def _fit(self, train: oodlens.Outputs, val: oodlens.Outputs) -> None:
        names = self._block_names(train)
        pred = train.predictions
        k = train.n_classes
        mins, maxs, expected = [], [], []
        for name in names:
            cols = self._columns(train.block(name).shape[1], name)
            lo = np.full((k, len(cols)), np.inf)
            hi = np.full((k, len(cols)), -np.inf)
            every_lo, every_hi = np.full(len(cols), np.inf), np.full(len(cols), -np.inf)
            for start, g in self._block(train, name, cols):
                y = pred[start : start + len(g)]
                order = np.argsort(y, kind="stable")
                classes, first = np.unique(y[order], return_index=True)
                lo[classes] = np.minimum(lo[classes], np.minimum.reduceat(g[order], first))
                hi[classes] = np.maximum(hi[classes], np.maximum.reduceat(g[order], first))
                every_lo = np.minimum(every_lo, g.min(0))
                every_hi = np.maximum(every_hi, g.max(0))
            unseen = ~np.isfinite(lo[:, 0])
            lo[unseen], hi[unseen] = every_lo, every_hi
            mins.append(lo)
            maxs.append(hi)
            mean = self._stage_deviation(val, name, cols, lo, hi).mean()
            expected.append(mean if mean > 0 else 1.0)
        self.stages_ = tuple(names)
        self.mins_ = tuple(mins)
        self.maxs_ = tuple(maxs)
        self.expected_ = np.array(expected)

    def _stage_deviation(
        self, outputs: oodlens.Outputs, name: str, cols: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> np.ndarray:
        pred = outputs.predictions
        out = np.empty(outputs.n_samples)
        for start, g in self._block(outputs, name, cols):
            y = pred[start : start + len(g)]
            out[start : start + len(g)] = _deviation(g, lo[y], hi[y])
        return out

    def _score(self, outputs: oodlens.Outputs) -> np.ndarray:
        total = np.zeros(outputs.n_samples)
        for name, lo, hi, mean in zip(
            self.stages_, self.mins_, self.maxs_, self.expected_, strict=True
        ):
            width = outputs.block(name).shape[1]
            cols = self._columns(width, name)
            if len(cols) != lo.shape[1]:
                raise ValueError(
                    f"Scorer {self.name!r} was fitted on {lo.shape[1]} statistics of {name} but "
                    f"these Outputs give {len(cols)}; use outputs of the same model."
                )
            total += self._stage_deviation(outputs, name, cols, lo, hi) / mean
        return -total
