r"""Calibrated fusion of several scorers (the ``fusion`` scorer).

Each member's score becomes a conformal p-value against that member's scores on the held-out
``val`` split (never the fitting rows, never the harness's ``calib`` split):

.. math:: p_j(x) = \frac{1 + \#\{v \in V : s_j(v) \le s_j(x)\}}{|V| + 1}

(small = unusually low ID-ness for member ``j``), made continuous and strictly increasing
(:func:`log_p_values`: interpolated between the val scores, with exponential tails beyond
them), so that the fusion keeps each member's order also where the conformal p-value is
flat (every far-OOD input below all val scores would otherwise share ``1 / (|V| + 1)``). The
p-values are combined by ``method``, in logarithms:

* ``fisher``: :math:`2 \sum_j \log p_j` (minus Fisher's statistic),
* ``simes``: the log of Simes' combined p-value :math:`\min_k m\, p_{(k)} / k` (sorted
  ascending),
* ``min``: :math:`\min_j \log p_j` (Bonferroni's ordering),

and that combination is the fusion's score (higher = more in-distribution). The members'
scores are dependent (they read the same network), so Fisher's statistic is no p-value by
itself; the harness calibrates the fusion's score on ``calib`` like any other score, which
makes its conformal false-rejection guarantee hold for the fused detector
(``tests/test_fusion.py`` checks it over many random splits). None of the anchors (OpenOOD,
pytorch-ood) has a fusion of detectors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InvalidParameterError
from .outputs import Outputs
from .params import Options
from .registry import ScorerSpec, parse_scorer_spec
from .saving import scorer_from_state, scorer_state
from .scorers.base import Scorer

__all__ = ["Fusion", "combine_p_values", "conformal_p_values_against", "log_p_values"]

METHODS = ("fisher", "simes", "min")


def conformal_p_values_against(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The conformal p-values ``(1 + #{reference <= s}) / (n + 1)`` of ``scores`` against
    ``reference`` (sorted ascending)."""
    below = np.searchsorted(reference, scores, side="right")
    return (1.0 + below) / (len(reference) + 1.0)


