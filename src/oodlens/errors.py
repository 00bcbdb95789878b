"""Exceptions raised by oodlens."""

from __future__ import annotations

__all__ = [
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
