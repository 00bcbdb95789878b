"""The benchmark run: extract once (cached), fit every scorer on ID train, score ID test and
every OOD set, and collect tidy metric rows. :func:`run_benchmark` is a few small steps."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import platform
import re
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..cache import Cache, file_sha256
from ..compute import compute_device
from ..conformal import ConformalRejector, benjamini_hochberg, conformal_p_values
from ..datasets import DatasetSource, align_classes, content_hashes, holdout_split, split_spec
from ..distributed import all_gather, barrier, rank_and_world
from ..files import file_digest
from ..metrics import (
    full_spectrum_metrics,
    ood_metrics,
    rejection_report,
    selective_metrics,
    threshold_at_acceptance,
)
from ..options import ExtractOptions
from ..outputs import Outputs
from ..progress import progress_bar
from ..registry import (
    ScorerSpec,
    get_protocol,
    list_protocols,
    list_scorers,
    load_dataset,
    parse_scorer_spec,
    plugin_report,
)
from ..scorers.base import ModelInputs
from ..stats import bootstrap_ci
from .config import BenchmarkConfig, expand_scorers, parse_checkpoint
from .result import BenchmarkResult, RunScores, ScorerFailure, summarize_table
from .tune import candidates, tune_scorer

if TYPE_CHECKING:
    from ..detector import Detector

__all__ = ["run_benchmark", "fit_detector"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Backbone:
    """One network of a run: the rows it gives are labelled ``label`` (and ``seed``)."""

    model: str  #: timm model name
    label: str  #: the ``backbone`` column of its rows
    seed: int  #: a training seed, or the index among checkpoints named alike; -1: neither
    checkpoint: str | None  #: a given checkpoint; None: pretrained or trained here
    trained_here: bool = False


@dataclass
class _Plan:
    """Everything checked and resolved before any training or extraction."""

    cfg: BenchmarkConfig
    device: Any
    cache: Cache
    scorers: list[ScorerSpec]  #: parsed once, here
    backbones: list[_Backbone]
    sources: dict[str, DatasetSource]  #: "id_train", "id_test", OOD names
    #: the run's extraction options, resolved (device, preprocess and workers)
    options: ExtractOptions
    info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(
        default_factory=lambda: {"extract": 0.0, "train": 0.0, "fit": 0.0, "score": 0.0}
    )


def run_benchmark(
    config: BenchmarkConfig | None = None, progress: bool = True, **overrides: Any
) -> BenchmarkResult:
    """Run a benchmark; ``overrides`` replace fields of ``config`` (default: the digits demo).

    Everything that can be checked without data is checked first (scorer names and
    parameters, model names, checkpoints, the cache folder, the datasets and their class
    names), so a mistake fails before any training or extraction. Then, for every backbone
    (and training seed): the backbone runs once over ID train, ID test and each OOD set
    (outputs cached on disk); every scorer is fitted on ID train outputs only and scores ID
    test and every OOD set. A scorer that fails is recorded in ``result.failures`` (with
    its distribution) and the others' results are kept.

    Example:
        >>> result = run_benchmark(scorers=("msp", "energy"))  # doctest: +SKIP
        >>> result.table.query("ood == 'near'")[["scorer", "auroc", "fpr95"]]  # doctest: +SKIP
    """
    cfg = dataclasses.replace(config or BenchmarkConfig(), **overrides)
    if not cfg.ood:
        raise ValueError("A benchmark needs at least one OOD set: give --ood NAME=SPEC.")
    plan = _prepare(cfg, progress=progress)
    rows: list[dict[str, Any]] = []
    fs_rows: list[dict[str, Any]] = []
    runs: list[RunScores] = []
    failures: list[ScorerFailure] = []
    attention: list[pd.DataFrame] = []
    tests: dict[str, Any] = {}
    confident: list[Any] = []
    # without the cache, trained checkpoints live in a scratch folder removed at the end
    with contextlib.ExitStack() as stack:
        scratch = (
            None
            if cfg.use_cache
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="oodlens-")))
        )
        for backbone in plan.backbones:
            ckpt = _weights(plan, backbone, scratch, progress)
            model_name = backbone.model
            get_model, mcfg, transform, data_cfg, sources = _backbone(plan, model_name, ckpt)
            input_size = tuple(data_cfg["input_size"])
            outputs = _extract(
                plan, get_model, model_name, ckpt, transform, input_size, sources, progress
            )
            run = RunScores(
                backbone.label,
                backbone.seed,
                outputs["id_test"].correct(),
                {},
                outputs,
                None if scratch is not None else ckpt,
                ids={
                    k: list(src.ids) if len(src) == outputs[k].n_samples else None
                    for k, src in sources.items()
                    if k == "id_test" or k in {o.name for o in cfg.ood}
                },
            )
            plan.info.setdefault("id_accuracy", {})[f"{run.backbone}/seed{run.seed}"] = {
                k: float(np.mean(out.correct()))
                for k, out in outputs.items()
                if k.startswith("id_")
            }
            model_inputs = _ModelInputsFactory(
                plan, get_model, transform, data_cfg, sources, outputs, progress
            )
            if rank_and_world()[0] > 0:
                continue  # sharded extraction done: fitting and scoring run once, on rank 0
            rows += _score(plan, run, failures, model_inputs)
            if cfg.fsood:
                fs_rows += _fsood_rows(cfg, run)
            runs.append(run)
            if cfg.save_detectors is not None:
                _save_detectors(plan, backbone, ckpt, mcfg, run)
            if cfg.attention:
                t0 = time.perf_counter()
                res = _attention(plan, get_model(), transform, sources, run, mcfg, progress)
                plan.timings["attention"] = (
                    plan.timings.get("attention", 0.0) + time.perf_counter() - t0
                )
                attention.append(res.table.assign(backbone=run.backbone, seed=run.seed))
                tests[f"{run.backbone}/seed{run.seed}"] = res.tests
                if res.confident_errors is not None:
                    confident.append(res.confident_errors)
    result = BenchmarkResult(
        cfg,
        pd.DataFrame(rows),
        runs,
        plan.timings,
        plan.info,
        failures,
        pd.concat(attention, ignore_index=True) if attention else None,
        tests,
        confident,
        pd.DataFrame(fs_rows) if cfg.fsood else None,
    )
    if cfg.compare_published is not None and runs:
        result.info["published"] = _compare_published(result, runs)
    return result


def _compare_published(result: BenchmarkResult, runs: list[RunScores]) -> dict[str, Any]:
    """``--compare-published``: the run's near/far means beside the protocol's published."""
    from .published import compare_published

    cfg = result.config
    sizes = {o.name: runs[0].outputs[o.name].n_samples for o in cfg.ood}
    groups = {g: [o.name for o in cfg.ood if o.group == g] for g in ("near", "far")}
    protocol = get_protocol(cfg.protocol)
    out = compare_published(
        result.summary(),
        runs,
        protocol,
        groups,
        sizes,
        network=cfg.compare_published or None,
        n_resamples=cfg.bootstrap,
    )
    if cfg.fsood:
        published = protocol.results
        if published is not None and published.networks[out["network"]].get("fsood"):
            # our interval would need the covariate rows resampled too: none is given
            out["fsood"] = compare_published(
                summarize_table(result.fsood),
                runs,
                protocol,
                groups,
                sizes,
                out["network"],
                "fsood",
            )
        else:
            out["notes"].append(
                f"Full-spectrum: OpenOOD v1.5 publishes no FS-OOD numbers for {cfg.protocol} "
                f"({out['network']}); the FS-OOD table has nothing to compare with."
            )
    return out


def _check_ranks_agree(cfg: BenchmarkConfig) -> None:
    """Under torchrun, stop before any work unless every rank runs the same configuration
    (ranks with another batch size would shard other rows; with another ID set, read shards
    that do not exist), naming the first field that differs."""
    if rank_and_world()[1] == 1:
        return
    first, *others = all_gather(json.loads(json.dumps(cfg.to_dict(), default=str)))
    for rank, theirs in enumerate(others, start=1):
        diff = [k for k in first if first[k] != theirs.get(k)]
        if diff:
            key = diff[0]
            raise ValueError(
                f"torchrun ranks were launched with different arguments: {key} is "
                f"{first[key]!r} on rank 0 but {theirs.get(key)!r} on rank {rank}; launch "
                "every rank with the same command and options."
            )


def _detector_name(run: RunScores, spec: ScorerSpec) -> str:
    """A file name from the backbone, the seed and the spec (unsafe characters as ``_``)."""
    seed = "" if run.seed < 0 else f"-seed{run.seed}"
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", f"{run.backbone}{seed}-{spec.text}") + ".oodlens"


def _save_detectors(plan: _Plan, backbone: _Backbone, ckpt, mcfg, run: RunScores) -> None:
    """``--save-detectors``: one file per scorer fitted in this run; a scorer that cannot
    be saved is named in the run's warnings (the others are saved)."""
    for spec in plan.scorers:
        if spec.text not in run.fitted:
            continue  # the scorer failed; its failure is reported
        path = Path(plan.cfg.save_detectors) / _detector_name(run, spec)
        try:
            _detector(plan, backbone, ckpt, mcfg, spec, *run.fitted[spec.text]).save(path)
        except TypeError as exc:
            plan.info["warnings"].append(f"no detector saved for {spec.text}: {exc}")
            continue
        plan.info.setdefault("detectors", []).append(str(path))


