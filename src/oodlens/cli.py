"""The ``oodlens`` command line: argument parsing and printing only; the work is done by the
library (:mod:`oodlens.bench`, :mod:`oodlens.diagnose`, :mod:`oodlens.train`)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from . import registry
from .bench.config import BenchmarkConfig, load_config, parse_ood_spec
from .bench.report import to_markdown
from .bench.result import DEFAULT_FORMATS, REPORT_FORMATS
from .distributed import barrier, init_from_env, rank_and_world, shutdown
from .errors import PluginError
from .metrics import CONVENTIONS
from .options import FEATURE_DTYPES, PRECISIONS, PREPROCESS_MODES, ExtractOptions
from .train import TrainConfig

__all__ = ["main", "build_parser"]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([line.rstrip(), sep, *body])


def _cmd_scorers(args: argparse.Namespace) -> int:
    """The scorers grouped by distribution (oodlens's own first), with what each needs."""
    names = set(registry.list_scorers(args.pattern))
    entries = [e for e in registry.list_entries("scorer") if e.name in names]
    entries.sort(key=lambda e: (e.distribution != "oodlens", e.distribution, e.name))
    rows = []
    for e in entries:
        scorer = registry.create_scorer(e.name)
        needs = ", ".join(sorted(scorer.requirements()))
        explainable = "yes" if scorer.differentiable else "no"
        rows.append((e.name, e.distribution, needs, explainable, e.description))
    print(_table(("name", "distribution", "needs", "explainable", "description"), rows))
    groups = {e.distribution for e in entries}
    print(
        f"\n{len(entries)} scorers from {len(groups)} distribution(s); 'model' = model-aware; "
        "'explainable' = a differentiable score (oodlens explain --target score)."
    )
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    plugins, failures = registry.plugin_report()
    rows = [(p.plugin, p.distribution, ", ".join(p.hooks)) for p in plugins]
    print(_table(("plugin", "distribution", "hooks"), rows))
    if failures:
        print("\nFailed to load:")
        frows = [(f.plugin, f.distribution, f.stage, f.error) for f in failures]
        print(_table(("plugin", "distribution", "stage", "error"), frows))
        if args.verbose:
            for f in failures:
                print(f"\n{f.plugin} ({f.distribution}), {f.stage}:\n{f.details}")
    return 0


def _cmd_protocols(args: argparse.Namespace) -> int:
    """The registered benchmark protocols: family, ID set, OOD sets by group."""
    rows = []
    for e in registry.list_entries("protocol"):
        p = e.obj
        sets = "; ".join(
            f"{g}: {', '.join(s.name for s in p.ood if s.group == g)}"
            for g in dict.fromkeys(s.group for s in p.ood)
        )
        rows.append((e.name, p.family or "-", e.distribution, p.id.name, sets))
    print(_table(("name", "family", "distribution", "id", "ood sets"), rows))
    print(
        "\nUse: oodlens bench --protocol NAME --data-root DIR (sets are looked up under DIR; "
        "a missing one is listed with where to put it)."
    )
    return 0


def _cmd_cache_verify(args: argparse.Namespace) -> int:
    """Verify every cached outputs entry's checksums; with ``--repair`` remove the damaged."""
    from .cache import Cache

    cache = Cache(args.cache_dir)
    stale = cache.remove_stale_temporaries() if args.repair else []
    damaged = cache.verify(repair=args.repair)
    for path, problem in damaged:
        print(f"damaged: {path.name}: {problem}" + (" (removed)" if args.repair else ""))
    for path in stale:
        print(f"removed {path.name}, left by a run that was killed")
    entries = cache.directory / "outputs"
    n = sum(1 for p in entries.iterdir() if not p.name.startswith(".")) if entries.is_dir() else 0
    print(
        f"{cache.directory}: {n + (len(damaged) if args.repair else 0)} outputs entr(ies) "
        f"checked, {len(damaged)} damaged"
        + (
            "; removed: the next run extracts them again."
            if args.repair and damaged
            else "; run again with --repair to remove them."
            if damaged
            else "."
        )
    )
    return 1 if damaged and not args.repair else 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    rows = [(e.name, e.distribution, e.description) for e in registry.list_entries("dataset")]
    rows.append(
        ("PATH", "oodlens", "an image folder (ImageFolder layout, or a flat folder of images)")
    )
    print(_table(("kind", "distribution", "description"), rows))
    print("\nAppend @train or @test for a deterministic split, e.g. digits:0-4@test.")
    return 0


def _extract_options(args: argparse.Namespace) -> ExtractOptions:
    """The :class:`ExtractOptions` given on the command line (the others: their defaults)."""
    fields = (*ExtractOptions.ROW_FIELDS, *ExtractOptions.RUN_FIELDS)
    return ExtractOptions(
        **{f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    )


def _bench_config(args: argparse.Namespace) -> BenchmarkConfig:
    """The :class:`BenchmarkConfig` of ``bench`` or ``fit``: a protocol, a config file or
    the defaults, with every option given on the command line over it (``fit`` has only
    the data options: the others are absent from its namespace)."""

    def given(name: str) -> Any:
        return getattr(args, name, None)

    if args.protocol and args.config:
        raise ValueError("Give --protocol or --config, not both.")
    ood = given("ood")
    if args.protocol:
        cfg = BenchmarkConfig.from_protocol(
            args.protocol,
            args.data_root,
            download=args.download,
            strict=args.strict,
            ood=tuple(parse_ood_spec(o) for o in ood or ()),
        )
        ood = None  # merged by name into the protocol's sets
    elif args.config:
        cfg = load_config(args.config, data_root=args.data_root, models_root=args.models_root)
    else:
        cfg = BenchmarkConfig()
    changes: dict[str, Any] = {}
    for opt, field_name in (("model", "models"), ("checkpoint", "checkpoints"), ("id", "id")):
        if given(opt):
            changes[field_name] = given(opt) if opt == "id" else tuple(given(opt))
    for opt, field_name in (("ood", "ood"), ("ood_val", "ood_val")):
        specs = ood if opt == "ood" else given(opt)
        if specs:
            changes[field_name] = tuple(parse_ood_spec(o) for o in specs)
    if given("alpha"):
        changes["alphas"] = tuple(given("alpha"))
    if given("ci") is not None:
        changes["bootstrap"] = given("ci")
    for opt in ("scorers", "seeds"):
        if given(opt):
            changes[opt] = tuple(given(opt))
    for opt in (
        "device",
        "batch_size",
        "img_size",
        "cache_dir",
        "threshold",
        "attention_layer",
        "convention",
        "val_fraction",
        "calib_fraction",
        "fdr",
        "num_workers",
        "precision",
        "features_dtype",
        "preprocess",
        "save_detectors",
    ):
        if given(opt) is not None:
            changes[opt] = given(opt)
    for flag, field_name, value in (
        ("no_cache", "use_cache", False),
        ("skip_corrupt", "skip_corrupt", True),
        ("attention", "attention", True),
        ("pretrained", "pretrained", True),
        ("tune", "tune", True),
        ("channels_last", "channels_last", True),
        ("embed_weights", "embed_weights", True),
    ):
        if given(flag):
            changes[field_name] = value
    if given("epochs") is not None:
        changes["train"] = {**dict(cfg.train), "epochs": given("epochs")}
    return dataclasses.replace(cfg, **changes)


def _check_cache_outside(cfg: BenchmarkConfig, out: str) -> None:
    """Refuse a cache folder inside the report folder: a rerun replaces the report folder."""
    from pathlib import Path

    from .cache import default_cache_dir

    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    report = Path(out).expanduser().resolve()
    if cfg.use_cache and cache.resolve().is_relative_to(report):
        raise ValueError(
            f"--cache-dir {str(cache)!r} is inside --out {out!r}; the report folder is replaced "
            "by each run: put the cache elsewhere."
        )


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import check_report_dir, run_benchmark

    cfg = _bench_config(args)
    # a protocol of OpenOOD's family shows (and writes) OpenOOD's layout unless --format
    # says otherwise
    openood = cfg.protocol is not None and registry.get_protocol(cfg.protocol).family == "openood"
    default = (*DEFAULT_FORMATS, "openood") if openood else DEFAULT_FORMATS
    formats = [f for spec in (args.format or [",".join(default)]) for f in spec.split(",") if f]
    bad = sorted(set(formats) - set(REPORT_FORMATS))
    if bad:
        raise ValueError(f"--format {bad} is not valid; use {', '.join(REPORT_FORMATS)}.")
    if args.out:
        check_report_dir(args.out)
        _check_cache_outside(cfg, args.out)
    if init_from_env():  # under torchrun: sharded extraction, rank 0 reports
        try:
            result = run_benchmark(cfg, progress=not args.quiet and rank_and_world()[0] == 0)
            if rank_and_world()[0] > 0:
                return 0
        finally:
            barrier()
            shutdown()
        return _report(result, args, formats)
    for m in cfg.missing_sets:
        print(
            f"protocol {cfg.protocol}: {m['group']}-OOD set {m['name']!r} not found; skipped "
            f"(put it at {m['put_it_at'][0]}"
            + (f", or use --download for {m['torchvision']}" if m.get("torchvision") else "")
            + "; --strict makes this an error)."
        )
    result = run_benchmark(cfg, progress=not args.quiet)
    return _report(result, args, formats)


def _report(result: Any, args: argparse.Namespace, formats: list[str]) -> int:
    """Print the tables, footnotes, timings, warnings and failures; write the report."""
    print(result.caption())
    if not result.table.empty:
        # the Markdown tables, unless a format given has a terminal view of its own (openood)
        default = REPORT_FORMATS["md"].terminal
        views = [REPORT_FORMATS[f].terminal for f in formats]
        view = next((v for v in views if v not in (None, default)), default)
        print(view(result.summary()))
    for line in result.footnotes():
        print(line)
    t = result.timings
    aware = {k.split(" ", 1)[1]: v for k, v in t.items() if k.startswith("model-aware ")}
    if aware:
        costs = ", ".join(f"{k} {v:.1f}s" for k, v in aware.items())
        where = f"extraction {t['extract']:.1f}s" if t["extract"] else "outputs were cached"
        print(f"model-aware scorers, their own passes over the images: {costs} ({where})")
    print(
        f"train {t['train']:.1f}s, extract {t['extract']:.1f}s ({result.info['cache_hits']} cached, "
        f"{result.info['cache_misses']} extracted), fit {t['fit']:.2f}s, score {t['score']:.2f}s. "
        "Values in %; best per column in bold; higher score = more in-distribution."
    )
    for message in result.info.get("warnings", []):
        print(f"warning: {message}")
    detectors = result.info.get("detectors", [])
    if detectors:
        print(
            f"saved {len(detectors)} detector(s) in {result.config.save_detectors}/ "
            "(use them with oodlens detect)"
        )
    if result.failures:
        print(
            f"\n{len(result.failures)} scorer run(s) failed; the other scorers' results are kept:"
        )
        for f in result.failures:
            print(
                f"  {f.scorer} (distribution {f.distribution}, {f.backbone} seed {f.seed}) "
                f"failed at {f.stage}: {f.error}"
            )
    if args.out:
        out = result.save(args.out, formats=formats, plots=not args.no_plots)
        print(f"wrote {out}/ (results.json, tables, plots)")
    return 1 if result.failures else 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .cache import Cache
    from .diagnose import explain_images, save_maps
    from .files import check_new_or_owned_file, owns_file, record_written
    from .plots import FIGURE_FORMATS, plot_explanations

    out = Path(args.out)
    suffix = out.suffix.lower().lstrip(".")
    if suffix and suffix not in FIGURE_FORMATS:
        raise ValueError(
            f"--out {args.out!r}: a figure needs one of the suffixes "
            f"{', '.join('.' + f for f in FIGURE_FORMATS)} (none: .png)."
        )
    out = out if suffix else out.with_name(out.name + ".png")
    written = [out] + ([Path(args.save_maps)] if args.save_maps else [])
    for path in written:  # before any work: never replace a file oodlens did not write
        owned = args.overwrite or owns_file(path)
        check_new_or_owned_file(path, "explain output", owned=owned, flag="--overwrite")
    if args.save_maps and Path(args.save_maps).suffix != ".npz":
        raise ValueError(f"--save-maps {args.save_maps!r}: give a .npz file name.")
    exp = explain_images(
        args.images,
        args.model,
        checkpoint=args.checkpoint,
        pretrained=args.pretrained,
        scorers=args.scorers,
        train=args.train,
        layer=args.layer,
        cache=Cache(args.cache_dir),
        progress=not args.quiet,
        calib=args.calib,
        options=_extract_options(args),
        target=args.target,
        explainer=args.explainer,
        sign=args.sign,
        n_steps=args.steps,
        detector=args.detector,
    )
    path = plot_explanations(exp, out, columns=args.columns)
    record_written(path)
    if args.save_maps:
        save_maps(exp, args.save_maps)
        record_written(args.save_maps)
    for k, sid in enumerate(exp.ids):
        vals = "  ".join(
            f"{n}={v[k]:.4g}"
            + (
                ""
                if n not in exp.verdicts
                else " (accepted)"
                if exp.verdicts[n][k]
                else " (REJECTED)"
            )
            for n, v in exp.scores.items()
        )
        print(
            f"{sid}: {exp.class_names[exp.predictions[k]]} p={exp.softmax[k]:.3f}  {vals}  "
            f"area@0.5={exp.area[k]:.2f}"
        )
    for name, areas in exp.score_areas.items():
        print(f"score maps of {name}: area@0.5 " + ", ".join(f"{a:.2f}" for a in areas))
    print(f"wrote {path}" + (f" and {args.save_maps}" if args.save_maps else ""))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train_model

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    from .extract import default_num_workers

    workers = args.num_workers if args.num_workers is not None else default_num_workers()
    path, summary = train_model(
        cfg, args.out, device=args.device, num_workers=workers, progress=not args.quiet
    )
    print(
        f"saved {path}: test accuracy {summary['test_accuracy']:.4f} on {summary['n_test']} images "
        f"({summary['n_train']} training images, {summary['train_seconds']:.0f}s on {summary['device']})"
    )
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from .bench import fit_detector
    from .files import check_new_or_owned_file, owns_file

    out = check_new_or_owned_file(
        args.out, "--out", owned=args.overwrite or owns_file(args.out), flag="--overwrite"
    )
    cfg = dataclasses.replace(
        _bench_config(args),
        ood=(),
        scorers=(args.scorer,),
        alphas=() if args.threshold is not None else (args.detector_alpha,),
        threshold=args.threshold,
    )
    det = fit_detector(cfg, progress=not args.quiet)
    from .files import record_written

    det.save(out, half=args.half)
    record_written(out)
    decide = f"alpha {det.alpha:g}" if det.alpha is not None else f"threshold {det.threshold:g}"
    print(
        f"saved {out}: {det.spec} on {det.backbone.model} ({len(det.calib_scores)} calibration "
        f"images, {decide}); use it with: oodlens detect {out} IMAGES..."
    )
    return 0


def _cmd_detect(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .detector import Detector, image_source
    from .files import atomic_path, check_new_or_owned_file, owns_file, record_written

    out = None
    if args.out:
        out = check_new_or_owned_file(
            args.out, "--out", owned=args.overwrite or owns_file(args.out), flag="--overwrite"
        )
    det = Detector.load(args.detector, checkpoint=args.checkpoint, force=args.force)
    source = image_source([Path(p) for p in args.images])
    options = _extract_options(args)
    n = rejected = 0
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(out)) if out else None
        sink = stack.enter_context(open(tmp, "w", newline="")) if tmp else None
        for part in det.predict_stream(source, options, progress=not args.quiet):
            frame = part.to_frame()
            if sink is not None:
                frame.to_csv(sink, index=False, header=n == 0)
            if args.jsonl:
                for record in frame.to_dict(orient="records"):
                    print(json.dumps(record, default=str))
            n += len(part)
            rejected += int(part.rejected.sum())
        if sink is not None:
            sink.close()
    if out:
        record_written(out)
    decide = f"alpha {det.alpha:g}" if det.alpha is not None else f"threshold {det.threshold:g}"
    summary = (
        f"{n} image(s), {rejected} rejected ({rejected / max(n, 1):.1%}) by {det.spec} at "
        f"{decide}"
        + (f"; wrote {out}" if out else "")
        + (" (checkpoint forced: see the weights_sha256 column)" if det.forced else "")
    )
    print(summary, file=sys.stderr if args.jsonl else sys.stdout)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .bench.compare import compare_scorers

    table = compare_scorers(args.run, args.scorers[0], args.scorers[1], args.resamples)
    a, b = args.scorers
    print(f"Paired bootstrap ({args.resamples} resamples of the same rows): AUROC of {a} - {b}.")
    print(
        _table(
            list(table.columns), [[str(v) for v in row] for row in table.itertuples(index=False)]
        )
    )
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .bench.compare import merge_runs
    from .files import atomic_path, check_new_or_owned_file, owns_file, record_written

    files = [Path(args.out) / name for name in ("merged.csv", "merged.md")] if args.out else []
    for path in files:  # before any work: never replace a file oodlens did not write
        owned = args.overwrite or owns_file(path)
        check_new_or_owned_file(path, "merge --out", owned=owned, flag="--overwrite")
    summary = merge_runs(args.runs)
    print(REPORT_FORMATS["md"].terminal(summary))
    for path in files:
        with atomic_path(path) as tmp:
            if path.suffix == ".csv":
                summary.to_csv(tmp, index=False)
            else:
                tmp.write_text(to_markdown(summary))
        record_written(path)
    if files:
        print(f"wrote {files[0].parent}/merged.md and merged.csv")
    return 0


def _train_arguments(p: argparse.ArgumentParser) -> None:
    """``oodlens train`` options, their defaults taken from :class:`TrainConfig`."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    p.add_argument("--model", default=defaults["model"], help="timm model name")
    p.add_argument(
        "--data",
        default=defaults["data"],
        help="ID dataset spec; its @train split is used, @test is evaluated",
    )
    p.add_argument(
        "--out", required=True, help="checkpoint file to write (safetensors, whatever the suffix)"
    )
    for name, kind, text in (
        ("img_size", int, "input size"),
        ("epochs", int, "passes over the training split"),
        ("batch_size", int, "images per step"),
        ("lr", float, "AdamW peak learning rate"),
        ("weight_decay", float, "AdamW weight decay"),
        ("seed", int, "seed of torch, numpy and the data order"),
    ):
        flag = "--" + name.replace("_", "-")
        p.add_argument(
            flag, type=kind, default=defaults[name], help=f"{text} (default {defaults[name]})"
        )
    p.add_argument(
        "--pretrained", action="store_true", help="start from timm pretrained weights (internet)"
    )
    p.add_argument(
        "--no-hflip",
        dest="hflip",
        action="store_false",
        default=defaults["hflip"],
        help="no horizontal flips (e.g. for digits)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="DataLoader workers (default: from the CPU count; 0 with 2 cores or fewer)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=defaults["precision"],
        help="autocast precision of training (fp16 with gradient scaling; default fp32)",
    )
    p.add_argument(
        "--channels-last", action="store_true", help="train in channels-last memory format"
    )


def _loading_arguments(p: argparse.ArgumentParser) -> None:
    """Data loading and precision options shared by bench and explain."""
    p.add_argument(
        "--num-workers",
        type=int,
        help="DataLoader workers (default: from the CPU count; 0 with 2 cores or fewer)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="extraction precision (autocast; recorded in the cache key and results.json)",
    )
    p.add_argument(
        "--channels-last", action="store_true", help="extract in channels-last memory format"
    )
    p.add_argument(
        "--preprocess",
        choices=PREPROCESS_MODES,
        help="resize per image with PIL on the workers, or in batches on the device "
        "(normalised in batches on the device either way; default auto: device on CUDA, "
        "else pil; recorded in the cache key)",
    )


def _data_arguments(p: argparse.ArgumentParser) -> None:
    """Where the data, the network and the cache come from: the options ``bench`` and
    ``fit`` share."""
    p.add_argument("--config", help="YAML or TOML benchmark config (options below override it)")
    p.add_argument(
        "--protocol",
        help="a benchmark preset: OpenOOD v1.5's cifar10, cifar100, imagenet200, imagenet1k "
        "(sets found under --data-root; --ood adds sets or replaces those of the same name)",
    )
    p.add_argument(
        "--strict", action="store_true", help="with --protocol: a missing set is an error"
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="with --protocol: fetch sets not under --data-root from torchvision (internet)",
    )
    p.add_argument(
        "--data-root",
        help="where --protocol finds its sets; replaces {data_root} in --config "
        "(default $OODLENS_DATA_ROOT)",
    )
    p.add_argument(
        "--models-root",
        help="replaces {models_root} in --config (default $OODLENS_MODELS_ROOT, else the "
        "models folder beside --data-root)",
    )
    p.add_argument(
        "--model",
        action="append",
        help="timm model name (repeatable: one per --checkpoint, or one for them all)",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        metavar="[NAME=]PATH",
        help="checkpoint (safetensors or state dict; repeatable); NAME labels its rows, and "
        "several checkpoints under one NAME are seeds of one network (mean ± std); unnamed "
        "checkpoints of one model are separate rows",
    )
    p.add_argument("--id", help="ID dataset spec, e.g. digits:0-4 or a folder (@train/@test split)")
    p.add_argument("--seeds", nargs="+", type=int, help="training seeds (models trained here)")
    p.add_argument("--epochs", type=int, help="training epochs (models trained here)")
    p.add_argument(
        "--pretrained", action="store_true", help="use timm pretrained weights (needs the internet)"
    )
    p.add_argument("--device", help="cpu, cuda, mps or auto")
    _loading_arguments(p)
    p.add_argument(
        "--features-dtype",
        choices=FEATURE_DTYPES,
        help="storage of the cached features (float16: half the disk and memory)",
    )
    p.add_argument("--batch-size", type=int)
    p.add_argument("--img-size", type=int)
    p.add_argument(
        "--val-fraction",
        type=float,
        help="share of held-out ID data for the val split (tuning; default 0.1)",
    )
    p.add_argument(
        "--calib-fraction",
        type=float,
        help="share of held-out ID data for the calib split (operating threshold; default 0.1)",
    )
    p.add_argument(
        "--cache-dir", help="cache folder (default $OODLENS_CACHE_DIR or ~/.cache/oodlens)"
    )
    p.add_argument(
        "--no-cache", action="store_true", help="extract (and train) again; store nothing"
    )
    p.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="skip unreadable images (listed in results.json)",
    )


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    _data_arguments(p)
    p.add_argument(
        "--ood",
        action="append",
        metavar="[GROUP:]NAME=SPEC",
        help="OOD set (repeatable); GROUP near/far/covariate/other, e.g. far=path/to/folder",
    )
    p.add_argument(
        "--scorers",
        nargs="+",
        metavar="SCORER",
        help="scorers, e.g. msp 'logit_kde:mode=class_conditional'; 'all' = every installed "
        "output-based scorer, 'all+model' adds the model-aware ones (odin, ... : own passes "
        "over the images) (default: all+model plus logit_kde:mode=class_conditional)",
    )
    p.add_argument("--threshold", type=float, help="extra fixed operating threshold (e.g. 0.04)")
    p.add_argument(
        "--convention",
        choices=CONVENTIONS,
        help="metric definitions: oodlens (default) or openood (OpenOOD v1.5's evaluator)",
    )
    p.add_argument(
        "--ood-val",
        action="append",
        metavar="[GROUP:]NAME=SPEC",
        help="OOD validation set for --tune (repeatable); never one of the test sets",
    )
    p.add_argument(
        "--alpha",
        type=float,
        nargs="+",
        help="conformal levels (e.g. 0.05 0.01): realised ID false-rejection rate and OOD power "
        "of split-conformal p-values calibrated on the calib split",
    )
    p.add_argument(
        "--ci",
        type=int,
        nargs="?",
        const=1000,
        metavar="N",
        help="bootstrap 95%% intervals of auroc, fpr95, aupr_in/out per scorer and OOD set "
        "(N resamples of ID and OOD rows, seeded; default 1000); tables print mean ± half-width",
    )
    p.add_argument(
        "--fdr",
        type=float,
        help="Benjamini-Hochberg level on batches of ID test + each OOD set: realised FDR, power",
    )
    p.add_argument(
        "--tune",
        action="store_true",
        help="search each scorer's grid (declared, or k=1|10|50 in its spec) on ID val + OOD val",
    )
    p.add_argument(
        "--format",
        action="append",
        help="table formats, comma-separated or repeated (default "
        f"{','.join(DEFAULT_FORMATS)}; json is always written): "
        + "; ".join(f"{f.name}: {f.description}" for f in REPORT_FORMATS.values())
        + ". The terminal shows the Markdown tables, or OpenOOD's layout when openood is given",
    )
    p.add_argument(
        "--out", help="write tables, plots and results.json to this folder (new, empty or a report)"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the figures in --out")
    p.add_argument(
        "--attention",
        action="store_true",
        help="measure Grad-CAM attention areas per group (ID correct/wrong, OOD)",
    )
    p.add_argument("--attention-layer", help="Grad-CAM layer for --attention (default: automatic)")
    p.add_argument(
        "--save-detectors",
        metavar="DIR",
        help="save one detector per scorer and network into DIR (files named by backbone, seed "
        "and spec), from the run's own fitted scorers, deciding at the first --alpha (else "
        "0.05) or at --threshold; use them with oodlens detect",
    )
    _detector_arguments(p)


def _detector_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--embed-weights",
        action="store_true",
        help="store the network's weights in the detector file (always done for a network the "
        "run trained itself); else only the checkpoint's sha256 and path",
    )


def _explain_arguments(p: argparse.ArgumentParser) -> None:
    from .diagnose import EXPLAINERS
    from .explainers.gradcam import SIGNS

    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--model", help="timm model name (not needed with --detector)")
    p.add_argument("--checkpoint", help="checkpoint (safetensors or state dict)")
    p.add_argument("--pretrained", action="store_true", help="timm pretrained weights (internet)")
    p.add_argument(
        "--scorers",
        nargs="*",
        default=["msp", "logit_kde"],
        help="scores to show (fitted on --train)",
    )
    p.add_argument(
        "--train", help="ID training spec to fit the scorers (default: from the checkpoint)"
    )
    p.add_argument(
        "--calib",
        help="held-out ID images (a spec the scorers were not fitted on): show each image's "
        "conformal p-value per scorer",
    )
    p.add_argument(
        "--detector",
        help="a saved detector (oodlens fit): its network, scorer, p-values and verdicts",
    )
    p.add_argument(
        "--target",
        choices=("class", "score"),
        default="class",
        help="what the maps explain: the predicted class (default), or also each scorer's "
        "score (a map per scorer beside the class map)",
    )
    p.add_argument(
        "--explainer",
        choices=EXPLAINERS,
        default="gradcam",
        help="gradcam (a layer's map, upsampled; default) or integrated_gradients (pixels)",
    )
    p.add_argument(
        "--sign",
        choices=SIGNS,
        default="foreign",
        help="score maps show what lowers the score (foreign, default) or raises it",
    )
    p.add_argument(
        "--steps", type=int, default=32, help="integration steps of integrated_gradients"
    )
    p.add_argument("--layer", help="Grad-CAM target layer (default: automatic)")
    p.add_argument("--img-size", type=int)
    p.add_argument("--device", default="cpu")
    _loading_arguments(p)
    p.add_argument("--cache-dir", help="cache folder for the training outputs")
    p.add_argument("--columns", type=int, default=6)
    p.add_argument("--out", default="explain.png", help="figure to write (.png, .pdf, .svg, ...)")
    p.add_argument(
        "--save-maps",
        metavar="FILE.npz",
        help="also write the maps (raw, float, (N, H, W) at the model's input size) and the "
        "image ids, for others to evaluate",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if oodlens did not write it (by default such a file is kept)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``oodlens`` command."""
    parser = argparse.ArgumentParser(
        prog="oodlens", description="OOD detection and explanation for image classifiers."
    )
    # the same flags before or after the command; after it, they only override when given
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for p in (parser, common):
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        p.add_argument(
            "-v", "--verbose", action="store_true", help="full tracebacks and plugin details"
        )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("scorers", help="list the installed scorers", parents=[common])
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. '*kde*'")
    p.set_defaults(func=_cmd_scorers)
    p = sub.add_parser("plugins", help="list installed plugins and load failures", parents=[common])
    p.set_defaults(func=_cmd_plugins)
    p = sub.add_parser("datasets", help="list dataset kinds usable as specs", parents=[common])
    p.set_defaults(func=_cmd_datasets)
    p = sub.add_parser(
        "protocols", help="list benchmark protocols usable with --protocol", parents=[common]
    )
    p.set_defaults(func=_cmd_protocols)
    p = sub.add_parser("cache", help="check the outputs cache", parents=[common])
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser(
        "verify",
        help="verify the checksums of every cached outputs entry",
        description="Read every cached outputs entry and compare each file with the size and "
        "checksum recorded when it was written. Exit status 1 when an entry is damaged (0 "
        "with --repair, which removes it: the next run extracts it again).",
        parents=[common],
    )
    p.add_argument(
        "--cache-dir", help="cache folder (default $OODLENS_CACHE_DIR or ~/.cache/oodlens)"
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="remove damaged entries (and temporaries of killed runs)",
    )
    p.set_defaults(func=_cmd_cache_verify)
    p = sub.add_parser(
        "bench",
        help="run a benchmark (no arguments: the embedded digits demo)",
        description="Fit every scorer on ID train outputs, score ID test and OOD sets, print the "
        "table. Exit status 1 when a scorer failed (its failure is printed; the others' results "
        "are kept and written).",
        parents=[common],
    )
    _bench_arguments(p)
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser(
        "explain",
        help="Grad-CAM overlays with predictions and scores, as a figure",
        parents=[common],
    )
    _explain_arguments(p)
    p.set_defaults(func=_cmd_explain)
    p = sub.add_parser(
        "fit",
        help="fit one scorer on one network and calibrate it: a detector file for oodlens detect",
        description="Fit a scorer on the ID training outputs of a network and calibrate it on the "
        "held-out calib split, exactly as oodlens bench does (same splits, training and cache), "
        "and save the result as one detector file.",
        parents=[common],
    )
    _data_arguments(p)
    p.add_argument("--scorer", required=True, help="the scorer spec, e.g. knn or knn:k=10")
    p.add_argument(
        "--alpha",
        dest="detector_alpha",
        type=float,
        default=0.05,
        help="conformal level: reject when the p-value is at most alpha; at most alpha of "
        "in-distribution images are rejected on average (default 0.05)",
    )
    p.add_argument(
        "--threshold", type=float, help="reject below this fixed score instead of by alpha"
    )
    p.add_argument("--out", required=True, help="the detector file to write, e.g. knn.oodlens")
    _detector_arguments(p)
    p.add_argument(
        "--half",
        action="store_true",
        help="store the scorer's large state (KNN's bank) as float16: half the size",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out even if oodlens did not write it"
    )
    p.set_defaults(func=_cmd_fit)
    p = sub.add_parser(
        "detect",
        help="verdicts for new images from a detector file (accept / reject, with p-values)",
        description="Score images with a saved detector: per image the predicted class, its "
        "probability, the score, the conformal p-value and the verdict. Prints one summary "
        "line; exit status 0.",
        parents=[common],
    )
    p.add_argument("detector", help="a detector file written by oodlens fit or --save-detectors")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", help="CSV file of the verdicts (one row per image)")
    p.add_argument("--jsonl", action="store_true", help="print one JSON line per image")
    p.add_argument(
        "--checkpoint", help="the network's weights (default: the path the detector records)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="accept a checkpoint whose sha256 differs from the recorded one (recorded in "
        "every verdict)",
    )
    p.add_argument("--device", help="cpu, cuda, mps or auto (default cpu)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 256)")
    _loading_arguments(p)
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out even if oodlens did not write it"
    )
    p.set_defaults(func=_cmd_detect)
    p = sub.add_parser(
        "compare",
        help="paired test of two scorers' AUROC on the same rows of a report folder",
        parents=[common],
    )
    p.add_argument("run", help="a report folder written by oodlens bench --out")
    p.add_argument("--scorers", nargs=2, required=True, metavar=("A", "B"))
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.set_defaults(func=_cmd_compare)
    p = sub.add_parser(
        "merge",
        help="join report folders (e.g. of several backbones) into one table",
        parents=[common],
    )
    p.add_argument("runs", nargs="+", help="report folders written by oodlens bench --out")
    p.add_argument("--out", help="folder for merged.md and merged.csv")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace merged.md/merged.csv even if oodlens did not write them",
    )
    p.set_defaults(func=_cmd_merge)
    p = sub.add_parser(
        "train", help="train or fine-tune a timm model on a dataset spec", parents=[common]
    )
    _train_arguments(p)
    p.set_defaults(func=_cmd_train)
    return parser


def _show_warning(verbose: bool):
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"oodlens: warning: {message}", file=sys.stderr)
        failure = getattr(message, "failure", None)
        if verbose and failure is not None:
            print(failure.details, file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 a scorer failed, 2 an error)."""
    import logging

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="oodlens: %(levelname)s: %(message)s")
    with warnings.catch_warnings():
        warnings.simplefilter("always", registry.PluginLoadWarning)
        warnings.showwarning = _show_warning(args.verbose)
        try:
            return int(args.func(args))
        except KeyboardInterrupt:
            print("oodlens: interrupted", file=sys.stderr)
            return 130
        except (
            ValueError,
            KeyError,
            TypeError,
            OSError,
            RuntimeError,
            ImportError,
            PluginError,
        ) as exc:
            if args.verbose:
                traceback.print_exc()
            text = str(exc).split("\n", 1)[0] if isinstance(exc, OSError) else str(exc)
            print(f"oodlens: error: {text}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
