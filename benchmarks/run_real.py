"""Real-data benchmarks: the origin study on cats vs dogs, and a CIFAR-10 OOD benchmark.

    make bench-real                                  # both, data from ../shared/data
    python benchmarks/run_real.py --data-root DIR    # your own copy of the data
    python benchmarks/run_real.py --smoke            # 1 epoch, few scorers: checks the pipeline

Cats vs dogs trains its backbone from scratch (``oodlens train``'s code path; no pretrained
weights are needed); CIFAR-10 uses the standard 50k/10k split and the shared checkpoint
(``../shared/models``, no training). Each runs the harness (``oodlens bench --config ...``)
with every installed scorer and writes tables, figures, an HTML page and ``REPORT.md`` to
``--out``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import oodlens
from oodlens.backbones import build_transform, create_backbone
from oodlens.bench import load_config, run_benchmark
from oodlens.bench.report import to_markdown
from oodlens.datasets import files_source
from oodlens.diagnose import explain_source
from oodlens.metrics import rejection_report, threshold_at_acceptance
from oodlens.plots import plot_explanations, plot_logit_kde
from oodlens.registry import get_protocol, parse_scorer_spec

HERE = Path(__file__).resolve().parent
DEFAULT_ROOT = HERE.parent.parent / "shared" / "data"

UNKNOWN = {"faces": 4, "landscapes": 4, "apples": 4, "other": 4, "cat_id": 1}


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}"


def catsdogs(root: Path, out: Path, device: str, smoke: bool) -> tuple[str, dict]:
    cfg = load_config(HERE / "configs" / "catsdogs.yaml", data_root=root)
    if smoke:
        cfg = dataclasses.replace(cfg, train={**cfg.train, "epochs": 1}, attention_samples=20)
    cfg = dataclasses.replace(cfg, device=device)
    t0 = time.perf_counter()
    res = run_benchmark(cfg, progress=False)
    wall = time.perf_counter() - t0
    res.save(out)
    run = res.runs[0]
    train, test = run.outputs["id_train"], run.outputs["id_test"]
    names = ("cat", "dog")
    # origin figures: training-logit densities (marginal as in the origin; class-conditional)
    kde = oodlens.create_scorer("logit_kde").fit(train)
    plot_logit_kde(
        kde,
        dataclasses.replace(train, class_names=names),
        out / "logit_kde_marginal.png",
        threshold=0.04,
    )
    cc = oodlens.create_scorer("logit_kde", mode="class_conditional").fit(train)
    plot_logit_kde(
        cc, dataclasses.replace(train, class_names=names), out / "logit_kde_class_conditional.png"
    )
    # unknown images with softmax score and logit-KDE density, like the origin's grid
    model, mcfg = create_backbone("resnet18", checkpoint=run.checkpoint)
    transform, _ = build_transform(model, mcfg.img_size)
    files = []
    for folder, k in UNKNOWN.items():
        files += sorted(p for p in (root / "internet" / folder).iterdir() if p.is_file())[:k]
    source = files_source(files)
    exp = explain_source(
        model,
        source,
        transform,
        names,
        scorers={"kde": kde, "kde_cc": cc},
        layer=cfg.attention_layer,
        device=device,
    )
    plot_explanations(
        exp,
        out / "unknown_images.png",
        columns=6,
        title="Unknown images: softmax vs logit-KDE density",
    )
    unknown_rows = [
        {
            "image": Path(i).parent.name + "/" + Path(i).name,
            "pred": names[p],
            "softmax": float(m),
            "kde": float(d),
            "kde_cc": float(c),
        }
        for i, p, m, d, c in zip(
            exp.ids,
            exp.predictions,
            exp.softmax,
            exp.scores["kde"],
            exp.scores["kde_cc"],
            strict=True,
        )
    ]
    # operating thresholds: 95% ID acceptance on a validation half of ID test, evaluated on the
    # other half; and the origin's absolute 0.04
    idx = np.arange(test.n_samples)
    val, held = idx % 2 == 0, idx % 2 == 1
    correct = run.id_correct
    rows = []
    for spec in ("logit_kde", "logit_kde:mode=class_conditional", "msp", "energy"):
        s = run.scores[spec]
        ood = np.concatenate([s[o.name] for o in cfg.ood])
        t_val = threshold_at_acceptance(s["id"][val], 0.95)
        for label, t in (
            ("95% ID on validation half", t_val),
            ("origin's 0.04", 0.04 if spec.startswith("logit_kde") else None),
        ):
            if t is None:
                continue
            r = rejection_report(s["id"][held], correct[held], ood, threshold=t)
            rows.append({"scorer": spec, "rule": label, **r})
    thresholds = pd.DataFrame(rows)
    info = {
        "wall_s": wall,
        "timings": res.timings,
        "train": res.info["train"],
        "test_accuracy": float(correct.mean()),
        "unknown": unknown_rows,
        "thresholds": thresholds.to_dict(orient="records"),
        "attention": None if res.attention is None else res.attention.to_dict(orient="records"),
        "mannwhitney": res.attention_tests,
    }
    (out / "extra.json").write_text(json.dumps(info, indent=2, default=str))
    md = [f"## Cats vs dogs (resnet18 at {mcfg.img_size}px, trained from scratch)", ""]
    md.append(
        f"Test accuracy: {correct.mean():.4f} on {test.n_samples} images; wall time {wall / 60:.1f} min "
        f"(train {res.timings['train']:.0f}s, extract {res.timings['extract']:.0f}s, "
        f"attention {res.timings.get('attention', 0):.0f}s)."
    )
    md += [
        "",
        to_markdown(res.summary()),
        "",
        "### Operating thresholds (held-out half of ID test + all OOD)",
        "",
    ]
    md.append(
        "| scorer | rule | threshold | ID accepted | ID errors rejected | OOD rejected | open-set risk |"
    )
    md.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        md.append(
            f"| {r['scorer']} | {r['rule']} | {r['threshold']:.4g} | {_fmt(r['id_accepted'])} | "
            f"{_fmt(r['id_errors_rejected'])} | {_fmt(r['ood_rejected'])} | {_fmt(r['open_set_risk'])} |"
        )
    md += [
        "",
        "### Unknown images",
        "",
        "| image | predicted | softmax | KDE density | class-cond. density |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    md += [
        f"| {u['image']} | {u['pred']} | {u['softmax']:.3f} | {u['kde']:.4f} | {u['kde_cc']:.4f} |"
        for u in unknown_rows
    ]
    if res.attention is not None:
        md += [
            "",
            "### Attention areas (Grad-CAM, share of pixels >= 0.5 / share holding half the mass)",
            "",
        ]
        md.append(
            res.attention.drop(columns=["backbone", "seed"]).to_markdown(
                index=False, floatfmt=".3f"
            )
        )
        md += ["", f"Mann-Whitney U: `{json.dumps(res.attention_tests)}`"]
    return "\n".join(md), info


def cifar10(root: Path, out: Path, device: str, smoke: bool) -> tuple[str, dict]:
    cfg = load_config(HERE / "configs" / "cifar10.yaml", data_root=root)
    if smoke:
        cfg = dataclasses.replace(cfg, bootstrap=20, scorers=("msp", "energy", "logit_kde"))
    cfg = dataclasses.replace(cfg, device=device)
    t0 = time.perf_counter()
    res = run_benchmark(cfg, progress=False)
    wall = time.perf_counter() - t0
    res.save(out, formats=("md", "csv", "json", "tex", "openood", "html"))
    summary = res.summary()
    acc = float(res.runs[0].id_correct.mean())
    n_test = res.runs[0].outputs["id_test"].n_samples
    md = [
        "## CIFAR-10 (standard split, the shared resnet18 checkpoint at 64 px)",
        "",
        f"Fit on the 50,000 training images, scored on {n_test:,} test images (the rest of "
        f"the 10,000 form the held-out val and calib splits). Test accuracy {acc:.4f}; wall "
        f"time {wall / 60:.1f} min (extract {res.timings['extract']:.0f}s, no training).",
        "",
        to_markdown(summary),
        "",
        "### AUROC beside OpenOOD v1.5 (CIFAR-10, ResNet-18 at 32 px, ~95% accuracy)",
        "",
        "| scorer | ours near | ours far | OpenOOD near | OpenOOD far |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    agg = summary.set_index(["scorer", "ood"])
    # OpenOOD's numbers come from the protocol file (--compare-published has the full
    # comparison, with variants and partial means marked)
    published = get_protocol("cifar10").results
    table = published.networks["ResNet18"]["ood"]
    names = {parse_scorer_spec(m.ours).text: m.name for m in published.methods.values() if m.ours}
    for scorer in summary.scorer.unique():
        cells = table.get(names.get(scorer, ""), {})
        ref = [f"{cells[g].mean:.2f}" if cells.get(g) else "—" for g in ("near", "far")]
        ours = [f"{100 * agg.loc[(scorer, g), 'auroc']:.2f}" for g in ("near", "far")]
        md.append(f"| {scorer} | {ours[0]} | {ours[1]} | {ref[0]} | {ref[1]} |")
    info = {"wall_s": wall, "timings": res.timings, "accuracy": acc, "n_test": n_test}
    (out / "extra.json").write_text(json.dumps(info, indent=2, default=str))
    return "\n".join(md), info


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def doc_tables(out: Path) -> list[Path]:
    """The tables docs/benchmarks.md quotes, from each config's saved ``results.json`` (so a
    rerun cannot leave them stale: ``benchmarks/sync_docs.py`` copies them into the page):
    ``catsdogs/docs_table.md`` (far-OOD means, by AUROC) and ``cifar10/docs_table.md`` (near
    and far AUROC beside OpenOOD v1.5's published ResNet-18 numbers, by near AUROC)."""
    written = []
    path = out / "catsdogs" / "results.json"
    if path.is_file():
        rows = [r for r in json.loads(path.read_text())["summary"] if r["ood"] == "far"]
        lines = [
            "| scorer | AUROC | FPR@95 | AURC | ID errors rejected | OOD rejected |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in sorted(rows, key=lambda r: -r["auroc"]):
            lines.append(
                f"| {r['scorer']} | {_pct(r['auroc'])} | {_pct(r['fpr95'])} | {_pct(r['aurc'])} "
                f"| {_pct(r['id_errors_rejected'])} | {_pct(r['ood_rejected'])} |"
            )
        written.append(out / "catsdogs" / "docs_table.md")
        written[-1].write_text("\n".join(lines) + "\n")
    path = out / "cifar10" / "results.json"
    if path.is_file():
        summary = json.loads(path.read_text())["summary"]
        by = {(r["scorer"], r["ood"]): r for r in summary}
        near_sets = {r["ood"] for r in summary if r["group"] == "near"}
        published = get_protocol("cifar10").results
        table = published.networks["ResNet18"]["ood"]
        names = {
            parse_scorer_spec(m.ours).text: m.name for m in published.methods.values() if m.ours
        }
        lines = [
            "| scorer | near AUROC [95% CI] | far AUROC | FPR@95 near | AURC "
            "| FRR @ α=0.05 (near) | power @ α=0.05 (near / far) | OpenOOD near / far |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        scorers = sorted({r["scorer"] for r in summary}, key=lambda n: -by[(n, "near")]["auroc"])
        for name in scorers:
            near, far = by[(name, "near")], by[(name, "far")]
            one = by[(name, next(iter(near_sets)))] if len(near_sets) == 1 else near
            ci = (
                f" [{_pct(one['auroc_ci_lo'])}, {_pct(one['auroc_ci_hi'])}]"
                if one.get("auroc_ci_lo") is not None
                else ""
            )
            cells = table.get(names.get(name, ""), {})
            ref = " / ".join(f"{cells[g].mean:g}" if cells.get(g) else "—" for g in ("near", "far"))
            lines.append(
                f"| {name} | {_pct(near['auroc'])}{ci} | {_pct(far['auroc'])} "
                f"| {_pct(near['fpr95'])} | {_pct(near['aurc'])} | {_pct(near['frr@0.05'])} "
                f"| {_pct(near['power@0.05'])} / {_pct(far['power@0.05'])} | "
                f"{ref if ref != '— / —' else '—'} |"
            )
        written.append(out / "cifar10" / "docs_table.md")
        written[-1].write_text("\n".join(lines) + "\n")
    return written


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-root", default=os.environ.get("OODLENS_DATA_ROOT", str(DEFAULT_ROOT)))
    ap.add_argument("--out", default=str(HERE / "results" / "real"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=("catsdogs", "cifar10"))
    ap.add_argument(
        "--smoke", action="store_true", help="1 epoch and 1 seed: check the pipeline quickly"
    )
    ap.add_argument(
        "--tables-only",
        action="store_true",
        help="only rewrite the docs' tables from the saved results.json files",
    )
    args = ap.parse_args()
    if args.tables_only:
        for path in doc_tables(Path(args.out)):
            print(f"wrote {path}")
        return 0
    root = Path(args.data_root)
    if not (root / "catsdogs").is_dir() or not (root / "cifar10").is_dir():
        print(
            f"bench-real: skipped: no data at {root} (needs catsdogs/, cifar10/, ood/, internet/; "
            "see ../shared/data/PROVENANCE.md). Pass --data-root DIR or set OODLENS_DATA_ROOT."
        )
        return 0
    out = Path(args.out)
    parts, extra = [], {}
    t0 = time.perf_counter()
    for name, fn in (("catsdogs", catsdogs), ("cifar10", cifar10)):
        if args.only and args.only != name:
            continue
        t = time.perf_counter()
        text, info = fn(root, out / name, args.device, args.smoke)
        print(f"{name}: done in {(time.perf_counter() - t) / 60:.1f} min", flush=True)
        parts.append(text)
        extra[name] = info
    total = time.perf_counter() - t0
    cpu = platform.processor() or platform.machine()
    dev = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"{cpu}, {os.cpu_count()} cores"
    )
    head = [
        "# Real-data benchmark report (generated by benchmarks/run_real.py)",
        "",
        f"Command: `python benchmarks/run_real.py{' --smoke' if args.smoke else ''}`; device {args.device} ({dev}); "
        f"torch {torch.__version__}; total wall time {total / 60:.1f} min.",
        "",
    ]
    (out / "REPORT.md").write_text("\n".join(head + parts) + "\n")
    doc_tables(out)
    print(f"wrote {out / 'REPORT.md'} ({total / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
