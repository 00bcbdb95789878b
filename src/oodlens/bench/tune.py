"""Hyperparameter search for scorers on held-out data only: ID ``val`` outputs and OOD
validation sets, by AUROC (as OpenOOD's automatic parameter search); test rows never enter."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..metrics import auroc
from ..outputs import Outputs
from ..registry import ScorerSpec, create_scorer, parse_scorer_spec
from ..scorers.base import ModelInputs

__all__ = ["search_space", "tune_scorer", "TuneResult"]

log = logging.getLogger(__name__)


def search_space(spec: str | ScorerSpec) -> tuple[str, dict[str, Any], dict[str, list[Any]]]:
    """``(name, fixed parameters, grid)`` of a scorer spec.

    The grid is the scorer's declared ``tuning_grid``; a grid written in the spec
    (``knn:k=1|10|50``) replaces the declared values of that parameter, and a parameter
    fixed in the spec (``knn:k=50``) is not searched.
    """
    spec = parse_scorer_spec(spec)
    fixed = dict(spec.params)
    grid = {k: list(v) for k, v in spec.entry.obj.tuning_grid.items() if k not in fixed}
    grid.update({k: list(v) for k, v in spec.grid.items()})
    return spec.name, fixed, grid


def candidates(spec: str | ScorerSpec) -> list[dict[str, Any]]:
    """Every parameter combination of the spec's search space, each checked against the
    scorer's constraints (a bad grid value fails here, before any data is seen)."""
    name, fixed, grid = search_space(spec)
    keys = sorted(grid)
    combos = [
        {**fixed, **dict(zip(keys, values, strict=True))}
        for values in itertools.product(*(grid[k] for k in keys))
    ]
    for params in combos:
        create_scorer(name, **params)
    return combos


@dataclass
class TuneResult:
    """What :func:`tune_scorer` chose, and why."""

    params: dict[str, Any]  #: the chosen parameters (fixed ones included)
    searched: dict[str, list[Any]]  #: the grid that was searched
    #: every candidate: its parameters, its mean validation AUROC (or the error)
    trials: list[dict[str, Any]] = field(default_factory=list)


def tune_scorer(
    spec: str | ScorerSpec,
    train: Outputs,
    val: Outputs,
    ood_val: Mapping[str, Outputs],
    model: Callable[[str], ModelInputs] | None = None,
) -> TuneResult:
    """Choose the candidate with the highest mean AUROC of ID ``val`` vs each OOD validation
    set; ties go to the earlier candidate in grid order. Candidates that fail on this data
    (e.g. ``k`` above the number of training rows) are recorded and skipped. ``model``
    gives model-aware scorers the network and images of ``"id_train"``, ``"id_val"`` and
    ``"ood_val:<name>"``.

    Raises:
        ValueError: every candidate failed.
    """
    if not ood_val:
        raise ValueError("Tuning needs at least one OOD validation set (--ood-val).")
    spec = parse_scorer_spec(spec)
    name, _, grid = search_space(spec)
    best: tuple[float, dict[str, Any]] | None = None
    trials: list[dict[str, Any]] = []
    for params in candidates(spec):
        try:
            scorer = create_scorer(name, **params).fit(
                train, val=val, model=model("id_train") if model else None
            )
            s_val = scorer.score(val, model=model("id_val") if model else None)
            value = float(
                np.mean(
                    [
                        auroc(
                            s_val, scorer.score(o, model=model(f"ood_val:{k}") if model else None)
                        )
                        for k, o in ood_val.items()
                    ]
                )
            )
        except (ValueError, RuntimeError) as exc:
            trials.append({"params": params, "error": str(exc).splitlines()[0]})
            log.info("tuning %s: %s skipped (%s)", spec, params, exc)
            continue
        trials.append({"params": params, "auroc": value})
        if best is None or value > best[0]:
            best = (value, params)
    if best is None:
        raise ValueError(
            f"Tuning {spec.text!r}: every candidate failed on this data ({trials[0]['error']})."
        )
    return TuneResult(best[1], grid, trials)
