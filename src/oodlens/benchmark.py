"""The benchmark harness: extract once, cache, fit every scorer on ID train, score ID test and
every OOD set, and report tidy tables."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._cache import OutputsCache, default_cache_dir, file_sha256
from ._outputs import Outputs
from ._registry import create_scorer, list_scorers
from .metrics import ood_metrics, rejection_report, selective_metrics

__all__ = [
    "OODSet",
    "BenchmarkConfig",
    "BenchmarkResult",
    "run_benchmark",
    "load_config",
    "parse_scorer_spec",
    "METRICS",
]

log = logging.getLogger(__name__)

#: Table columns, and whether higher is better (for bold-facing the best value).
METRICS: dict[str, bool] = {
    "auroc": True,
    "aupr_in": True,
    "aupr_out": True,
    "fpr95": False,
    "fpr95_ood_recall": False,
    "id_accuracy": True,
    "aurc": False,
    "eaurc": False,
    "id_errors_rejected": True,
    "id_correct_rejected": False,
    "ood_rejected": True,
    "error_rate_accepted": False,
    "open_set_risk": False,
}
GROUPS = ("near", "far", "covariate", "other")


@dataclass(frozen=True)
class OODSet:
    """One OOD dataset of a benchmark."""

    name: str  #: row label in the tables
    spec: str  #: dataset spec (see oodlens.datasets)
    group: str = "far"  #: "near", "far", "covariate" (reported, not averaged) or "other"

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"OOD set {self.name!r}: group {self.group!r} is not one of {GROUPS}.")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything a benchmark run depends on; loadable from YAML or TOML (:func:`load_config`).

    The defaults are the embedded demo: resnet18 at 32 px trained from scratch on digits 0-4,
    OOD = digits 5-9 (near) and Gaussian noise (far), every installed scorer.
    """

    id: str = "digits:0-4"  #: ID dataset spec: ``@train`` fits the scorers, ``@test`` is scored
    ood: tuple[OODSet, ...] = (
        OODSet("digits5-9", "digits:5-9", "near"),
        OODSet("noise", "noise:gaussian,n=500,size=32", "far"),
    )  #: OOD sets, never used for fitting
    models: tuple[str, ...] = ("resnet18",)  #: timm model names
    checkpoints: tuple[
        str, ...
    ] = ()  #: one checkpoint per model; empty: train here (or pretrained)
    pretrained: bool = False  #: use timm's pretrained weights with their own head (internet)
    seeds: tuple[int, ...] = (0,)  #: training seeds (models trained here only)
    train: Mapping[str, Any] = field(
        default_factory=lambda: {"epochs": 10, "hflip": False}
    )  #: TrainConfig overrides
    #: "name" or "name:key=value,..."; "all" (or an empty list) = every installed scorer
    scorers: tuple[str, ...] = ("all", "logit_kde:mode=class_conditional")
    img_size: int | None = 32  #: input size (None: the model's default)
    device: str = "cpu"  #: "cpu", "cuda", "mps" or "auto"
    batch_size: int = 256  #: extraction batch size
    num_workers: int = 0  #: DataLoader workers
    cache_dir: str | None = None  #: default: $OODLENS_CACHE_DIR or ~/.cache/oodlens
    use_cache: bool = True  #: False: extract (and train) again, store nothing
    threshold: float | None = None  #: an extra fixed operating threshold (e.g. density 0.04)
    id_acceptance: float = 0.95  #: operating threshold: accept this share of ID test
    skip_corrupt: bool = False  #: skip unreadable images (listed in results) instead of failing
    attention: bool = False  #: also measure Grad-CAM attention areas (see oodlens.diagnose)
    attention_scorer: str | None = None  #: whose threshold splits ID errors (default logit_kde)
    attention_samples: int = 200  #: images explained per set (every ID error is kept)
    attention_layer: str | None = None  #: Grad-CAM layer (default: automatic, see GradCAM)

    def __post_init__(self) -> None:
        ood = tuple(o if isinstance(o, OODSet) else OODSet(**o) for o in self.ood)
        object.__setattr__(self, "ood", ood)
        for name in ("models", "checkpoints", "seeds", "scorers"):
            value = getattr(self, name)
            object.__setattr__(
                self, name, (value,) if isinstance(value, str | int) else tuple(value)
            )
        if not self.models:
            raise ValueError("BenchmarkConfig.models is empty; name at least one timm model.")
        if self.checkpoints and len(self.checkpoints) != len(self.models):
            raise ValueError(
                f"Give one checkpoint per model: {len(self.models)} model(s), {len(self.checkpoints)} checkpoint(s)."
            )
        if not self.ood:
            raise ValueError("BenchmarkConfig.ood is empty; add at least one OOD set.")
        names = [o.name for o in self.ood]
        if len(set(names)) != len(names) or {"near", "far", "mean"} & set(names):
            raise ValueError(
                f"OOD set names must be unique and not 'near', 'far' or 'mean': {names}."
            )
        if not self.seeds:
            raise ValueError("BenchmarkConfig.seeds is empty.")
        from .train import TrainConfig

        unknown = set(self.train) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise ValueError(
                f"Unknown training option(s) {sorted(unknown)}; valid: {[f.name for f in dataclasses.fields(TrainConfig)]}."
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train"] = dict(self.train)
        return d


def load_config(
    path: str | os.PathLike[str], data_root: str | os.PathLike[str] | None = None
) -> BenchmarkConfig:
    """Read a :class:`BenchmarkConfig` from ``.yaml``/``.yml`` or ``.toml``.

    ``{data_root}`` in the file is replaced by ``data_root`` (or ``$OODLENS_DATA_ROOT``), so a
    config can point at any copy of its data.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
    text = path.read_text()
    if "{data_root}" in text:
        root = data_root if data_root is not None else os.environ.get("OODLENS_DATA_ROOT")
        if root is None:
            raise ValueError(
                f"Config {str(path)!r} uses {{data_root}}: pass --data-root DIR (or set OODLENS_DATA_ROOT)."
            )
        if not Path(root).is_dir():
            raise FileNotFoundError(f"Data root {str(root)!r} does not exist.")
        text = text.replace("{data_root}", str(Path(root).resolve()))
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    elif path.suffix == ".toml":
        import tomllib

        data = tomllib.loads(text)
    else:
        raise ValueError(f"Config {str(path)!r}: use a .yaml, .yml or .toml file.")
    if not isinstance(data, dict):
        raise ValueError(f"Config {str(path)!r} must hold a mapping of options.")
    data = data.get("benchmark", data)
    valid = {f.name for f in dataclasses.fields(BenchmarkConfig)}
    unknown = set(data) - valid
    if unknown:
        raise ValueError(
            f"Config {str(path)!r}: unknown option(s) {sorted(unknown)}; valid: {sorted(valid)}."
        )
    return BenchmarkConfig(**data)


def expand_scorers(specs: Sequence[str]) -> list[str]:
    """Scorer specs with ``"all"`` (or nothing) replaced by every installed scorer, in order,
    without duplicates."""
    out: list[str] = []
    for spec in specs or ("all",):
        for s in list_scorers() if spec == "all" else [spec]:
            if s not in out:
                out.append(s)
    return out


def parse_scorer_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"logit_kde:mode=class_conditional,top_k=2"`` -> ("logit_kde", {...}); values are
    Python literals where they parse (numbers, True/False/None), strings otherwise."""
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for token in (t for t in rest.split(",") if t):
        if "=" not in token:
            raise ValueError(f"Scorer spec {spec!r}: expected key=value, got {token!r}.")
        k, v = (s.strip() for s in token.split("=", 1))
        try:
            params[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            params[k] = v
    return name.strip(), params


@dataclass
class RunScores:
    """Scores of one (backbone, seed) run, kept for plots."""

    backbone: str
    seed: int
    id_correct: np.ndarray
    scores: dict[str, dict[str, np.ndarray]]  #: scorer -> {"id": ..., ood name: ...}
    outputs: dict[str, Outputs] = field(
        default_factory=dict, repr=False
    )  #: "id_train", "id_test", OOD names
    checkpoint: str | None = None  #: the weights used (None: timm pretrained)


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` returns."""

    config: BenchmarkConfig
    table: pd.DataFrame  #: one row per (backbone, seed, scorer, ood), plus near/far/mean rows
    runs: list[RunScores]
    timings: dict[str, float]
    info: dict[str, Any]
    attention: pd.DataFrame | None = None  #: attention-area summary per run and group
    confident_errors: list[Any] = field(default_factory=list)  #: explanations, for figures

    def summary(self) -> pd.DataFrame:
        """Mean and std over seeds per (backbone, scorer, ood): columns ``metric`` and ``metric_std``."""
        keys = ["backbone", "scorer", "ood", "group"]
        cols = [m for m in METRICS if m in self.table]
        g = self.table.groupby(keys, sort=False, dropna=False)[cols]
        mean = g.mean()
        std = g.std(ddof=1).fillna(0.0).add_suffix("_std")
        out = pd.concat([mean, std], axis=1).reset_index()
        out.insert(4, "n_seeds", g.size().to_numpy())
        return out

    def save(
        self,
        out_dir: str | os.PathLike[str],
        formats: Sequence[str] = ("md", "csv", "json", "tex"),
        plots: bool = True,
    ) -> Path:
        """Write tables, plots and ``results.json`` (config, versions, table) to ``out_dir``."""
        from . import report

        return report.write_report(self, Path(out_dir), formats=formats, plots=plots)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in (
        "oodlens",
        "torch",
        "torchvision",
        "timm",
        "captum",
        "numpy",
        "scipy",
        "scikit-learn",
        "pandas",
        "pluggy",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def _trained_checkpoint(
    model: str, cfg: BenchmarkConfig, seed: int, cache: OutputsCache, device: str, progress: bool
) -> tuple[str, dict[str, Any]]:
    from .train import TrainConfig, train_model

    tcfg = TrainConfig(
        model=model, data=cfg.id, img_size=cfg.img_size or 224, seed=seed, **dict(cfg.train)
    )
    key = hashlib.sha256(
        json.dumps(dataclasses.asdict(tcfg), sort_keys=True, default=str).encode()
    ).hexdigest()[:24]
    path = cache.directory / "checkpoints" / f"{model}-{key}.safetensors"
    if cache.enabled and path.exists():
        log.info("using cached trained checkpoint %s", path)
        from .backbones import read_model_config

        stored = read_model_config(path)
        summary = stored.extra.get("summary", {}) if stored is not None else {}
        return str(path), {**summary, "cached": True}
    if not cache.enabled:
        path = (
            Path(os.environ.get("TMPDIR", "/tmp"))
            / f"oodlens-{model}-{key}-{os.getpid()}.safetensors"
        )
    _, summary = train_model(tcfg, path, device=device, progress=progress)
    return str(path), summary


class _LazyModel:
    """Builds the network on first call: a fully cached run never builds it."""

    def __init__(self, name: str, checkpoint: str | None, img_size: int | None) -> None:
        self.name, self.checkpoint, self.img_size = name, checkpoint, img_size
        self.model: Any = None
        self.config: Any = None

    def __call__(self) -> Any:
        if self.model is None:
            from .backbones import create_backbone

            self.model, self.config = create_backbone(
                self.name,
                pretrained=self.checkpoint is None,
                checkpoint=self.checkpoint,
                img_size=self.img_size,
            )
        return self.model


def cached_extract(
    get_model: Any,
    model_name: str,
    weights_id: str,
    source: Any,
    transform: Any,
    input_size: tuple[int, int, int],
    cache: OutputsCache,
    device: Any = "cpu",
    batch_size: int = 256,
    num_workers: int = 0,
    skip_corrupt: bool = False,
    progress: bool = True,
) -> tuple[Outputs, bool, list[str]]:
    """Outputs of the model on ``source``, from the cache when an entry exists for the same
    (model name, weights hash, dataset fingerprint, transform, extraction version).
    ``get_model()`` returns the network; it is called only on a cache miss.

    Returns the outputs, whether it was a cache hit, and the skipped corrupt files.
    """

    from .backbones import ExtractionReport, extract_outputs

    key = cache.key(
        {
            "model": model_name,
            "weights": weights_id,
            "data": source.fingerprint(),
            "transform": repr(transform),
            "skip_corrupt": skip_corrupt,
        }
    )
    cached = cache.get(key)
    if cached is not None:
        return cached, True, []
    rep = ExtractionReport()
    # extract_outputs runs under inference_mode itself; the model is built outside it, so that
    # its parameters stay ordinary tensors (Grad-CAM needs gradients through them later)
    out = extract_outputs(
        get_model(),
        source,
        transform,
        input_size,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        skip_corrupt=skip_corrupt,
        progress=progress,
        report=rep,
    )
    cache.put(key, out)
    return out, False, rep.corrupt


def run_benchmark(
    config: BenchmarkConfig | None = None, progress: bool = True, **overrides: Any
) -> BenchmarkResult:
    """Run a benchmark; ``overrides`` replace fields of ``config`` (default: the digits demo).

    For every backbone (and training seed): the backbone runs once over ID train, ID test and
    each OOD set (outputs cached on disk); every scorer is fitted on ID train outputs only,
    scores ID test and every OOD set; metrics go into a tidy table.

    Example:
        >>> result = run_benchmark(scorers=("msp", "energy"))  # doctest: +SKIP
        >>> result.table.query("ood == 'near'")[["scorer", "auroc", "fpr95"]]  # doctest: +SKIP
    """
    from .backbones import build_transform, read_model_config, resolve_device
    from .datasets import load_dataset, split_spec

    cfg = dataclasses.replace(config or BenchmarkConfig(), **overrides)
    device = resolve_device(cfg.device)
    cache = OutputsCache(cfg.cache_dir or default_cache_dir(), enabled=cfg.use_cache)
    scorer_specs = expand_scorers(cfg.scorers)
    for spec in scorer_specs:  # fail fast on a bad name or parameter, before any work
        name, params = parse_scorer_spec(spec)
        create_scorer(name, **params)
    timings: dict[str, float] = {"extract": 0.0, "train": 0.0, "fit": 0.0, "score": 0.0}
    info: dict[str, Any] = {
        "corrupt": {},
        "train": {},
        "cache_hits": 0,
        "cache_misses": 0,
        "versions": _versions(),
    }
    datasets = {"id_train": split_spec(cfg.id, "train"), "id_test": split_spec(cfg.id, "test")}
    datasets.update({o.name: o.spec for o in cfg.ood})
    sources = {k: load_dataset(v) for k, v in datasets.items()}
    n_classes = len(sources["id_train"].classes)
    rows: list[dict[str, Any]] = []
    runs: list[RunScores] = []
    attention_tables: list[pd.DataFrame] = []
    result_confident: list[Any] = []
    for m_index, model_name in enumerate(cfg.models):
        plan: list[tuple[int | None, str | None]]
        if cfg.checkpoints:
            plan = [(None, cfg.checkpoints[m_index])]
        elif cfg.pretrained:
            plan = [(None, None)]
        else:
            plan = []
            for seed in cfg.seeds:
                t0 = time.perf_counter()
                ckpt, summary = _trained_checkpoint(
                    model_name, cfg, seed, cache, str(device), progress
                )
                timings["train"] += time.perf_counter() - t0
                info["train"][f"{model_name}/seed{seed}"] = summary
                plan.append((seed, ckpt))
        for seed, ckpt in plan:
            get_model = _LazyModel(model_name, ckpt, cfg.img_size)
            mcfg = read_model_config(ckpt) if ckpt else None
            if mcfg is None:
                get_model()
                mcfg = get_model.config
            if cfg.img_size is not None and mcfg.img_size != cfg.img_size:
                mcfg = dataclasses.replace(mcfg, img_size=cfg.img_size)
            if mcfg.num_classes != n_classes:
                what = f"Checkpoint {ckpt!r}" if ckpt else f"Pretrained {model_name!r}"
                raise ValueError(
                    f"{what} has {mcfg.num_classes} classes but the ID set {cfg.id!r} has {n_classes}"
                    + (
                        "."
                        if ckpt
                        else "; fine-tune it first (oodlens train --pretrained) and pass the checkpoint."
                    )
                )
            weights_id = file_sha256(ckpt) if ckpt else f"timm-pretrained:{model_name}"
            transform, data_cfg = build_transform(model_name, mcfg.img_size)
            outputs: dict[str, Outputs] = {}
            for key, source in sources.items():
                t0 = time.perf_counter()
                out, hit, corrupt = cached_extract(
                    get_model,
                    model_name,
                    weights_id,
                    source,
                    transform,
                    tuple(data_cfg["input_size"]),
                    cache,
                    device=device,
                    batch_size=cfg.batch_size,
                    num_workers=cfg.num_workers,
                    skip_corrupt=cfg.skip_corrupt,
                    progress=progress,
                )
                info["cache_hits" if hit else "cache_misses"] += 1
                if not hit:
                    timings["extract"] += time.perf_counter() - t0
                if corrupt:
                    info["corrupt"][source.spec] = corrupt
                outputs[key] = out
            backbone = model_name
            run_seed = -1 if seed is None else seed
            id_correct = outputs["id_test"].correct()
            run = RunScores(backbone, run_seed, id_correct, {}, outputs, ckpt)
            for spec in scorer_specs:
                name, params = parse_scorer_spec(spec)
                t0 = time.perf_counter()
                scorer = create_scorer(name, **params).fit(outputs["id_train"])
                timings["fit"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                s_id = scorer.score(outputs["id_test"])
                s_ood = {o.name: scorer.score(outputs[o.name]) for o in cfg.ood}
                timings["score"] += time.perf_counter() - t0
                run.scores[spec] = {"id": s_id, **s_ood}
                sel = selective_metrics(s_id, id_correct)
                base = {"backbone": backbone, "seed": run_seed, "scorer": spec}
                per_set = []
                for o in cfg.ood:
                    row = {**base, "ood": o.name, "group": o.group}
                    row.update(ood_metrics(s_id, s_ood[o.name]))
                    row["id_accuracy"] = sel["accuracy"]
                    row["aurc"], row["eaurc"] = sel["aurc"], sel["eaurc"]
                    rej = rejection_report(
                        s_id, id_correct, s_ood[o.name], id_acceptance=cfg.id_acceptance
                    )
                    row.update({k: v for k, v in rej.items() if k != "threshold"})
                    if cfg.threshold is not None:
                        fixed = rejection_report(
                            s_id, id_correct, s_ood[o.name], threshold=cfg.threshold
                        )
                        row.update({f"{k}@fixed": v for k, v in fixed.items()})
                    per_set.append(row)
                rows.extend(per_set)
                rows.extend(_aggregate_rows(per_set, base))
            runs.append(run)
            if cfg.attention:
                t0 = time.perf_counter()
                att, confident = _attention(
                    cfg, get_model(), transform, sources, outputs, run, scorer_specs, mcfg, device
                )
                timings["attention"] = timings.get("attention", 0.0) + time.perf_counter() - t0
                attention_tables.append(att.assign(backbone=backbone, seed=run_seed))
                info.setdefault("mannwhitney", {})[f"{backbone}/seed{run_seed}"] = att.attrs[
                    "mannwhitney"
                ]
                if confident is not None:
                    result_confident.append(confident)
    table = pd.DataFrame(rows)
    attention = pd.concat(attention_tables, ignore_index=True) if attention_tables else None
    return BenchmarkResult(cfg, table, runs, timings, info, attention, result_confident)


def _attention(cfg, model, transform, sources, outputs, run, scorer_specs, mcfg, device):
    from .diagnose import attention_analysis

    name = cfg.attention_scorer or ("logit_kde" if "logit_kde" in scorer_specs else scorer_specs[0])
    if name not in run.scores:
        raise ValueError(
            f"attention_scorer {name!r} is not among the benchmark's scorers {scorer_specs}."
        )
    scores = run.scores[name]
    threshold = rejection_report(scores["id"], run.id_correct, id_acceptance=cfg.id_acceptance)[
        "threshold"
    ]
    names = mcfg.class_names or sources["id_train"].classes
    table, confident = attention_analysis(
        model,
        transform,
        sources,
        outputs,
        scores["id"],
        {o.name: scores[o.name] for o in cfg.ood},
        threshold,
        names,
        max_per_set=cfg.attention_samples,
        device=device,
        layer=cfg.attention_layer,
    )
    table.attrs["mannwhitney"] = {
        "scorer": name,
        "threshold": threshold,
        **table.attrs["mannwhitney"],
    }
    return table, confident


def _aggregate_rows(per_set: list[dict[str, Any]], base: dict[str, Any]) -> list[dict[str, Any]]:
    """near / far / mean rows: the unweighted mean of the per-set metrics (OpenOOD's way)."""
    out = []
    numeric = [k for k, v in per_set[0].items() if isinstance(v, float) and k not in base]
    for label, members in (
        ("near", [r for r in per_set if r["group"] == "near"]),
        ("far", [r for r in per_set if r["group"] == "far"]),
        ("mean", [r for r in per_set if r["group"] in ("near", "far")]),
    ):
        if not members or (label == "mean" and len({r["group"] for r in members}) < 2):
            continue
        row = {**base, "ood": label, "group": "aggregate"}
        row.update({k: float(np.mean([r[k] for r in members])) for k in numeric})
        out.append(row)
    return out