def _detector(plan: _Plan, backbone: _Backbone, ckpt, mcfg, spec: ScorerSpec, scorer, calib):
    """A :class:`~oodlens.Detector` of a fitted scorer: the network's config and weights
    (embedded when the run trained them itself or ``embed_weights``), the calib scores, the
    run's alpha (its first ``--alpha``, else 0.05) or fixed threshold, and provenance."""
    from ..detector import Detector, embedded_weights

    cfg = plan.cfg
    embed = ckpt is not None and (backbone.trained_here or cfg.embed_weights)
    return Detector(
        spec=spec.text,
        scorer=scorer,
        backbone=mcfg,
        calib_scores=calib,
        alpha=None if cfg.threshold is not None else (cfg.alphas or (0.05,))[0],
        threshold=cfg.threshold,
        checkpoint_sha256=file_sha256(ckpt) if ckpt else None,
        checkpoint_digest=file_digest(ckpt) if ckpt else None,
        checkpoint_path=None if ckpt is None else str(Path(ckpt).resolve()),
        weights=embedded_weights(ckpt) if embed else None,
        provenance={
            "config": json.loads(json.dumps(cfg.to_dict(), default=str)),
            "data": {k: s.fingerprint() for k, s in plan.sources.items() if k.startswith("id_")},
            "splits": plan.info["splits"],
            "backbone": backbone.label,
            "seed": backbone.seed,
            "versions": plan.info["versions"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


def fit_detector(config: BenchmarkConfig, progress: bool = True) -> Detector:
    """Fit one scorer on one network's ID training outputs and calibrate it on the held-out
    calib split, exactly as :func:`run_benchmark` does (the same splits, cache and
    training), into a :class:`~oodlens.Detector` (``oodlens fit``). OOD sets are not used.

    Raises:
        ValueError: the config names several scorers or several networks.
    """
    cfg = config
    plan = _prepare(cfg, ood=False, progress=progress)
    if len(plan.scorers) != 1 or len(plan.backbones) != 1:
        raise ValueError(
            f"A detector is one scorer on one network: got {len(plan.scorers)} scorer(s) "
            f"({', '.join(s.text for s in plan.scorers)}) and {len(plan.backbones)} "
            "network(s); give one --scorer and one --model (one checkpoint, one seed)."
        )
    (spec,), (backbone,) = plan.scorers, plan.backbones
    with contextlib.ExitStack() as stack:
        scratch = (
            None
            if cfg.use_cache
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="oodlens-")))
        )
        ckpt = _weights(plan, backbone, scratch, progress)
        get_model, mcfg, transform, data_cfg, sources = _backbone(plan, backbone.model, ckpt)
        needed = {k: v for k, v in sources.items() if k in ("id_train", "id_val", "id_calib")}
        input_size = tuple(data_cfg["input_size"])
        out = _extract(
            plan, get_model, backbone.model, ckpt, transform, input_size, needed, progress
        )
        mi = (
            _ModelInputsFactory(plan, get_model, transform, data_cfg, needed, out, progress).of(
                spec.text
            )
            if spec.model_aware
            else None
        )
        with compute_device(_score_device(plan.device)):
            scorer = spec.create().fit(
                out["id_train"], val=out.get("id_val"), model=mi("id_train") if mi else None
            )
            calib = scorer.score(out["id_calib"], model=mi("id_calib") if mi else None)
        # weights trained in a scratch folder are embedded before the folder goes
        return _detector(plan, backbone, ckpt, mcfg, spec, scorer, calib)


