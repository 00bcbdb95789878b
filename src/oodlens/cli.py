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
from .bench.config import (
    BenchmarkConfig,
    checkpoint_defaults,
    load_config,
    parse_ood_spec,
    read_config,
)
from .bench.published import published_markdown
from .bench.report import to_markdown
from .bench.result import DEFAULT_FORMATS, FSOOD_CAPTION, REPORT_FORMATS, fsood_markdown
from .distributed import barrier, init_from_env, rank_and_world, shutdown
from .errors import PluginError
from .metrics import CONVENTIONS
from .options import DECODE_MODES, FEATURE_DTYPES, PRECISIONS, PREPROCESS_MODES, ExtractOptions
from .train import RECIPES, TrainConfig

__all__ = ["main", "build_parser"]


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 scorer"``, ``"2 scorers"``."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


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
        f"\n{_count(len(entries), 'scorer')} from {_count(len(groups), 'distribution')}; "
        "'model' = model-aware; "
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
        f"{cache.directory}: "
        f"{_count(n + (len(damaged) if args.repair else 0), 'outputs entry', 'outputs entries')} "
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
    the data options: the others are absent from its namespace), and what the checkpoints
    record (model, input size, ID data) for the fields neither sets (printed)."""

    def given(name: str) -> Any:
        return getattr(args, name, None)

    if args.protocol and args.config:
        raise ValueError("Give --protocol or --config, not both.")
    ood = given("ood")
    explicit: set[str] = set()  # fields the user set (a checkpoint does not override them)
    if args.protocol:
        cfg = BenchmarkConfig.from_protocol(
            args.protocol,
            args.data_root,
            download=args.download,
            strict=args.strict,
            fsood=bool(given("fsood")),
            ood=tuple(parse_ood_spec(o) for o in ood or ()),
        )
        ood = None  # merged by name into the protocol's sets
        explicit.add("id")
    elif args.config:
        cfg = load_config(args.config, data_root=args.data_root, models_root=args.models_root)
        explicit.update(read_config(args.config, args.data_root, args.models_root))
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
    for opt in ("scorers", "seeds", "stages", "gram_stages"):
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
        "decode",
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
        ("fsood", "fsood", True),
    ):
        if given(flag):
            changes[field_name] = value
    if given("epochs") is not None:
        changes["train"] = {**dict(cfg.train), "epochs": given("epochs")}
    if given("override_checkpoint"):
        changes["override_checkpoint"] = True
    if given("compare_published") is not None:
        changes["compare_published"] = given("compare_published")
    # options that are OpenOOD's settings imply OpenOOD's metric definitions
    for opt, flag, what in (
        ("compare_published", "--compare-published", "compares with OpenOOD's numbers"),
        ("fsood", "--fsood", "is OpenOOD's full-spectrum setting"),
    ):
        if given(opt) in (None, False):  # not given ("" is compare-published's default network)
            continue
        if given("convention") not in (None, "openood"):
            raise ValueError(
                f"{flag} {what}, under OpenOOD's metric definitions; drop --convention "
                f"{given('convention')}."
            )
        changes["convention"] = "openood"
    cfg, taken = checkpoint_defaults(dataclasses.replace(cfg, **changes), explicit | set(changes))
    if taken:
        print(
            "from the checkpoint: "
            + ", ".join(f"{k.rstrip('s')} {_text(v)}" for k, v in taken.items())
        )
    return cfg


def _text(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


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
    if not args.out:
        args.out = _new_run_dir(cfg, args)
    print(f"results will be saved in {args.out}/")
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


def _new_run_dir(cfg: BenchmarkConfig, args: argparse.Namespace) -> str:
    """``runs/<date-time>-<name>``: where a run without ``--out`` is saved (the name: the
    protocol, the config file, else the models and the ID set); ``$OODLENS_RUNS_DIR``
    replaces ``runs``."""
    import os
    import re
    import time
    from pathlib import Path

    if cfg.protocol:
        name = cfg.protocol
    elif args.config:
        name = Path(args.config).stem
    else:
        body = cfg.id.split("@", 1)[0].rstrip("/")
        name = "-".join([*dict.fromkeys(cfg.models), Path(body).name or body])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") or "run"
    base = str(Path(os.environ.get("OODLENS_RUNS_DIR", "runs")) / f"{stamp}-{slug}")
    path, n = base, 1
    while Path(path).exists():  # two runs started in the same second
        n += 1
        path = f"{base}-{n}"
    return path


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
    side = result.fsood_summary()
    if side is not None:
        print(f"\n{FSOOD_CAPTION}\n")
        print(fsood_markdown(side))
    published = result.info.get("published")
    if published is not None:
        print(
            f"\nBeside the published results ({published['protocol']}, {published['network']}), "
            "AUROC in %:\n"
        )
        print(published_markdown(published))
        if "fsood" in published:
            print("Full-spectrum (FS-OOD) beside the published:\n")
            print(published_markdown(published["fsood"]))
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
    for message in dict.fromkeys(result.info.get("warnings", [])):
        print(f"warning: {message}")
    detectors = result.info.get("detectors", [])
    if detectors:
        print(
            f"saved {_count(len(detectors), 'detector')} in {result.config.save_detectors}/ "
            "(use them with oodlens detect)"
        )
    if result.failures:
        print(
            f"\n{_count(len(result.failures), 'scorer run')} failed; the other scorers' results "
            "are kept:"
        )
        for f in result.failures:
            print(
                f"  {f.scorer} (distribution {f.distribution}, {f.backbone} seed {f.seed}) "
                f"failed at {f.stage}: {f.error}"
            )
    out = result.save(args.out, formats=formats, plots=not args.no_plots)
    print(f"results saved in {out}/ (results.json, tables, plots)")
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
        override_checkpoint=args.override_checkpoint,
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

    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"recipe"}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    # a recipe sets the model, size, epochs, batch, lr and weight decay; options given win
    cfg = TrainConfig.from_recipe(args.recipe, **given) if args.recipe else TrainConfig(**given)
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
        f"{_count(n, 'image')}, {rejected} rejected ({rejected / max(n, 1):.1%}) by {det.spec} at "
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
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="a published training recipe: "
        + "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values())
        + " (default: none, oodlens's AdamW recipe; options given on the command line replace "
        "the recipe's)",
    )
    p.add_argument("--model", help=f"timm model name (default {defaults['model']})")
    p.add_argument(
        "--data",
        default=defaults["data"],
        help="ID dataset spec; its @train split is used, @test is evaluated (default "
        f"{defaults['data']})",
    )
    p.add_argument(
        "--out", required=True, help="checkpoint file to write (safetensors, whatever the suffix)"
    )
    for name, kind, text in (
        ("img_size", int, "input size"),
        ("epochs", int, "passes over the training split"),
        ("batch_size", int, "images per step"),
        ("lr", float, "peak learning rate (AdamW; SGD with a recipe)"),
        ("weight_decay", float, "weight decay"),
        ("seed", int, "seed of torch, numpy and the data order"),
    ):
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=kind, help=f"{text} (default {defaults[name]})")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="start from timm pretrained weights (internet; default: from scratch)",
    )
    p.add_argument(
        "--no-hflip",
        dest="hflip",
        action="store_false",
        default=defaults["hflip"],
        help="no horizontal flips (e.g. for digits; default: random flips)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
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
        "--channels-last",
        action="store_true",
        help="train in channels-last memory format (default: contiguous)",
    )


def _loading_arguments(p: argparse.ArgumentParser, recorded: str = "the cache key") -> None:
    """Data loading and precision options shared by bench, fit, explain and detect;
    ``recorded``: where the command records the precision."""
    p.add_argument(
        "--num-workers",
        type=int,
        help="DataLoader workers (default: from the CPU count; 0 with 2 cores or fewer)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help=f"forward-pass precision (autocast; recorded in {recorded}; default fp32)",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="run in channels-last memory format (default: contiguous)",
    )
    p.add_argument(
        "--preprocess",
        choices=PREPROCESS_MODES,
        help="resize per image with PIL on the workers, or in batches on the device "
        "(normalised in batches on the device either way; default auto: device on CUDA, "
        "else pil)",
    )
    p.add_argument(
        "--decode",
        choices=DECODE_MODES,
        help="decode JPEGs with PIL on the CPU workers, or in batches on the CUDA device "
        "(torchvision's nvJPEG; other formats stay on the CPU; needs --preprocess device or "
        "auto; without CUDA it falls back to cpu; default cpu)",
    )
    p.add_argument(
        "--stages",
        nargs="+",
        type=int,
        metavar="I",
        help="also record the pooled features of these stages of the backbone (indices into "
        "timm's feature_info: for a ResNet 0 is the stem, 1-4 its stages) beside the "
        "penultimate ones, in the cache; the scorers that read stages (multi_mahalanobis) "
        "add theirs without it; default none",
    )
    p.add_argument(
        "--gram-stages",
        nargs="+",
        type=int,
        metavar="I",
        help="also record the Gram-matrix statistics of these stages (what gram reads; it "
        "adds its own without it); default none",
    )


def _data_arguments(p: argparse.ArgumentParser) -> None:
    """Where the data, the network and the cache come from: the options ``bench`` and
    ``fit`` share."""
    p.add_argument(
        "--config",
        help="YAML or TOML benchmark config (options below override it; default: none, the "
        "digits demo's settings)",
    )
    p.add_argument(
        "--protocol",
        help="a benchmark preset: OpenOOD v1.5's cifar10, cifar100, imagenet200, imagenet1k "
        "(sets found under --data-root; --ood adds sets or replaces those of the same name; "
        "default: none)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="with --protocol: a missing set is an error (default: skipped and listed)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="with --protocol: fetch sets not under --data-root from torchvision (internet; "
        "default: off)",
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
        help="timm model name (repeatable: one per --checkpoint, or one for them all; default: "
        "the model an oodlens checkpoint records, else resnet18)",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        metavar="[NAME=]PATH",
        help="checkpoint (safetensors or state dict; repeatable); NAME labels its rows, and "
        "several checkpoints under one NAME are seeds of one network (mean ± std); unnamed "
        "checkpoints of one model are separate rows (default: none: a network is trained here, "
        "or --pretrained)",
    )
    _override_argument(p)
    p.add_argument(
        "--id",
        help="ID dataset spec, e.g. digits:0-4 or a folder with train/ and test/ (default: the "
        "data an oodlens checkpoint was trained on; without a checkpoint, the digits demo)",
    )
    p.add_argument(
        "--seeds", nargs="+", type=int, help="training seeds (models trained here; default 0)"
    )
    p.add_argument("--epochs", type=int, help="training epochs (models trained here; default 10)")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="use timm pretrained weights (needs the internet; default: off)",
    )
    p.add_argument("--device", help="cpu, cuda, mps or auto (default cpu)")
    _loading_arguments(p, "the cache key and results.json")
    p.add_argument(
        "--features-dtype",
        choices=FEATURE_DTYPES,
        help="storage of the cached features (float16: half the disk and memory; default float32)",
    )
    p.add_argument(
        "--batch-size", type=int, help="images per forward pass of the extraction (default 256)"
    )
    p.add_argument(
        "--img-size",
        type=int,
        help="input size (default: the size an oodlens checkpoint records, else the protocol's, "
        "else 32)",
    )
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
        "--no-cache",
        action="store_true",
        help="extract (and train) again; store nothing (default: use the cache)",
    )
    p.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="skip unreadable images (listed in results.json; default: an unreadable image is "
        "an error)",
    )


def _override_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--override-checkpoint",
        action="store_true",
        help="run at --img-size even where the checkpoint records another input size (by "
        "default that is an error)",
    )


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    _data_arguments(p)
    p.add_argument(
        "--ood",
        action="append",
        metavar="[GROUP:]NAME=SPEC",
        help="OOD set (repeatable); GROUP near/far/covariate/other, e.g. far=path/to/folder "
        "(default: the demo's digits 5-9 as near and Gaussian noise as far)",
    )
    p.add_argument(
        "--scorers",
        nargs="+",
        metavar="SCORER",
        help="scorers, e.g. msp 'logit_kde:mode=class_conditional'; 'all' = every installed "
        "output-based scorer, 'all+model' adds the model-aware ones (odin, ... : own passes "
        "over the images, slow on large sets) (default: all plus "
        "logit_kde:mode=class_conditional)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        help="extra fixed operating threshold, e.g. 0.04 (default: none; the operating "
        "threshold accepts 95%% of the calib split)",
    )
    p.add_argument(
        "--convention",
        choices=CONVENTIONS,
        help="metric definitions: oodlens (default) or openood (OpenOOD v1.5's evaluator)",
    )
    p.add_argument(
        "--compare-published",
        nargs="?",
        const="",
        metavar="NETWORK",
        help="with --protocol: put the protocol's published results (OpenOOD v1.5's) beside "
        "ours, with the difference and a flag where it exceeds their std plus our --ci "
        "interval; implies --convention openood (default: off; NETWORK: the published network, "
        "by default the protocol's first, e.g. ResNet18, or ResNet50 for imagenet1k)",
    )
    p.add_argument(
        "--fsood",
        action="store_true",
        help="full-spectrum OOD (OpenOOD's FS-OOD): also report every OOD metric with the "
        "covariate-shifted ID sets (group covariate; a protocol's, e.g. generated CIFAR-10-C "
        "corruptions and CINIC-10 for cifar10) counted as in-distribution, beside the usual "
        "table; implies --convention openood (default: off)",
    )
    p.add_argument(
        "--ood-val",
        action="append",
        metavar="[GROUP:]NAME=SPEC",
        help="OOD validation set for --tune (repeatable); never one of the test sets "
        "(default: none)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        nargs="+",
        help="conformal levels (e.g. 0.05 0.01): realised ID false-rejection rate and OOD power "
        "of split-conformal p-values calibrated on the calib split (default: none)",
    )
    p.add_argument(
        "--ci",
        type=int,
        nargs="?",
        const=1000,
        metavar="N",
        help="bootstrap 95%% intervals of auroc, fpr95, aupr_in/out per scorer and OOD set "
        "(N resamples of ID and OOD rows, seeded; default 1000; without --ci no intervals); "
        "tables print mean ± half-width",
    )
    p.add_argument(
        "--fdr",
        type=float,
        help="Benjamini-Hochberg level on batches of ID test + each OOD set: realised FDR, "
        "power (default: none)",
    )
    p.add_argument(
        "--tune",
        action="store_true",
        help="search each scorer's grid (declared, or k=1|10|50 in its spec) on ID val + OOD "
        "val (default: the spec's values)",
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
        "--out",
        help="write tables, plots and results.json to this folder (new, empty or a report; "
        "default: a new folder runs/<date-time>-<name>, or under $OODLENS_RUNS_DIR)",
    )
    p.add_argument(
        "--no-plots", action="store_true", help="skip the figures in --out (default: drawn)"
    )
    p.add_argument(
        "--attention",
        action="store_true",
        help="measure Grad-CAM attention areas per group (ID correct/wrong, OOD; default: off)",
    )
    p.add_argument("--attention-layer", help="Grad-CAM layer for --attention (default: automatic)")
    p.add_argument(
        "--save-detectors",
        metavar="DIR",
        help="save one detector per scorer and network into DIR (files named by backbone, seed "
        "and spec), from the run's own fitted scorers, deciding at the first --alpha (else "
        "0.05) or at --threshold; use them with oodlens detect (default: none saved)",
    )
    _detector_arguments(p)


def _detector_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--embed-weights",
        action="store_true",
        help="store the network's weights in the detector file (always done for a network the "
        "run trained itself; default: only the checkpoint's sha256 and path)",
    )


def _explain_arguments(p: argparse.ArgumentParser) -> None:
    from .diagnose import EXPLAINERS
    from .explainers.gradcam import SIGNS

    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument(
        "--model",
        help="timm model name (default: the model an oodlens checkpoint or --detector records)",
    )
    p.add_argument(
        "--checkpoint",
        help="checkpoint, safetensors or state dict (default: none: --pretrained or --detector)",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="timm pretrained weights (internet; default: off)",
    )
    p.add_argument(
        "--scorers",
        nargs="*",
        default=["msp", "logit_kde"],
        help="scores to show, fitted on --train (default: msp logit_kde; none: no scores)",
    )
    p.add_argument(
        "--train", help="ID training spec to fit the scorers (default: from the checkpoint)"
    )
    p.add_argument(
        "--calib",
        help="held-out ID images (a spec the scorers were not fitted on): show each image's "
        "conformal p-value per scorer (default: none)",
    )
    p.add_argument(
        "--detector",
        help="a saved detector (oodlens fit): its network, scorer, p-values and verdicts "
        "(default: none)",
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
        "--steps",
        type=int,
        default=32,
        help="integration steps of integrated_gradients (default 32)",
    )
    p.add_argument("--layer", help="Grad-CAM target layer (default: automatic)")
    p.add_argument(
        "--img-size",
        type=int,
        help="input size (default: the checkpoint's recorded size, else the model's default)",
    )
    _override_argument(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    _loading_arguments(p)
    p.add_argument(
        "--cache-dir",
        help="cache folder for the training outputs (default $OODLENS_CACHE_DIR or "
        "~/.cache/oodlens)",
    )
    p.add_argument(
        "--columns", type=int, default=6, help="images per row of the figure (default 6)"
    )
    p.add_argument(
        "--out",
        default="explain.png",
        help="figure to write, .png, .pdf, .svg, ... (default explain.png)",
    )
    p.add_argument(
        "--save-maps",
        metavar="FILE.npz",
        help="also write the maps (raw, float, (N, H, W) at the model's input size) and the "
        "image ids, for others to evaluate (default: none)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if oodlens did not write it (default: such a file is kept)",
    )


#: Examples shown under each command's ``--help`` (the README's and docs' commands).
EXAMPLES: dict[str, str] = {
    "oodlens": """\
  oodlens bench                      the digits demo (trains a small network on the CPU)
  oodlens bench --help               a command's options, with examples
  oodlens --threads 2 bench ...      limit torch's CPU threads""",
    "scorers": """\
  oodlens scorers
  oodlens scorers '*kde*'""",
    "plugins": """\
  oodlens plugins
  oodlens plugins -v                 with the traceback of a plugin that failed to load""",
    "datasets": """\
  oodlens datasets""",
    "protocols": """\
  oodlens protocols""",
    "cache": """\
  oodlens cache verify
  oodlens cache verify --repair --cache-dir /scratch/oodlens-cache""",
    "verify": """\
  oodlens cache verify
  oodlens cache verify --repair --cache-dir /scratch/oodlens-cache""",
    "bench": """\
  oodlens bench                      the digits demo, saved under runs/
  oodlens bench --checkpoint model.safetensors --ood far=path/to/ood_images --out runs/mine
  oodlens bench --protocol cifar10 --data-root ../shared/data \\
      --checkpoint ../shared/models/cifar10_resnet18_64px.safetensors --scorers msp energy knn
  oodlens bench --config benchmarks/configs/cifar10.yaml --data-root ../shared/data \\
      --scorers all+model --alpha 0.05 --ci""",
    "explain": """\
  oodlens explain photos/ --checkpoint model.safetensors --out why.png
  oodlens explain photos/ --checkpoint model.safetensors --scorers knn --target score \\
      --save-maps maps.npz
  oodlens explain photo.jpg --detector knn.oodlens""",
    "fit": """\
  oodlens fit --checkpoint model.safetensors --scorer knn --alpha 0.05 --out knn.oodlens""",
    "detect": """\
  oodlens detect knn.oodlens new_images/ --out verdicts.csv
  oodlens detect knn.oodlens photo.jpg --jsonl""",
    "compare": """\
  oodlens compare runs/demo --scorers logit_kde energy""",
    "merge": """\
  oodlens merge runs/resnet18 runs/vit_small --out runs/merged""",
    "train": """\
  oodlens train --out digits.safetensors --no-hflip
  oodlens train --data path/to/folder --img-size 64 --epochs 30 --out model.safetensors
  oodlens train --recipe openood_cifar --data ../shared/data/cifar10 --device cuda --out r18.safetensors""",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; wraps the rest."""


def _command(sub: Any, name: str, parents: list[argparse.ArgumentParser], **kwargs: Any):
    return sub.add_parser(
        name,
        parents=parents,
        formatter_class=_HelpFormatter,
        epilog="examples:\n" + EXAMPLES[name],
        **kwargs,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``oodlens`` command."""
    from importlib.metadata import version

    parser = argparse.ArgumentParser(
        prog="oodlens",
        description="OOD detection and explanation for image classifiers.",
        formatter_class=_HelpFormatter,
        epilog="examples:\n" + EXAMPLES["oodlens"],
    )
    parser.add_argument("--version", action="version", version=f"oodlens {version('oodlens')}")
    # the same flags before or after the command; after it, they only override when given
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for p in (parser, common):
        p.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            help="no progress bars or progress lines (default: shown)",
        )
        p.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            help="full tracebacks and plugin details (default: one line per error)",
        )
        p.add_argument(
            "--threads",
            type=int,
            metavar="N",
            help="torch's CPU threads (default: torch's, one per core, or $OMP_NUM_THREADS); "
            "give each of several processes on one machine its share of the cores",
        )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = _command(sub, "scorers", [common], help="list the installed scorers")
    p.add_argument(
        "pattern", nargs="?", default=None, help="shell-style filter, e.g. '*kde*' (default: all)"
    )
    p.set_defaults(func=_cmd_scorers)
    p = _command(sub, "plugins", [common], help="list installed plugins and load failures")
    p.set_defaults(func=_cmd_plugins)
    p = _command(sub, "datasets", [common], help="list dataset kinds usable as specs")
    p.set_defaults(func=_cmd_datasets)
    p = _command(sub, "protocols", [common], help="list benchmark protocols usable with --protocol")
    p.set_defaults(func=_cmd_protocols)
    p = _command(sub, "cache", [common], help="check the outputs cache")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _command(
        actions,
        "verify",
        [common],
        help="verify the checksums of every cached outputs entry",
        description="Read every cached outputs entry and compare each file with the size and "
        "checksum recorded when it was written. Exit status 1 when an entry is damaged (0 "
        "with --repair, which removes it: the next run extracts it again).",
    )
    p.add_argument(
        "--cache-dir", help="cache folder (default $OODLENS_CACHE_DIR or ~/.cache/oodlens)"
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="remove damaged entries and temporaries of killed runs (default: only report)",
    )
    p.set_defaults(func=_cmd_cache_verify)
    p = _command(
        sub,
        "bench",
        [common],
        help="run a benchmark (no arguments: the embedded digits demo)",
        description="Fit every scorer on ID train outputs, score ID test and OOD sets, print the "
        "table and save the report (--out, else a new folder under runs/). What an oodlens "
        "checkpoint records (model, input size, ID data) is the default. Exit status 1 when a "
        "scorer failed (its failure is printed; the others' results are kept and written).",
    )
    _bench_arguments(p)
    p.set_defaults(func=_cmd_bench)
    p = _command(
        sub,
        "explain",
        [common],
        help="Grad-CAM or Integrated Gradients maps of the class or of a scorer's score",
        description="Maps of what the network looked at (--target class) or of what made an "
        "image look foreign to a scorer (--target score), with the prediction, the scores and "
        "(with --calib or --detector) the verdicts, as one figure.",
    )
    _explain_arguments(p)
    p.set_defaults(func=_cmd_explain)
    p = _command(
        sub,
        "fit",
        [common],
        help="fit one scorer on one network and calibrate it: a detector file for oodlens detect",
        description="Fit a scorer on the ID training outputs of a network and calibrate it on the "
        "held-out calib split, exactly as oodlens bench does (same splits, training and cache), "
        "and save the result as one detector file.",
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
        "--threshold",
        type=float,
        help="reject below this fixed score instead of by alpha (default: none, by alpha)",
    )
    p.add_argument("--out", required=True, help="the detector file to write, e.g. knn.oodlens")
    _detector_arguments(p)
    p.add_argument(
        "--half",
        action="store_true",
        help="store the scorer's large state (KNN's bank) as float16: half the size (default: "
        "float32)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if oodlens did not write it (default: such a file is kept)",
    )
    p.set_defaults(func=_cmd_fit)
    p = _command(
        sub,
        "detect",
        [common],
        help="verdicts for new images from a detector file (accept / reject, with p-values)",
        description="Score images with a saved detector: per image the predicted class, its "
        "probability, the score, the conformal p-value and the verdict. Prints one summary "
        "line; exit status 0.",
    )
    p.add_argument("detector", help="a detector file written by oodlens fit or --save-detectors")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument(
        "--out", help="CSV file of the verdicts, one row per image (default: none, a summary)"
    )
    p.add_argument(
        "--jsonl", action="store_true", help="print one JSON line per image (default: off)"
    )
    p.add_argument(
        "--checkpoint", help="the network's weights (default: the path the detector records)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="accept a checkpoint whose sha256 differs from the recorded one, recorded in "
        "every verdict (default: refused)",
    )
    p.add_argument("--device", help="cpu, cuda, mps or auto (default cpu)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 256)")
    _loading_arguments(p, "the verdicts")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if oodlens did not write it (default: such a file is kept)",
    )
    p.set_defaults(func=_cmd_detect)
    p = _command(
        sub,
        "compare",
        [common],
        help="paired test of two scorers' AUROC on the same rows of a report folder",
    )
    p.add_argument("run", help="a report folder written by oodlens bench")
    p.add_argument(
        "--scorers", nargs=2, required=True, metavar=("A", "B"), help="the two scorers, A and B"
    )
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.set_defaults(func=_cmd_compare)
    p = _command(
        sub,
        "merge",
        [common],
        help="join report folders (e.g. of several backbones) into one table",
    )
    p.add_argument("runs", nargs="+", help="report folders written by oodlens bench")
    p.add_argument(
        "--out", help="folder for merged.md and merged.csv (default: none, printed only)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace merged.md/merged.csv even if oodlens did not write them (default: kept)",
    )
    p.set_defaults(func=_cmd_merge)
    p = _command(sub, "train", [common], help="train or fine-tune a timm model on a dataset spec")
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
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            print(f"oodlens: error: --threads {args.threads}: give 1 or more.", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
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
