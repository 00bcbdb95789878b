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
from .hookspecs import hookimpl
from .metrics import ood_metrics, rejection_report, risk_coverage_curve, selective_metrics

__version__ = "0.1.0"

# Heavy parts (torch, timm) load on first use, so `import oodlens` stays light.
_LAZY = {
    "run_benchmark": "benchmark",
    "BenchmarkConfig": "benchmark",
    "OODSet": "benchmark",
    "load_config": "benchmark",
    "load_dataset": "datasets",
    "list_datasets": "datasets",
    "create_backbone": "backbones",
    "extract_outputs": "backbones",
    "train_model": "train",
    "Explainer": "explainers",
    "GradCAM": "explainers",
    "attention_area": "explainers",
    "attention_area_mass": "explainers",
    "create_explainer": "explainers",
    "list_explainers": "explainers",
    "TrainConfig": "train",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'oodlens' has no attribute {name!r}")


__all__ = [
    "BenchmarkConfig",
    "Explainer",
    "GradCAM",
    "MissingOutputsError",
    "NotFittedError",
    "OODSet",
    "Outputs",
    "PluginError",
    "PluginLoadWarning",
    "Scorer",
    "UnknownNameError",
    "__version__",
    "attention_area",
    "attention_area_mass",
    "create_explainer",
    "TrainConfig",
    "create_backbone",
    "create_scorer",
    "extract_outputs",
    "functional",
    "hookimpl",
    "list_datasets",
    "list_explainers",
    "list_scorers",
    "load_config",
    "load_dataset",
    "metrics",
    "ood_metrics",
    "plugin_report",
    "register_plugin",
    "rejection_report",
    "reload_plugins",
    "risk_coverage_curve",
    "run_benchmark",
    "selective_metrics",
    "train_model",
    "unregister_plugin",
]