def _prepare(cfg: BenchmarkConfig, ood: bool = True, progress: bool = False) -> _Plan:
    from ..backbones import (
        check_img_size,
        check_model_name,
        read_model_config,
        resolve_decode,
        resolve_device,
        resolve_preprocess,
    )
    from ..extract import default_num_workers

    _check_ranks_agree(cfg)

    device = resolve_device(cfg.device)
    cache = Cache(cfg.cache_dir, enabled=cfg.use_cache)
    cache.check_writable()
    if cache.enabled:
        for path in cache.remove_stale_temporaries():
            log.info("removed %s, left by a run that was killed", path)
    specs = expand_scorers(cfg.scorers)  # names and parameter values, before any work
    if cfg.tune:
        for spec in specs:
            candidates(spec)  # every grid candidate
    texts = [s.text for s in specs]
    if cfg.attention_scorer is not None and cfg.attention_scorer not in texts:
        raise ValueError(
            f"attention_scorer {cfg.attention_scorer!r} is not among the benchmark's scorers {texts}."
        )
    if cfg.compare_published is not None:
        _check_published(cfg)
    backbones = _backbones(cfg)
    for b in backbones:
        check_model_name(b.model)
        if b.checkpoint is not None:
            stored = read_model_config(b.checkpoint)
            if stored is not None and stored.model != b.model:
                raise ValueError(
                    f"Checkpoint {b.checkpoint!r} was trained as {stored.model!r}, "
                    f"not {b.model!r}; pass --model {stored.model}."
                )
            check_img_size(cfg.img_size, stored, b.checkpoint, cfg.override_checkpoint)
    train = load_dataset(split_spec(cfg.id, "train"))
    test = align_classes(load_dataset(split_spec(cfg.id, "test")), train.classes, "ID test")
    # val and calib come from ID data the network never saw: out of the training split
    # (held out before training) when the model is trained here, else out of ID test
    trained_here = not cfg.checkpoints and not cfg.pretrained
    rest, val, calib = holdout_split(
        train if trained_here else test, cfg.val_fraction, cfg.calib_fraction
    )
    train, test = (rest, test) if trained_here else (train, rest)
    sources = {"id_train": train, "id_test": test, "id_calib": calib}
    if val is not None:
        sources["id_val"] = val
    if ood:
        sources.update({o.name: load_dataset(o.spec) for o in cfg.ood})
        if cfg.fsood:  # covariate-shifted ID: its labels are the ID classes' (for accuracy)
            for o in cfg.ood:
                if o.group == "covariate":
                    sources[o.name] = align_classes(
                        sources[o.name], train.classes, f"covariate-shifted ID set {o.name!r}"
                    )
        sources.update({f"ood_val:{o.name}": load_dataset(o.spec) for o in cfg.ood_val})
    info: dict[str, Any] = {
        "model_aware_not_run": _not_run_by_all(cfg.scorers, texts, "model_aware"),
        "stage_scorers_not_run": _not_run_by_all(cfg.scorers, texts, "reads_stages"),
        "corrupt": {},
        "train": {},
        "cache_hits": 0,
        "cache_misses": 0,
        "warnings": _overlaps(sources),
        "duplicates": {},
        "splits": {
            "held_out_from": "ID train (before training)" if trained_here else "ID test",
            **{k: len(v) for k, v in sources.items() if k.startswith("id_")},
        },
        "scorer_distributions": {s.text: s.distribution for s in specs},
        "versions": _versions(),
        "plugins": _plugins(),
    }
    preprocess = resolve_preprocess(cfg.preprocess, device)
    options = cfg.extract_options().replace(
        device=str(device),
        preprocess=preprocess,
        decode=resolve_decode(cfg.decode, device, preprocess),
        num_workers=cfg.num_workers if cfg.num_workers is not None else default_num_workers(),
    )
    info["num_workers"] = options.num_workers
    info["duplicates"] = _duplicates(
        sources, cache, info["warnings"], options.num_workers, progress
    )
    info["preprocess"] = options.preprocess
    info["score_device"] = str(_score_device(device) or "cpu (numpy)")
    from ..backbones import with_stages

    specs = _applicable(cfg.scorers, specs, backbones, cfg.img_size, info)
    for model in {b.model for b in backbones}:  # before any work: stages each one has
        with_stages(options, model, [spec.kinds for spec in specs])
    return _Plan(cfg, device, cache, specs, backbones, sources, options, info)


