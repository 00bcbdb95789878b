"""The ``oodlens`` command line. The CLI owns the terminal; the library only logs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _registry

__all__ = ["main"]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([line.rstrip(), sep, *body])


def _cmd_scorers(args: argparse.Namespace) -> int:
    entries = [
        e
        for e in _registry.list_entries("scorer")
        if e.name in _registry.list_scorers(args.pattern)
    ]
    rows = [(e.name, e.distribution, ", ".join(e.requires), e.description) for e in entries]
    print(_table(("name", "distribution", "requires", "description"), rows))
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    plugins, failures = _registry.plugin_report()
    rows = [(p.plugin, p.distribution, ", ".join(p.hooks)) for p in plugins]
    print(_table(("plugin", "distribution", "hooks"), rows))
    if failures:
        print("\nFailed to load:")
        frows = [(f.plugin, f.distribution, f.stage, f.error) for f in failures]
        print(_table(("plugin", "distribution", "stage", "error"), frows))
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    entries = _registry.list_entries("dataset")
    rows = [(e.name, e.distribution, e.description) for e in entries]
    rows.append(
        ("PATH", "oodlens", "an image folder (ImageFolder layout, or a flat folder of images)")
    )
    print(_table(("kind", "distribution", "description"), rows))
    print("\nAppend @train or @test for a deterministic split, e.g. digits:0-4@test.")
    return 0


def _parse_ood(text: str):
    """``[GROUP:]NAME=SPEC`` or ``GROUP=SPEC`` (name from the spec)."""
    from pathlib import Path

    from .benchmark import GROUPS as _GROUPS
    from .benchmark import OODSet

    lhs, sep, spec = text.partition("=")
    if not sep or not spec or not lhs:
        raise ValueError(
            f"--ood {text!r}: write NAME=SPEC, GROUP=SPEC or GROUP:NAME=SPEC (GROUP: {', '.join(_GROUPS)})."
        )
    if lhs in _GROUPS:
        base = spec.rsplit("@", 1)[0].rstrip("/")
        return OODSet(Path(base).name if ("/" in base or Path(base).exists()) else base, spec, lhs)
    group, colon, name = lhs.partition(":")
    if colon:
        if group not in _GROUPS:
            raise ValueError(f"--ood {text!r}: group {group!r} is not one of {', '.join(_GROUPS)}.")
        return OODSet(name, spec, group)
    return OODSet(lhs, spec, "far")


def _cmd_bench(args: argparse.Namespace) -> int:
    import dataclasses

    from . import report
    from .benchmark import BenchmarkConfig, load_config, run_benchmark

    cfg = load_config(args.config, data_root=args.data_root) if args.config else BenchmarkConfig()
    changes: dict = {}
    if args.model:
        changes["models"] = tuple(args.model)
    if args.checkpoint:
        changes["checkpoints"] = tuple(args.checkpoint)
    if args.id:
        changes["id"] = args.id
    if args.ood:
        changes["ood"] = tuple(_parse_ood(o) for o in args.ood)
    for opt, field_name in (("scorers", "scorers"), ("seeds", "seeds")):
        if getattr(args, opt):
            changes[field_name] = tuple(getattr(args, opt))
    for opt in ("device", "batch_size", "img_size", "cache_dir", "threshold"):
        if getattr(args, opt) is not None:
            changes[opt] = getattr(args, opt)
    if args.no_cache:
        changes["use_cache"] = False
    if args.skip_corrupt:
        changes["skip_corrupt"] = True
    if args.attention:
        changes["attention"] = True
    if args.attention_layer:
        changes["attention_layer"] = args.attention_layer
    if args.pretrained:
        changes["pretrained"] = True
    if args.epochs is not None:
        changes["train"] = {**dict(cfg.train), "epochs": args.epochs}
    cfg = dataclasses.replace(cfg, **changes)
    formats = [f for spec in (args.format or ["md,csv,json,tex"]) for f in spec.split(",") if f]
    bad = set(formats) - set(report.FORMATS)
    if bad:
        raise ValueError(f"--format {sorted(bad)} is not valid; use {', '.join(report.FORMATS)}.")
    result = run_benchmark(cfg, progress=not args.quiet)
    summary = result.summary()
    print(
        report.to_markdown(
            summary,
            columns=(
                "auroc",
                "fpr95",
                "aupr_in",
                "aupr_out",
                "id_accuracy",
                "aurc",
                "ood_rejected",
            ),
        )
    )
    t = result.timings
    print(
        f"train {t['train']:.1f}s, extract {t['extract']:.1f}s ({result.info['cache_hits']} cached, "
        f"{result.info['cache_misses']} extracted), fit {t['fit']:.2f}s, score {t['score']:.2f}s. "
        "Values in %; best per column in bold; higher score = more in-distribution."
    )
    if args.out:
        out = result.save(args.out, formats=formats, plots=not args.no_plots)
        print(f"wrote {out}/ (results.json, tables, plots)")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from ._cache import OutputsCache, file_sha256
    from .backbones import build_transform, create_backbone, resolve_device
    from .benchmark import cached_extract, parse_scorer_spec
    from .datasets import files_source, load_dataset, split_spec
    from .diagnose import explain_source, plot_explanations

    device = resolve_device(args.device)
    model, mcfg = create_backbone(
        args.model, checkpoint=args.checkpoint, img_size=args.img_size, pretrained=args.pretrained
    )
    transform, data_cfg = build_transform(model, mcfg.img_size)
    source = files_source(args.images)
    names = mcfg.class_names or tuple(str(i) for i in range(mcfg.num_classes))
    scorers = {}
    if args.scorers:
        train_spec = args.train or mcfg.extra.get("train", {}).get("data")
        if not train_spec:
            raise ValueError(
                "Scorers are fitted on the model's training outputs: pass --train SPEC (the ID training data)."
            )
        from ._registry import create_scorer

        weights = (
            file_sha256(args.checkpoint) if args.checkpoint else f"timm-pretrained:{args.model}"
        )
        train_out, _, _ = cached_extract(
            lambda: model,
            args.model,
            weights,
            load_dataset(split_spec(train_spec, "train")),
            transform,
            tuple(data_cfg["input_size"]),
            OutputsCache(args.cache_dir),
            device=device,
            progress=not args.quiet,
        )
        for spec in args.scorers:
            name, params = parse_scorer_spec(spec)
            scorers[spec] = create_scorer(name, **params).fit(train_out)
    exp = explain_source(
        model,
        source,
        transform,
        names,
        scorers=scorers,
        layer=args.layer,
        device=device,
    )
    path = plot_explanations(exp, args.out, columns=args.columns)
    for k, sid in enumerate(exp.ids):
        vals = "  ".join(f"{n}={v[k]:.4g}" for n, v in exp.scores.items())
        print(
            f"{sid}: {names[exp.predictions[k]]} p={exp.softmax[k]:.3f}  {vals}  area@0.5={exp.area[k]:.2f}"
        )
    print(f"wrote {path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train_model

    cfg = TrainConfig(
        model=args.model,
        data=args.data,
        img_size=args.img_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        pretrained=args.pretrained,
        hflip=not args.no_hflip,
    )
    path, summary = train_model(
        cfg, args.out, device=args.device, num_workers=args.num_workers, progress=not args.quiet
    )
    print(
        f"saved {path}: test accuracy {summary['test_accuracy']:.4f} on {summary['n_test']} images "
        f"({summary['n_train']} training images, {summary['train_seconds']:.0f}s on {summary['device']})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``oodlens`` command."""
    parser = argparse.ArgumentParser(
        prog="oodlens", description="OOD detection and explanation for image classifiers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("scorers", help="list the installed scorers")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. '*kde*'")
    p.set_defaults(func=_cmd_scorers)
    p = sub.add_parser("plugins", help="list installed plugins and load failures")
    p.set_defaults(func=_cmd_plugins)
    p = sub.add_parser("datasets", help="list dataset kinds usable as specs")
    p.set_defaults(func=_cmd_datasets)

    p = sub.add_parser(
        "bench",
        help="run a benchmark (no arguments: the embedded digits demo)",
        description="Fit every scorer on ID train outputs, score ID test and OOD sets, print the table.",
    )
    p.add_argument("--config", help="YAML or TOML benchmark config (options below override it)")
    p.add_argument(
        "--data-root", help="replaces {data_root} in --config (default $OODLENS_DATA_ROOT)"
    )
    p.add_argument("--model", action="append", help="timm model name (repeatable)")
    p.add_argument(
        "--checkpoint", action="append", help="checkpoint per --model (.safetensors or state dict)"
    )
    p.add_argument("--id", help="ID dataset spec, e.g. digits:0-4 or a folder (@train/@test split)")
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
        help="scorers, e.g. msp 'logit_kde:mode=class_conditional'; 'all' = every installed scorer "
        "(default: all plus logit_kde:mode=class_conditional)",
    )
    p.add_argument("--seeds", nargs="+", type=int, help="training seeds (models trained here)")
    p.add_argument("--epochs", type=int, help="training epochs (models trained here)")
    p.add_argument(
        "--pretrained", action="store_true", help="use timm pretrained weights (needs the internet)"
    )
    p.add_argument("--device", help="cpu, cuda, mps or auto")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--img-size", type=int)
    p.add_argument("--threshold", type=float, help="extra fixed operating threshold (e.g. 0.04)")
    p.add_argument(
        "--format", action="append", help="table formats for --out: md,csv,json,tex (default all)"
    )
    p.add_argument("--out", help="write tables, plots and results.json to this folder")
    p.add_argument("--no-plots", action="store_true", help="skip the figures in --out")
    p.add_argument(
        "--cache-dir", help="cache folder (default $OODLENS_CACHE_DIR or ~/.cache/oodlens)"
    )
    p.add_argument("--no-cache", action="store_true", help="extract again and store nothing")
    p.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="skip unreadable images (listed in results.json)",
    )
    p.add_argument(
        "--attention",
        action="store_true",
        help="measure Grad-CAM attention areas per group (ID correct/wrong, OOD)",
    )
    p.add_argument("--attention-layer", help="Grad-CAM layer for --attention (default: automatic)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "explain", help="Grad-CAM overlays with predictions and scores, as a PNG grid"
    )
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="timm model name")
    p.add_argument("--checkpoint", help="checkpoint (.safetensors or state dict)")
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
    p.add_argument("--layer", help="Grad-CAM target layer (default: automatic)")
    p.add_argument("--img-size", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", help="cache folder for the training outputs")
    p.add_argument("--columns", type=int, default=6)
    p.add_argument("--out", default="explain.png", help="PNG to write")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("train", help="train or fine-tune a timm model on a dataset spec")
    p.add_argument("--model", default="resnet18")
    p.add_argument(
        "--data",
        default="digits:0-4",
        help="ID dataset spec; its @train split is used, @test is evaluated",
    )
    p.add_argument("--out", required=True, help="checkpoint file to write (.safetensors)")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--pretrained", action="store_true", help="start from timm pretrained weights (internet)"
    )
    p.add_argument("--no-hflip", action="store_true", help="no horizontal flips (e.g. for digits)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    import logging

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="oodlens: %(levelname)s: %(message)s")
    try:
        return int(args.func(args))
    except (ValueError, KeyError, TypeError, FileNotFoundError, RuntimeError) as exc:
        print(f"oodlens: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
