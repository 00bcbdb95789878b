"""Declared constraints on parameters and configuration fields, checked before any work (in
the spirit of scikit-learn's ``_parameter_constraints``).

A scorer or explainer class declares ``parameter_constraints``: a mapping from each
``__init__`` parameter to a list of allowed forms. A value is valid when it satisfies any of
them. ``None`` in the list allows ``None``. Plugin authors use the same mechanism::

    class MyScorer(oodlens.Scorer):
        parameter_constraints = {
            "k": [Interval(int, 1, None)],
            "metric": [Options({"cosine", "l2"})],
        }

The configuration dataclasses (:class:`~oodlens.BenchmarkConfig`,
:class:`~oodlens.TrainConfig`, :class:`~oodlens.options.ExtractOptions`) declare theirs the
same way, for every field, and check them with :func:`validate_fields` when they are built.

:func:`validate_params` raises :class:`~oodlens.InvalidParameterError` naming the owner, the
parameter, the value and the valid range. :func:`invalid_values` generates, from the declared
constraints alone, a value of a wrong type and one of the right type out of range (as
scikit-learn's common tests do), so that tests can feed every declared field both.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import InvalidParameterError

__all__ = [
    "Constraint",
    "Interval",
    "Options",
    "Boolean",
    "Text",
    "InstanceOf",
    "ListOf",
    "validate_params",
    "validate_fields",
    "invalid_values",
]


class Constraint:
    """One allowed form of a parameter value.

    Subclasses say which Python ``types`` their valid values have (the wrong-type check of
    :func:`invalid_values` uses them) and, when they can, give a value of one of those types
    that they reject (:meth:`out_of_range`).
    """

    types: tuple[type, ...] = ()

    def is_satisfied_by(self, value: Any) -> bool:
        """Whether ``value`` has this form."""
        raise NotImplementedError

    def out_of_range(self) -> Any:
        """A value of one of :attr:`types` that this constraint rejects; ``None`` when every
        value of those types is valid (e.g. :class:`Boolean`)."""
        return None

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
        self.types = (int,) if kind is int else (int, float)

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

    def out_of_range(self) -> Any:
        if self.left is None and self.right is None:
            return float("nan") if self.kind is float else None
        edge = self.left if self.left is not None else self.right
        step = -1 if self.left is not None else 1
        value = edge + step
        return int(math.floor(value)) if self.kind is int else float(value)

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
        self.types = tuple(dict.fromkeys(type(o) for o in self.options))

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, str | int | float | bool | type(None)) and any(
            type(value) is type(o) and value == o for o in self.options
        )

    def out_of_range(self) -> Any:
        first = self.options[0] if self.options else None
        if isinstance(first, str):
            return "not-" + "-".join(str(o) for o in self.options)
        if isinstance(first, int | float) and not isinstance(first, bool):
            return max(self.options) + 1
        return None

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)


class Boolean(Constraint):
    """``True`` or ``False``."""

    types = (bool,)

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, bool)

    def __str__(self) -> str:
        return "True or False"


class Text(Constraint):
    """A non-blank string (with ``path``, also an ``os.PathLike``).

    Example:
        >>> Text().is_satisfied_by("  ")
        False
        >>> str(Text(path=True))
        'a path (a non-empty string)'
    """

    def __init__(self, path: bool = False) -> None:
        self.path = path
        self.types = (str, os.PathLike) if path else (str,)

    def is_satisfied_by(self, value: Any) -> bool:
        if self.path and isinstance(value, os.PathLike):
            value = os.fspath(value)
        return isinstance(value, str) and bool(value.strip())

    def out_of_range(self) -> Any:
        return ""

    def __str__(self) -> str:
        return "a path (a non-empty string)" if self.path else "a non-empty string"


class InstanceOf(Constraint):
    """An instance of one of ``types`` (e.g. a mapping, or a dataclass of this package).

    Args:
        types: the accepted classes.
        description: how to name them in messages (default: the class names).
    """

    def __init__(self, types: type | tuple[type, ...], description: str = "") -> None:
        self.types = types if isinstance(types, tuple) else (types,)
        self.description = description or " or ".join(f"a {t.__name__}" for t in self.types)

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, self.types) and not isinstance(value, bool)

    def __str__(self) -> str:
        return self.description


class ListOf(Constraint):
    """A list or tuple whose every item satisfies one of ``items`` (or, with ``single``, one
    such item on its own, which the owner wraps into a tuple).

    Args:
        items: the allowed forms of one item.
        min_length: the fewest items allowed.
        max_length: the most items allowed (``None``: no limit).
        single: also accept a lone item.

    Example:
        >>> ListOf([Interval(int, 0, None)], min_length=1).is_satisfied_by([])
        False
        >>> str(ListOf([Text()], single=True))
        'a list, each a non-empty string (or one such value)'
    """

    def __init__(
        self,
        items: Sequence[Constraint],
        min_length: int = 0,
        max_length: int | None = None,
        single: bool = False,
    ) -> None:
        self.items, self.min_length, self.single = tuple(items), min_length, single
        self.max_length = max_length
        item_types = tuple(t for c in self.items for t in c.types)
        self.types = (list, tuple, *(item_types if single else ()))

    def _item_ok(self, value: Any) -> bool:
        return any(c.is_satisfied_by(value) for c in self.items)

    def is_satisfied_by(self, value: Any) -> bool:
        if isinstance(value, list | tuple):
            size_ok = self.min_length <= len(value) <= (self.max_length or len(value))
            return size_ok and all(self._item_ok(v) for v in value)
        return self.single and self.min_length <= 1 and self._item_ok(value)

    def out_of_range(self) -> Any:
        if self.min_length > 0:
            return []
        bad = _wrong_type(self.items)
        return None if bad is _NONE else [bad]

    def __str__(self) -> str:
        lo, hi = self.min_length, self.max_length
        if hi is not None:
            text = f"a list of {lo} items" if lo == hi else f"a list of {lo} to {hi} items"
        else:
            text = f"a list of at least {lo} items" if lo > 1 else "a non-empty list"
            text = text if lo else "a list"
        text += f", each {_describe(self.items)}"
        return text + (" (or one such value)" if self.single else "")


def _describe(allowed: Sequence[Constraint | None]) -> str:
    parts = ["None" if c is None else str(c) for c in allowed]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def _satisfied(value: Any, allowed: Sequence[Constraint | None]) -> bool:
    return any((value is None) if c is None else c.is_satisfied_by(value) for c in allowed)


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
        if not allowed or _satisfied(value, allowed):
            continue
        raise InvalidParameterError(
            f"{owner}: {name}={value!r} is not valid; it must be {_describe(allowed)}."
        )


def validate_fields(obj: Any) -> None:
    """Check every field of the dataclass instance ``obj`` against its class's
    ``parameter_constraints``, which must declare each field (a field without a declared
    constraint is a programming error, reported as such).

    Raises:
        InvalidParameterError: the first field whose value is not valid.
        TypeError: ``parameter_constraints`` does not cover every field.
    """
    cls = type(obj)
    constraints = cls.parameter_constraints
    fields = [f.name for f in dataclasses.fields(obj)]
    undeclared = [f for f in fields if f not in constraints]
    if undeclared:
        raise TypeError(f"{cls.__name__}.parameter_constraints does not declare {undeclared}.")
    validate_params(cls.__name__, {f: getattr(obj, f) for f in fields}, constraints)


class _Missing:
    def __repr__(self) -> str:
        return "<none>"


_NONE = _Missing()

#: Wrong-type candidates, in the order tried: what a YAML file or a command line could hold.
_CANDIDATES: tuple[Any, ...] = ("abc", 7, 2.5, True, ["abc"], {"key": 1}, 1j)


def _wrong_type(allowed: Sequence[Constraint | None]) -> Any:
    accepted = tuple(t for c in allowed if c is not None for t in c.types)
    for value in _CANDIDATES:
        if isinstance(value, bool):
            hit = bool in accepted
        else:
            hit = isinstance(value, accepted) or (
                isinstance(value, int) and float in accepted and not isinstance(value, bool)
            )
        if not hit and not _satisfied(value, allowed):
            return value
    return _NONE


def invalid_values(allowed: Sequence[Constraint | None]) -> dict[str, Any]:
    """Values that ``allowed`` rejects, generated from the constraints alone: ``"type"``, a
    value of a type no constraint accepts, and ``"range"``, a value of an accepted type that
    every constraint rejects (absent when there is none, e.g. for a boolean).

    Example:
        >>> invalid_values([Interval(int, 1, None), None])
        {'type': 'abc', 'range': 0}
        >>> invalid_values([Boolean()])
        {'type': 'abc'}
    """
    out: dict[str, Any] = {}
    wrong = _wrong_type(allowed)
    if wrong is not _NONE:
        out["type"] = wrong
    for c in allowed:
        if c is None:
            continue
        value = c.out_of_range()
        if value is not None and not _satisfied(value, allowed):
            out["range"] = value
            break
    return out
