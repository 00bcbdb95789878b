"""oodlens: out-of-distribution detection and explanation for image classifiers.

Higher scores always mean *more in-distribution*. See ``docs/concepts.md``.
"""

from __future__ import annotations

from . import functional, metrics
from ._errors import MissingOutputsError, NotFittedError, PluginError, UnknownNameError
from ._outputs import Outputs
from ._registry import (
    PluginLoadWarning,
    create_scorer,
    list_scorers,
    plugin_report,
    register_plugin,
    reload_plugins,
    unregister_plugin,
)
from ._scorer import Scorer
from .explainers import Explainer
from .hookspecs import hookimpl
from .metrics import ood_metrics, rejection_report, risk_coverage_curve, selective_metrics

__version__ = "0.1.0"

__all__ = [
    "Explainer",
    "MissingOutputsError",
    "NotFittedError",
    "Outputs",
    "PluginError",
    "PluginLoadWarning",
    "Scorer",
    "UnknownNameError",
    "__version__",
    "create_scorer",
    "functional",
    "hookimpl",
    "list_scorers",
    "metrics",
    "ood_metrics",
    "plugin_report",
    "register_plugin",
    "rejection_report",
    "reload_plugins",
    "risk_coverage_curve",
    "selective_metrics",
    "unregister_plugin",
]