def _applicable(
    asked: Sequence[str],
    specs: list[ScorerSpec],
    backbones: Sequence[_Backbone],
    img_size: int | None,
    info: dict[str, Any],
) -> list[ScorerSpec]:
    """The scorers that apply to every backbone of the run (:meth:`Scorer.applies_to`, on
    each architecture built on the meta device, at the run's input size): one that ``all`` / ``all+model`` brought
    in and does not apply is left out and listed with its reason in
    ``info["not_applicable"]``; one asked for by name is an error naming the reason."""
    from ..backbones import meta_network

    named = {text.strip() for text in asked if text not in ("all", "all+model")}
    reasons: dict[str, str] = {}
    for model in dict.fromkeys(b.model for b in backbones):
        network = meta_network(model)
        size = img_size or network.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
        for spec in specs:  # a spec with a grid: its first candidate stands for it
            scorer = spec.create(**{k: values[0] for k, values in spec.grid.items()})
            reason = scorer.applies_to(network, (3, size, size))
            if reason is None or spec.text in reasons:
                continue
            if spec.text in named:
                raise ValueError(f"Scorer {spec.text!r} does not apply to {model}: {reason}")
            reasons[spec.text] = f"{model}: {reason}"
    info["not_applicable"] = reasons
    return [spec for spec in specs if spec.text not in reasons]


def _check_published(cfg: BenchmarkConfig) -> None:
    """Before any work: the protocol publishes results for the network asked for, and its
    name map names scorers that exist."""
    results = get_protocol(cfg.protocol).results
    if results is None:
        with_results = [n for n in list_protocols() if get_protocol(n).results is not None]
        raise ValueError(
            f"Protocol {cfg.protocol!r} has no published results to compare with; protocols "
            f"with published results: {', '.join(with_results) or 'none'}."
        )
    results.network(cfg.compare_published or None)
    for method in results.methods.values():
        if method.ours is not None:
            parse_scorer_spec(method.ours).create()


def _not_run_by_all(scorers: Sequence[str], texts: Sequence[str], kind: str) -> list[str]:
    """The installed scorers of ``kind`` (a :class:`ScorerSpec` property: ``model_aware``
    or ``reads_stages``) that ``"all"`` leaves out (``"all+model"`` runs them), whichever
    distribution they come from; none when ``"all"`` was not asked for."""
    if scorers and "all" not in scorers:
        return []
    left = [n for n in list_scorers() if getattr(parse_scorer_spec(n), kind)]
    return [n for n in left if n not in texts]


def _backbones(cfg: BenchmarkConfig) -> list[_Backbone]:
    """The networks of a run, each with the label of its rows. Given checkpoints: a
    ``NAME=PATH`` checkpoint is labelled NAME (several paths under one NAME are seeds 0, 1,
    ... of one network, averaged in the summary); an unnamed one by its model when that
    model has no other checkpoint, else by model and file, so two checkpoints of one
    architecture are two rows, never one row with two "seeds"."""
    from ..clip import is_clip

    if cfg.pretrained and not cfg.checkpoints:
        return [_Backbone(m, m, -1, None) for m in cfg.models]
    if not cfg.checkpoints:  # trained here; a CLIP model is zero-shot: never trained
        return [
            _Backbone(m, m, -1, None)
            if is_clip(m)
            else _Backbone(m, m, seed, None, trained_here=True)
            for m in cfg.models
            for seed in (cfg.seeds[:1] if is_clip(m) else cfg.seeds)
        ]
    models = cfg.models * len(cfg.checkpoints) if len(cfg.models) == 1 else cfg.models
    entries = [
        (model, *parse_checkpoint(text))
        for model, text in zip(models, cfg.checkpoints, strict=True)
    ]
    groups: dict[str, set[str]] = {}  # NAME -> the models of its checkpoints
    for model, name, _ in entries:
        if name is not None:
            groups.setdefault(name, set()).add(model)
    mixed = {n: sorted(m) for n, m in groups.items() if len(m) > 1}
    if mixed:
        raise ValueError(
            f"Checkpoints named alike are of different models {mixed}; one NAME groups the "
            "seeds of one network: give each model its own NAME."
        )
    named = Counter(name for _, name, _ in entries if name is not None)
    unnamed = Counter(model for model, name, _ in entries if name is None)
    files = Counter(Path(path).name for _, name, path in entries if name is None)
    seen: Counter[str] = Counter()
    out = []
    for model, name, path in entries:
        if name is not None:  # seeds 0, 1, ... of one network when several share the NAME
            seed = seen[name] if named[name] > 1 else -1
            seen[name] += 1
            out.append(_Backbone(model, name, seed, path))
            continue
        alone = unnamed[model] == 1 and model not in named
        own = Path(path).name if files[Path(path).name] == 1 else path
        out.append(_Backbone(model, model if alone else f"{model} ({own})", -1, path))
    labels = [(b.label, b.seed) for b in out]
    if len(set(labels)) != len(labels):
        raise ValueError(
            f"Two checkpoints would give rows with the same label: {sorted(labels)}; name them "
            "apart with --checkpoint NAME=PATH."
        )
    return out


