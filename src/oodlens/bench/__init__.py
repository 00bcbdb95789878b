"""The benchmark harness: configuration, the run, its result and report tables."""

from __future__ import annotations

from .config import GROUPS, BenchmarkConfig, OODSet, expand_scorers, load_config, parse_ood_spec
from .result import BenchmarkResult, RunScores, ScorerFailure, check_report_dir
from .run import fit_detector, run_benchmark

__all__ = [
    "GROUPS",
    "BenchmarkConfig",
    "BenchmarkResult",
    "OODSet",
    "RunScores",
    "ScorerFailure",
    "check_report_dir",
    "expand_scorers",
    "fit_detector",
    "load_config",
    "parse_ood_spec",
    "run_benchmark",
]