def log_p_values(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The logarithm of a continuous, strictly increasing version of the conformal p-value
    of ``scores`` against ``reference`` (sorted ascending; see :func:`conformal_p_values_against`):
    between the smallest and the largest reference score, the linear interpolation of
    ``#{reference <= s} / (n + 1)`` (within ``1 / (n + 1)`` of the conformal p-value); below
    the smallest, an exponential tail ``p_min * exp((s - min) / sd)``; above the largest,
    ``1 - exp(-(s - max) / sd) / (n + 1)`` (``sd``: the reference scores' standard
    deviation). So no two scores of a member share a p-value (the fusion keeps each member's
    order everywhere, also beyond the val scores), and the far tail has no floor at
    ``1 / (n + 1)``.

    Example:
        >>> np.exp(log_p_values(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.5]))).round(3).tolist()
        [0.5, 0.625]
    """
    n = len(reference)
    values, counts = np.unique(reference, return_counts=True)
    cdf = np.cumsum(counts) / (n + 1.0)
    sd = float(np.std(reference)) or 1.0
    s = np.asarray(scores, dtype=np.float64)
    out = np.log(np.interp(s, values, cdf))
    low, high = s < values[0], s > values[-1]
    out[low] = np.log(cdf[0]) + (s[low] - values[0]) / sd
    out[high] = np.log1p(-np.exp(-(s[high] - values[-1]) / sd) / (n + 1.0))
    return out


def combine_p_values(log_p: np.ndarray, method: str) -> np.ndarray:
    """The fused statistic of (N, m) log p-values, higher = more in-distribution:
    ``fisher`` ``2 sum_j log p_j`` (minus Fisher's statistic), ``simes`` the log of Simes'
    ``min_k m p_(k) / k``, ``min`` ``min_j log p_j``.

    Example:
        >>> combine_p_values(np.log(np.array([[0.5, 0.1], [1.0, 1.0]])), "min").round(3).tolist()
        [-2.303, 0.0]
    """
    if method == "fisher":
        return 2.0 * log_p.sum(axis=1)
    if method == "simes":
        m = log_p.shape[1]
        ordered = np.sort(log_p, axis=1)
        return np.min(ordered + np.log(m) - np.log(np.arange(1, m + 1)), axis=1)
    if method == "min":
        return log_p.min(axis=1)
    raise ValueError(f"method={method!r} is not valid; use one of {', '.join(METHODS)}.")


def _spec(member: Any) -> ScorerSpec:
    return member if isinstance(member, ScorerSpec) else parse_scorer_spec(str(member))


class Fusion(Scorer):
    r"""Conformal fusion of member scorers (see :mod:`oodlens.fusion`).

    Args:
        members: the member scorers as specs (``fusion:members=[knn:k=10,energy,vim]``), at
            least one; model-aware members are not supported.
        method: ``"fisher"`` (default), ``"simes"`` or ``"min"``.

    It reads what its members read, plus the ``val`` split (whose outputs calibrate each
    member's p-values; a member that fits on ``val`` itself, e.g. ``temperature_msp``, then
    sees its val scores come from its own fitting rows, which makes its p-values
    conservative).
    """

    name = "fusion"
    description = (
        "conformal p-values of member scorers on the val split, combined (Fisher, Simes, min)"
    )
    requires = frozenset({"logits", "val"})
    parameter_constraints = {"method": [Options(METHODS)]}

    def __init__(self, members: Sequence[Any] = ("energy", "knn"), method: str = "fisher") -> None:
        self.members = members
        self.method = method

    def _specs(self) -> list[ScorerSpec]:
        members = self.members
        if isinstance(members, str | ScorerSpec) or not isinstance(members, Sequence):
            raise InvalidParameterError(
                f"Fusion: members={members!r} is not valid; give a list of scorer specs, e.g. "
                "fusion:members=[knn:k=10,energy]."
            )
        if not members:
            raise InvalidParameterError("Fusion: members is empty; give at least one scorer.")
        specs = [_spec(m) for m in members]
        aware = [s.text for s in specs if s.model_aware]
        if aware:
            raise InvalidParameterError(
                f"Fusion: member(s) {aware} are model-aware (their own passes over the images); "
                "fuse output-based scorers only."
            )
        nested = [s.text for s in specs if s.name == self.name]
        if nested:
            raise InvalidParameterError(f"Fusion: member(s) {nested} are fusions themselves.")
        return specs

    def check_params(self) -> None:
        """The constraints, and every member a valid, output-based spec."""
        super().check_params()
        self._specs()

    def requirements(self) -> frozenset[str]:
        """The union of the members' requirements, and ``val``."""
        needs: set[str] = {"val"}
        for spec in self._specs():
            needs |= set(spec.kinds)
        return frozenset(needs)

    def get_params(self) -> dict[str, Any]:
        """The parameters, members as spec texts (so a saved fusion is plain data)."""
        params = super().get_params()
        members = params["members"]
        if isinstance(members, Sequence) and not isinstance(members, str):
            params["members"] = tuple(_spec(m).text for m in members)
        return params

    def _fit(self, train: Outputs, val: Outputs | None = None) -> None:
        fitted, reference = [], []
        for spec in self._specs():
            member = spec.create()
            member.fit(train, val=val)
            fitted.append(member)
            reference.append(np.sort(member.score(val)))
        self.members_ = fitted
        self.reference_ = reference

    def _score(self, outputs: Outputs) -> np.ndarray:
        log_p = np.column_stack(
            [
                log_p_values(ref, member.score(outputs))
                for member, ref in zip(self.members_, self.reference_, strict=True)
            ]
        )
        return combine_p_values(log_p, self.method)

    def get_state(self) -> dict[str, Any]:
        """The base class's state, with each member as its own state and the sorted val
        scores as indexed mappings (the members are scorers, not plain data)."""
        state = super().get_state()
        state["fitted"]["members_"] = {str(k): scorer_state(m) for k, m in enumerate(self.members_)}
        state["fitted"]["reference_"] = {str(k): r for k, r in enumerate(self.reference_)}
        return state

    def set_state(self, fitted: Mapping[str, Any]) -> None:
        """The base class's restore, then the members rebuilt from their states."""
        count = len(fitted["members_"])
        super().set_state({k: v for k, v in fitted.items() if k not in ("members_", "reference_")})
        self.members_ = [
            scorer_from_state(fitted["members_"][str(k)], f"fusion member {k}")
            for k in range(count)
        ]
        self.reference_ = [np.asarray(fitted["reference_"][str(k)]) for k in range(count)]