def _overlaps(sources: dict[str, DatasetSource]) -> list[str]:
    """Warnings for OOD sets that share samples (same file or id) with the ID data."""
    out = []
    id_ids = {k: set(v.ids) for k, v in sources.items() if k.startswith("id_")}
    for name, src in sources.items():
        if name in id_ids:
            continue
        for key, ids in id_ids.items():
            shared = sum(1 for i in src.ids if i in ids)
            if shared:
                msg = (
                    f"OOD set {name!r} shares {shared} of its {len(src)} samples with "
                    f"{key.replace('_', ' ')}: the same images count as ID and OOD, so its "
                    "metrics are meaningless. Check its spec."
                )
                log.warning(msg)
                out.append(msg)
    return out


def _duplicates(
    sources: dict[str, DatasetSource],
    cache: Cache,
    warnings: list[str],
    threads: int = 0,
    progress: bool = False,
) -> dict[str, int]:
    """Exact duplicate images (same decoded pixels) between each ID split and every other
    set, and between OOD validation and OOD test sets, by content hash (cached per dataset
    fingerprint). Nonzero counts are warned about: the same image then counts twice (e.g.
    CIFAR-10 and CINIC-10 share images)."""
    hashes: dict[str, set[str]] = {}
    for key, src in sources.items():
        fp = src.fingerprint()
        values = cache.get_json("hashes", fp)
        if values is None:
            values = content_hashes(src, threads, progress)
            cache.put_json("hashes", fp, values)
        hashes[key] = set(values) - {""}
    counts: dict[str, int] = {}
    keys = list(sources)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            kinds = {
                k.split("_", 1)[0] if k.startswith(("id_", "ood_val:")) else "test" for k in (a, b)
            }
            if "id" not in kinds and kinds != {"ood", "test"}:
                continue  # only pairs with an ID split, or OOD validation vs OOD test
            n = len(hashes[a] & hashes[b])
            counts[f"{a}|{b}"] = n
            if n:
                msg = f"{n} image(s) of {b!r} are exact duplicates of images in {a!r}."
                log.warning(msg)
                warnings.append(msg)
    return counts


def _weights(plan: _Plan, backbone: _Backbone, scratch: Path | None, progress: bool) -> str | None:
    """The checkpoint of one network: given, trained here (or reused from the cache), or
    ``None`` for timm's pretrained weights."""
    if not backbone.trained_here:
        return backbone.checkpoint
    t0 = time.perf_counter()
    ckpt, summary = _trained_checkpoint(plan, backbone.model, backbone.seed, scratch, progress)
    plan.timings["train"] += time.perf_counter() - t0
    plan.info["train"][f"{backbone.model}/seed{backbone.seed}"] = summary
    return ckpt


def _trained_checkpoint(
    plan: _Plan, model: str, seed: int, scratch: Path | None, progress: bool
) -> tuple[str, dict[str, Any]]:
    """Train (or reuse) a checkpoint; the cache key covers the training config and the
    fingerprints of the training and test data, so changed images mean a new model."""
    from ..backbones import read_model_config
    from ..train import TrainConfig, train_model

    cfg = plan.cfg
    tcfg = TrainConfig(
        model=model,
        data=cfg.id,
        img_size=cfg.img_size or 224,
        seed=seed,
        holdout=(cfg.val_fraction, cfg.calib_fraction),
        **{"precision": cfg.precision, "channels_last": cfg.channels_last, **dict(cfg.train)},
    )
    train_config = dataclasses.asdict(tcfg)
    for name, default in (("precision", "fp32"), ("channels_last", False)):
        if train_config[name] == default:  # keys from before these options stay valid
            del train_config[name]
    key = plan.cache.key(
        {
            "kind": "checkpoint",
            "train_config": train_config,
            "train_data": plan.sources["id_train"].fingerprint(),
            "test_data": plan.sources["id_test"].fingerprint(),
        }
    )
    path = (
        plan.cache.checkpoint_path(key, model)
        if scratch is None
        else scratch / f"{model}-{key}.safetensors"
    )
    rank, world = rank_and_world()
    if world > 1:
        if scratch is not None:
            raise ValueError(
                "Under torchrun the model trained here is shared through the cache: drop "
                "--no-cache (and give every rank the same --cache-dir)."
            )
        if rank == 0 and not path.exists():
            plan.cache.check_can_add(f"a {model} trained on {cfg.id!r} (seed {seed})")
            train_model(tcfg, path, device=plan.device, progress=progress)
        barrier()  # the other ranks wait for rank 0's checkpoint
    if scratch is None and path.exists():
        try:
            stored = read_model_config(path)
        except ValueError as exc:
            log.warning(
                "Discarding unreadable cached checkpoint %s (%s); training again.", path, exc
            )
            path.unlink(missing_ok=True)
        else:
            if stored is not None:
                log.info("using cached trained checkpoint %s", path)
                return str(path), {**stored.extra.get("summary", {}), "cached": True}
    if scratch is None:
        plan.cache.check_can_add(f"a {model} trained on {cfg.id!r} (seed {seed})")
    _, summary = train_model(tcfg, path, device=plan.device, progress=progress)
    return str(path), summary


