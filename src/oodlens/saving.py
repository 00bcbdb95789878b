"""Saving fitted scorers without pickle, and loading them back by name through the registry.

:func:`save_scorer` writes a scorer's :meth:`~oodlens.Scorer.get_state` (parameters and
fitted arrays) as one safetensors file (:mod:`oodlens.statefile`) with the scorer's name,
its distribution and version, the oodlens version and a fingerprint of the rows it was
fitted on; :func:`load_scorer` checks them and rebuilds the scorer with the registered
class's ``from_state`` (the scorer layer cannot import the registry, so the dispatch by name
lives here). The same state is the scorer part of a saved :class:`oodlens.Detector`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UnknownNameError
from .registry import get_entry, list_scorers
from .scorers.base import Scorer
from .statefile import read_state, write_state

__all__ = ["scorer_state", "scorer_from_state", "save_scorer", "load_scorer", "half_paths"]

#: The keys of a saved scorer's state; any other is refused.
_KEYS = frozenset(
    {
        "name",
        "spec",
        "distribution",
        "distribution_version",
        "oodlens_version",
        "params",
        "fitted",
        "fit_rows_fingerprint",
    }
)


def _version(distribution: str) -> str | None:
    with contextlib.suppress(md.PackageNotFoundError, ValueError):
        return md.version(distribution)
    return None


def _fingerprint(rows: Any) -> str | None:
    if rows is None:
        return None
    return hashlib.blake2b(np.ascontiguousarray(rows).tobytes(), digest_size=16).hexdigest()


def scorer_state(scorer: Scorer, spec: str | None = None) -> dict[str, Any]:
    """A fitted scorer as plain data: name, spec, distribution and versions, parameters,
    fitted state, and the fingerprint of the rows it was fitted on.

    Raises:
        NotFittedError: the scorer is not fitted.
        TypeError: it cannot be saved (it says so, or its state is not plain data).
    """
    state = scorer.get_state()
    distribution = get_entry("scorer", scorer.name).distribution
    return {
        "name": scorer.name,
        "spec": spec or scorer.name,
        "distribution": distribution,
        "distribution_version": _version(distribution),
        "oodlens_version": _version("oodlens"),
        "params": state["params"],
        "fitted": state["fitted"],
        "fit_rows_fingerprint": _fingerprint(state["fitted"].get("fit_rows_")),
    }


def half_paths(scorer: Scorer, prefix: str = "state") -> set[str]:
    """The array paths (for :func:`~oodlens.statefile.write_state`) of the scorer's large
    state (``large_state``: e.g. KNN's bank) under ``prefix``."""
    return {f"{prefix}/fitted/{key}" for key in type(scorer).large_state}


def scorer_from_state(state: Mapping[str, Any], where: str = "the saved scorer") -> Scorer:
    """The fitted scorer a :func:`scorer_state` describes, built by its registered class.

    Raises:
        ValueError: unknown keys, a fitted key that is not public and trailing-underscored,
            or a scorer registered by another distribution than the one that saved it.
        UnknownNameError: no installed distribution registers the scorer (the message names
            the distribution to install).
    """
    unknown = sorted(set(state) - _KEYS)
    if unknown:
        raise ValueError(f"{where} holds unknown key(s) {unknown}; it was not written by oodlens.")
    name, distribution = state.get("name"), state.get("distribution")
    if name not in list_scorers():
        raise UnknownNameError(
            f"{where} is a {name!r} scorer from the distribution {distribution!r}, which is "
            f"not installed here: pip install {distribution}"
        )
    entry = get_entry("scorer", name)
    if entry.distribution != distribution:
        raise ValueError(
            f"{where} is a {name!r} scorer of the distribution {distribution!r}, but "
            f"{name!r} is registered here by {entry.distribution!r}; install {distribution}."
        )
    fitted = state.get("fitted", {})
    odd = sorted(k for k in fitted if not k.endswith("_") or k.startswith("_"))
    if odd:
        raise ValueError(f"{where} holds fitted key(s) {odd} that no scorer sets.")
    return entry.obj.from_state({"params": dict(state.get("params", {})), "fitted": fitted})


def save_scorer(scorer: Scorer, path: str | os.PathLike[str], half: bool = False) -> Path:
    """Write a fitted scorer to ``path`` (one safetensors file, atomically; no pickle).

    Args:
        scorer: a fitted scorer.
        path: the file to write.
        half: store its large state (e.g. KNN's bank) as float16: half the size, scores
            within about 1e-3 of the fitted scorer's.

    Example:
        >>> import oodlens, tempfile, numpy as np
        >>> from oodlens.testing import synthetic_outputs
        >>> knn = oodlens.create_scorer("knn", k=5).fit(synthetic_outputs(100, seed=0))
        >>> path = save_scorer(knn, tempfile.mkdtemp() + "/knn.oodlens")
        >>> test = synthetic_outputs(10, seed=1)
        >>> bool(np.array_equal(load_scorer(path).score(test), knn.score(test)))
        True
    """
    state = scorer_state(scorer)
    return write_state(path, "scorer", state, half=half_paths(scorer) if half else ())


def load_scorer(path: str | os.PathLike[str]) -> Scorer:
    """A scorer written by :func:`save_scorer`, checked (file checksums, format version,
    name and distribution) and rebuilt without executing anything from the file; large
    arrays are memory-mapped."""
    return scorer_from_state(read_state(path, "scorer"), f"Scorer file {str(path)!r}")
