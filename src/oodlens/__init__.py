"""oodlens: out-of-distribution detection and explanation for image classifiers.

Higher scores always mean *more in-distribution*. See ``docs/concepts.md``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from typing import Any

from . import functional, metrics, params
from .errors import (
    InvalidParameterError,
    MissingOutputsError,
    NotFittedError,
    PluginError,
    UnknownNameError,
)
from .explainers.base import Explainer, Explanation
from .hookspecs import hookimpl
from .metrics import ood_metrics, rejection_report, risk_coverage_curve, selective_metrics
from .outputs import Outputs
from .registry import (
    PluginLoadWarning,
    create_explainer,
    create_scorer,
    list_datasets,
    list_explainers,
    list_scorers,
    load_dataset,
    plugin_report,
    register_plugin,
    reload_plugins,
    unregister_plugin,
)
from .scorers.base import Scorer

__version__ = "0.1.0"

# Heavy parts (torch, timm, pandas) load on first use, so `import oodlens` stays light.
_LAZY = {
    "run_benchmark": "bench",
    "BenchmarkConfig": "bench",
    "BenchmarkResult": "bench",
    "OODSet": "bench",
    "load_config": "bench",
    "create_backbone": "backbones",
    "extract_outputs": "extract",
    "train_model": "train",
    "TrainConfig": "train",
    "GradCAM": "explainers",
    "attention_area": "explainers",
    "attention_area_mass": "explainers",
    "fit_detector": "bench",
    "Detector": "detector",
    "save_scorer": "saving",
    "load_scorer": "saving",
}

#: Modules that moved in the harness restructuring: importing an old name says where to go.
MOVED_MODULES = {
    "oodlens.benchmark": "oodlens.bench (run_benchmark, BenchmarkConfig, load_config, ...)",
    "oodlens.report": "oodlens.bench.report (tables) and BenchmarkResult.save (report folders)",
    "oodlens.plot": "oodlens.plots",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Turns ``import oodlens.<old module>`` into an error naming its new home."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname in MOVED_MODULES:
            raise ModuleNotFoundError(
                f"{fullname} was moved: use {MOVED_MODULES[fullname]}.", name=fullname
            )


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'oodlens' has no attribute {name!r}")


__all__ = [
    "BenchmarkConfig",
    "BenchmarkResult",
    "Detector",
    "Explainer",
    "Explanation",
    "GradCAM",
    "InvalidParameterError",
    "MissingOutputsError",
    "NotFittedError",
    "OODSet",
    "Outputs",
    "PluginError",
    "PluginLoadWarning",
    "Scorer",
    "TrainConfig",
    "UnknownNameError",
    "__version__",
    "attention_area",
    "attention_area_mass",
    "create_backbone",
    "create_explainer",
    "create_scorer",
    "extract_outputs",
    "fit_detector",
    "functional",
    "hookimpl",
    "list_datasets",
    "list_explainers",
    "list_scorers",
    "load_config",
    "load_dataset",
    "load_scorer",
    "metrics",
    "ood_metrics",
    "params",
    "plugin_report",
    "register_plugin",
    "rejection_report",
    "reload_plugins",
    "risk_coverage_curve",
    "run_benchmark",
    "save_scorer",
    "selective_metrics",
    "train_model",
    "unregister_plugin",
]
