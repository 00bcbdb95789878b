"""Declared hyperparameter constraints, checked before any work (in the spirit of
scikit-learn's ``_parameter_constraints``).

A scorer or explainer class declares ``parameter_constraints``: a mapping from each
``__init__`` parameter to a list of allowed forms. A value is valid when it satisfies any of
them. ``None`` in the list allows ``None``. Plugin authors use the same mechanism::

    class MyScorer(oodlens.Scorer):
        parameter_constraints = {
            "k": [Interval(int, 1, None)],
            "metric": [Options({"cosine", "l2"})],
        }

:func:`validate_params` raises :class:`~oodlens.InvalidParameterError` naming the class,
the parameter, the value and the valid range.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import InvalidParameterError

__all__ = ["Constraint", "Interval", "Options", "Boolean", "validate_params"]


class Constraint:
    """One allowed form of a parameter value."""

    def is_satisfied_by(self, value: Any) -> bool:
        """Whether ``value`` has this form."""
        raise NotImplementedError

    def __str__(self) -> str:
        raise NotImplementedError


class Interval(Constraint):
    """A real (``float``) or integer (``int``) number in an interval.

    Args:
        kind: ``int`` (integers only, bools excluded) or ``float`` (any finite real number).
        left, right: bounds; ``None`` is unbounded.
        closed: ``"both"`` (default), ``"left"``, ``"right"`` or ``"neither"``.

    Example:
        >>> Interval(float, 0, None, closed="neither").is_satisfied_by(-1.0)
        False
        >>> str(Interval(int, 1, None))
        'an int in [1, inf)'
    """

    def __init__(
        self,
        kind: type,
        left: float | None,
        right: float | None,
        closed: str = "both",
    ) -> None:
        if kind not in (int, float):
            raise ValueError(f"Interval kind must be int or float, got {kind!r}.")
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed must be both, left, right or neither, got {closed!r}.")
        self.kind, self.left, self.right, self.closed = kind, left, right, closed

    def is_satisfied_by(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        if not math.isfinite(float(value)):
            return False
        if self.left is not None:
            ok = value >= self.left if self.closed in ("both", "left") else value > self.left
            if not ok:
                return False
        if self.right is not None:
            ok = value <= self.right if self.closed in ("both", "right") else value < self.right
            if not ok:
                return False
        return True

    def __str__(self) -> str:
        lo = "-inf" if self.left is None else f"{self.left:g}"
        hi = "inf" if self.right is None else f"{self.right:g}"
        lb = "[" if self.closed in ("both", "left") and self.left is not None else "("
        rb = "]" if self.closed in ("both", "right") and self.right is not None else ")"
        return f"{'an int' if self.kind is int else 'a float'} in {lb}{lo}, {hi}{rb}"


class Options(Constraint):
    """One of a fixed set of values (usually strings)."""

    def __init__(self, options: Iterable[Any]) -> None:
        self.options = tuple(options)

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, str | int | float | bool | type(None)) and any(
            type(value) is type(o) and value == o for o in self.options
        )

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)


class Boolean(Constraint):
    """``True`` or ``False``."""

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, bool)

    def __str__(self) -> str:
        return "True or False"


def _describe(allowed: Sequence[Constraint | None]) -> str:
    parts = ["None" if c is None else str(c) for c in allowed]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def validate_params(
    owner: str,
    params: Mapping[str, Any],
    constraints: Mapping[str, Sequence[Constraint | None]],
) -> None:
    """Check ``params`` against declared ``constraints``; parameters without one pass.

    Raises:
        InvalidParameterError: naming ``owner``, the parameter, its value and what is valid.

    Example:
        >>> validate_params("MSP", {"temperature": -1.0},
        ...                 {"temperature": [Interval(float, 0, None, closed="neither")]})
        Traceback (most recent call last):
        ...
        oodlens.errors.InvalidParameterError: MSP: temperature=-1.0 is not valid; it must be a float in (0, inf).
    """
    for name, value in params.items():
        allowed = constraints.get(name)
        if not allowed:
            continue
        if any((value is None) if c is None else c.is_satisfied_by(value) for c in allowed):
            continue
        raise InvalidParameterError(
            f"{owner}: {name}={value!r} is not valid; it must be {_describe(allowed)}."
        )