def _backbone(plan: _Plan, model_name: str, ckpt: str | None):
    """The lazily built network, its config and transform, and the ID sources relabelled by
    the model's class names (when the checkpoint records them)."""
    from ..backbones import (
        BatchPreprocess,
        build_transform,
        check_normalization,
        read_model_config,
    )
    from ..clip import is_clip
    from ..extract import LazyBackbone

    cfg = plan.cfg
    zero_shot = is_clip(model_name)
    get_model = LazyBackbone(
        model_name, ckpt, cfg.img_size, tuple(plan.sources["id_train"].classes)
    )
    mcfg = read_model_config(ckpt) if ckpt and not zero_shot else None
    if mcfg is None:
        get_model()
        mcfg = get_model.config
    # a CLIP model runs at its own size (its position embeddings are fixed)
    if cfg.img_size is not None and mcfg.img_size != cfg.img_size and not zero_shot:
        mcfg = dataclasses.replace(mcfg, img_size=cfg.img_size)
    sources = dict(plan.sources)
    n_classes = len(sources["id_train"].classes)
    if mcfg.class_names:
        for key in [k for k in sources if k.startswith("id_")]:
            sources[key] = align_classes(sources[key], mcfg.class_names, key.replace("_", " "))
    elif mcfg.num_classes != n_classes:
        what = f"Checkpoint {ckpt!r}" if ckpt else f"Pretrained {model_name!r}"
        raise ValueError(
            f"{what} has {mcfg.num_classes} classes but the ID set {cfg.id!r} has {n_classes}"
            + (
                "."
                if ckpt
                else "; fine-tune it first (oodlens train --pretrained) and pass the checkpoint."
            )
        )
    transform, data_cfg = build_transform(model_name, mcfg.img_size)
    check_normalization(mcfg, data_cfg, ckpt)
    if plan.info["preprocess"] == "device":
        transform = BatchPreprocess(transform)
    return get_model, mcfg, transform, data_cfg, sources


def _extract(
    plan, get_model, model_name, ckpt, transform, input_size, sources, progress
) -> dict[str, Outputs]:
    from ..backbones import with_stages
    from ..extract import cached_extract_all

    # the stages the scorers read (and --stages), resolved for this backbone
    options = with_stages(plan.options, model_name, [spec.kinds for spec in plan.scorers])
    from ..clip import is_clip, zero_shot_weights_id

    if is_clip(model_name):  # the weights and the head the class names made
        weights_id = zero_shot_weights_id(model_name, ckpt, get_model())
    else:
        weights_id = file_sha256(ckpt) if ckpt else f"timm-pretrained:{model_name}"
    t0 = time.perf_counter()
    results = cached_extract_all(
        get_model,
        model_name,
        weights_id,
        sources,
        transform,
        input_size,
        plan.cache,
        options,
        progress=progress,
    )
    outputs: dict[str, Outputs] = {}
    for key, (out, hit, corrupt) in results.items():
        plan.info["cache_hits" if hit else "cache_misses"] += 1
        if corrupt:
            plan.info["corrupt"][sources[key].spec] = corrupt
        outputs[key] = out
    if not all(hit for _, hit, _ in results.values()):
        plan.timings["extract"] += time.perf_counter() - t0
    return outputs


class _ModelInputsFactory:
    """``ModelInputs`` for each dataset of a run (the network and its images), built on first
    use: only model-aware scorers ask for them, in their own passes over the images."""

    def __init__(
        self, plan, get_model, transform, data_cfg, sources, outputs, progress=False, who=""
    ) -> None:
        self.plan, self.get_model, self.transform = plan, get_model, transform
        self.data_cfg, self.sources, self.outputs = data_cfg, sources, outputs
        self.progress, self.who = progress, who

    def of(self, who: str) -> _ModelInputsFactory:
        """The same, with the passes' progress naming the scorer ``who``."""
        return _ModelInputsFactory(
            self.plan,
            self.get_model,
            self.transform,
            self.data_cfg,
            self.sources,
            self.outputs,
            self.progress,
            who,
        )

    def __call__(self, key: str) -> ModelInputs:
        from ..extract import model_inputs

        return model_inputs(
            self.get_model(),
            self.sources[key],
            self.transform,
            tuple(self.data_cfg["input_size"]),
            self.plan.options,
            tuple(float(v) for v in self.data_cfg["std"]),
            self.outputs[key].n_samples,
            who=self.who,
            progress=self.progress,
        )


