"""Exceptions raised by oodlens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

__all__ = [
    "moved_names",
    "NotFittedError",
    "MissingOutputsError",
    "UnknownNameError",
    "PluginError",
    "InvalidParameterError",
]


class NotFittedError(ValueError, AttributeError):
    """Raised when a scorer is used before ``fit`` (as scikit-learn's NotFittedError)."""


class MissingOutputsError(ValueError):
    """Raised when an :class:`~oodlens.Outputs` lacks a field a scorer requires."""


class UnknownNameError(KeyError):
    """Raised for a scorer, explainer or dataset name that no plugin registered.

    A ``KeyError`` subclass whose ``str`` is the plain message (``KeyError`` would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PluginError(RuntimeError):
    """Raised when a plugin registers something invalid (e.g. a duplicate name)."""


class InvalidParameterError(ValueError, TypeError):
    """A hyperparameter of the wrong type or outside its valid range (as scikit-learn's).

    Both a ``ValueError`` and a ``TypeError``, so callers catching either see it.
    """


def moved_names(module: str, moved: dict[str, str]) -> Callable[[str], NoReturn]:
    """A module ``__getattr__`` for names that moved elsewhere: using one raises an
    ``ImportError`` naming the new place (an ``ImportError``, not an ``AttributeError``, so
    that ``from module import name`` shows the message instead of a generic one).

    Args:
        module: the module's name, e.g. ``"oodlens.backbones"``.
        moved: old name -> where it lives now, e.g. ``{"extract_outputs": "oodlens.extract"}``.
    """

    def __getattr__(name: str) -> Any:
        if name in moved:
            raise ImportError(f"{module}.{name} moved: use {moved[name]}.{name}.")
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