def _score(
    plan: _Plan,
    run: RunScores,
    failures: list[ScorerFailure],
    model_inputs: _ModelInputsFactory,
) -> list[dict[str, Any]]:
    """Tune (with ``tune``), fit and score every scorer; a failing scorer is recorded and
    skipped. The operating threshold comes from the ``calib`` split. Model-aware scorers get
    the network and the images of each set, and their time is recorded per scorer."""
    rows: list[dict[str, Any]] = []
    out = run.outputs
    ood_val = {k.split(":", 1)[1]: v for k, v in out.items() if k.startswith("ood_val:")}
    which = run.backbone if run.seed < 0 else f"{run.backbone} seed {run.seed}"
    with (
        compute_device(_score_device(plan.device)),
        progress_bar(
            total=len(plan.scorers),
            desc=f"fit and score ({which})",
            unit="scorer",
            enabled=model_inputs.progress,
        ) as bar,
    ):
        for spec in plan.scorers:
            bar.set_postfix_str(spec.text, refresh=False)
            rows += _score_one(plan, run, failures, model_inputs, spec, ood_val)
            bar.update(1)
    return rows


def _score_device(device: Any) -> Any:
    """Where the scorers fit and score: the run's device on CUDA (their torch paths, see
    :mod:`oodlens.compute`), else ``None`` (numpy on the CPU)."""
    return device if device.type == "cuda" else None


def _score_one(
    plan: _Plan, run: RunScores, failures, model_inputs, spec: ScorerSpec, ood_val
) -> list[dict[str, Any]]:
    """Tune, fit and score one scorer spec: its metric rows, or none when it failed."""
    out = run.outputs
    stage = "tune" if plan.cfg.tune else "fit"
    mi = model_inputs.of(spec.text) if spec.model_aware else None
    t_start = time.perf_counter()
    try:
        params: dict[str, Any] = {}
        if plan.cfg.tune:
            t0 = time.perf_counter()
            tuned = tune_scorer(spec, out["id_train"], out["id_val"], ood_val, model=mi)
            plan.timings["tune"] = plan.timings.get("tune", 0.0) + time.perf_counter() - t0
            run.tuning[spec.text] = {
                "chosen": tuned.params,
                "grid": tuned.searched,
                "trials": tuned.trials,
            }
            params = tuned.params
            stage = "fit"
        t0 = time.perf_counter()
        scorer = spec.create(**params).fit(
            out["id_train"], val=out.get("id_val"), model=mi("id_train") if mi else None
        )
        fit_s = time.perf_counter() - t0
        plan.timings["fit"] += fit_s
        stage = "score"
        t0 = time.perf_counter()

        def score(key: str, scorer=scorer, mi=mi) -> np.ndarray:
            return scorer.score(out[key], model=mi(key) if mi else None)

        scores = {"id": score("id_test")}
        scores.update({o.name: score(o.name) for o in plan.cfg.ood})
        calib = score("id_calib")
        plan.timings["score"] += time.perf_counter() - t0
        seconds = plan.info.setdefault("scorer_seconds", {}).setdefault(spec.text, {})
        seconds["fit"] = seconds.get("fit", 0.0) + fit_s
        seconds["score"] = seconds.get("score", 0.0) + time.perf_counter() - t0
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        log.warning(
            "scorer %r (from %s) failed at %s: %s", spec.text, spec.distribution, stage, error
        )
        failures.append(
            ScorerFailure(spec.text, spec.distribution, run.backbone, run.seed, stage, error)
        )
        return []
    if spec.model_aware:
        key = f"model-aware {spec.text}"
        plan.timings[key] = plan.timings.get(key, 0.0) + time.perf_counter() - t_start
    run.scores[spec.text] = scores
    run.fitted[spec.text] = (scorer, calib)
    run.thresholds[spec.text] = threshold_at_acceptance(calib, plan.cfg.id_acceptance)
    sel = selective_metrics(scores["id"], run.id_correct)
    extra = (
        _conformal(plan, run, spec, scorer, scores, calib)
        if plan.cfg.alphas or plan.cfg.fdr
        else {}
    )
    return _metric_rows(plan.cfg, run, spec.text, scores, sel, extra)


def _conformal(
    plan: _Plan, run: RunScores, spec: ScorerSpec, scorer, scores, calib
) -> dict[str, dict[str, float]]:
    """Per OOD set: realised ID false-rejection rate and OOD power of conformal p-values
    calibrated on the calib split (at each alpha), and BH's realised FDR and power on a
    batch of all ID test rows plus that set (at ``fdr``)."""
    cfg = plan.cfg
    rejector = ConformalRejector(scorer)
    rejector.calibrate_scores(calib, rows=run.outputs["id_calib"])
    p = {k: conformal_p_values(calib, v) for k, v in scores.items()}
    low = [a for a in cfg.alphas if a < rejector.min_alpha]
    if low:
        msg = (
            f"alpha {low} is below 1/(n+1) = {rejector.min_alpha:.4g} with n = "
            f"{rejector.n_calib} calibration rows, so no scorer can reject anything at it; use "
            "a larger calib split (--calib-fraction) or a larger alpha."
        )
        if msg not in plan.info["warnings"]:
            plan.info["warnings"].append(msg)
    grid = np.round(np.linspace(0.01, 0.5, 50), 4)
    run.calibration[spec.text] = {
        "alpha": grid.tolist(),
        "frr": [float(np.mean(p["id"] <= a)) for a in grid],
    }
    out: dict[str, dict[str, float]] = {}
    n_id = p["id"].size
    for o in cfg.ood:
        row: dict[str, float] = {}
        for a in cfg.alphas:
            row[f"frr@{a:g}"] = float(np.mean(p["id"] <= a))
            row[f"power@{a:g}"] = float(np.mean(p[o.name] <= a))
        if cfg.fdr is not None:
            flags = benjamini_hochberg(np.concatenate([p["id"], p[o.name]]), cfg.fdr)
            row[f"fdr@{cfg.fdr:g}"] = float(flags[:n_id].sum() / max(1, flags.sum()))
            row[f"fdr_power@{cfg.fdr:g}"] = float(flags[n_id:].mean())
        out[o.name] = row
    return out


def _metric_rows(
    cfg: BenchmarkConfig, run: RunScores, spec: str, scores, sel, extra
) -> list[dict[str, Any]]:
    base = {"backbone": run.backbone, "seed": run.seed, "scorer": spec}
    threshold = run.thresholds[spec]
    per_set = []
    for o in cfg.ood:
        row = {**base, "ood": o.name, "group": o.group}
        row.update(ood_metrics(scores["id"], scores[o.name], convention=cfg.convention))
        row["id_accuracy"], row["aurc"], row["eaurc"] = sel["accuracy"], sel["aurc"], sel["eaurc"]
        rej = rejection_report(scores["id"], run.id_correct, scores[o.name], threshold=threshold)
        row.update(rej)
        if cfg.threshold is not None:
            fixed = rejection_report(
                scores["id"], run.id_correct, scores[o.name], threshold=cfg.threshold
            )
            row.update({f"{k}@fixed": v for k, v in fixed.items()})
        row.update(extra.get(o.name, {}))
        if cfg.bootstrap:
            ci = bootstrap_ci(
                scores["id"],
                scores[o.name],
                n_resamples=cfg.bootstrap,
                seed=max(run.seed, 0),
                convention=cfg.convention,
            )
            for metric, (lo, hi) in ci.items():
                row[f"{metric}_ci_lo"], row[f"{metric}_ci_hi"] = lo, hi
        per_set.append(row)
    return per_set + _aggregate_rows(per_set, base)


def _fsood_rows(cfg: BenchmarkConfig, run: RunScores) -> list[dict[str, Any]]:
    """Full-spectrum rows (``--fsood``): each scorer's metrics on every OOD set that is not
    covariate, with ID test and the covariate-shifted ID sets together as ID (OpenOOD's
    FS-OOD), and the near / far / mean rows."""
    covariate = [o.name for o in cfg.ood if o.group == "covariate"]
    correct = [run.outputs[name].correct() for name in covariate]
    out = []
    for spec, scores in run.scores.items():
        base = {"backbone": run.backbone, "seed": run.seed, "scorer": spec}
        per_set = [
            {
                **base,
                "ood": o.name,
                "group": o.group,
                **full_spectrum_metrics(
                    scores["id"],
                    [scores[name] for name in covariate],
                    scores[o.name],
                    convention=cfg.convention,
                    id_correct=run.id_correct,
                    covariate_correct=correct,
                ),
            }
            for o in cfg.ood
            if o.group != "covariate"
        ]
        out += per_set + _aggregate_rows(per_set, base)
    return out


def _aggregate_rows(per_set: list[dict[str, Any]], base: dict[str, Any]) -> list[dict[str, Any]]:
    """near / far / mean rows: the unweighted mean of the per-set metrics (OpenOOD's way)."""
    out = []
    # bootstrap bounds are per set: the mean of bounds is no interval of the mean
    numeric = [
        k
        for k, v in per_set[0].items()
        if isinstance(v, float) and k not in base and not k.endswith(("_ci_lo", "_ci_hi"))
    ]
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


def _attention(plan: _Plan, model, transform, sources, run: RunScores, mcfg, progress=False):
    from ..diagnose import attention_analysis

    cfg = plan.cfg
    scored = list(run.scores)
    if not scored:
        raise ValueError("The attention analysis needs a scorer, but every scorer failed.")
    name = cfg.attention_scorer or ("logit_kde" if "logit_kde" in scored else scored[0])
    if name not in run.scores:
        raise ValueError(f"attention_scorer {name!r} failed in this run; see the failures.")
    scores = run.scores[name]
    threshold = run.thresholds[name]
    res = attention_analysis(
        model,
        transform,
        sources,
        run.outputs,
        scores["id"],
        {o.name: scores[o.name] for o in cfg.ood},
        threshold,
        mcfg.class_names or sources["id_train"].classes,
        max_per_set=cfg.attention_samples,
        device=plan.device,
        layer=cfg.attention_layer,
        scorer=run.fitted[name][0],
        progress=progress,
    )
    res.tests = {"scorer": name, "threshold": threshold, **res.tests}
    return res


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


def _plugins() -> dict[str, Any]:
    """Installed plugin distributions with their versions, and the plugins that failed."""
    import importlib.metadata as md

    plugins, failed = plugin_report()
    dists: dict[str, str | None] = {}
    for p in plugins:
        version = None
        with contextlib.suppress(md.PackageNotFoundError, ValueError):
            version = md.version(p.distribution)
        dists[p.distribution] = version
    return {
        "distributions": dists,
        "failed": [
            {"plugin": f.plugin, "distribution": f.distribution, "stage": f.stage, "error": f.error}
            for f in failed
        ],
    }
