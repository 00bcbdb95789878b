"""Tables (Markdown, CSV, JSON, LaTeX) and plots of a benchmark result."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .benchmark import METRICS
from .metrics import risk_coverage_curve

if TYPE_CHECKING:
    from .benchmark import BenchmarkResult

__all__ = ["format_table", "to_markdown", "to_latex", "write_report", "DEFAULT_COLUMNS"]

#: Columns shown in the terminal and the Markdown / LaTeX tables.
DEFAULT_COLUMNS = (
    "auroc",
    "fpr95",
    "fpr95_ood_recall",
    "aupr_in",
    "aupr_out",
    "id_accuracy",
    "aurc",
    "ood_rejected",
    "open_set_risk",
)
FORMATS = ("md", "csv", "json", "tex")


def _cell(mean: float, std: float, n: int, pct: bool) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    scale = 100.0 if pct else 1.0
    text = f"{mean * scale:.2f}" if pct else f"{mean:.4f}"
    if n > 1:
        text += f" ± {std * scale:.2f}" if pct else f" ± {std:.4f}"
    return text


def _best_mask(summary: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """True where a value is the best of its column within the same (backbone, ood) block."""
    mask = pd.DataFrame(False, index=summary.index, columns=list(columns))
    for _, block in summary.groupby(["backbone", "ood"], sort=False):
        for col in columns:
            vals = block[col].astype(float)
            if vals.notna().sum() < 2:
                continue
            best = vals.max() if METRICS.get(col, True) else vals.min()
            mask.loc[block.index[np.isclose(vals, best, rtol=0, atol=1e-12)], col] = True
    return mask


def format_table(
    summary: pd.DataFrame, columns: Sequence[str] = DEFAULT_COLUMNS, bold: str = "**{}**"
) -> pd.DataFrame:
    """Display table: metric cells as percentages (AURC x100 too), ``mean ± std`` over seeds,
    the best value of each column within a (backbone, OOD set) block wrapped in ``bold``."""
    columns = [c for c in columns if c in summary]
    best = _best_mask(summary, columns)
    out = summary[["backbone", "scorer", "ood"]].copy()
    for col in columns:
        std_col = summary.get(f"{col}_std", pd.Series(0.0, index=summary.index))
        cells = [
            _cell(m, s, n, pct=True)
            for m, s, n in zip(summary[col], std_col, summary["n_seeds"], strict=True)
        ]
        out[col] = [bold.format(c) if b else c for c, b in zip(cells, best[col], strict=True)]
    return out


def to_markdown(summary: pd.DataFrame, columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """GitHub Markdown table; values in percent, best per column in bold."""
    t = format_table(summary, columns)
    head = "| " + " | ".join(t.columns) + " |"
    sep = (
        "| "
        + " | ".join("---" if c in ("backbone", "scorer", "ood") else "---:" for c in t.columns)
        + " |"
    )
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in t.itertuples(index=False)]
    return "\n".join([head, sep, *body]) + "\n"


def _tex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
        ("$", r"\$"),
        ("{", r"\{"),
        ("}", r"\}"),
    ):
        text = text.replace(a, b)
    return text.replace(r"\textbackslash\{\}", r"\textbackslash{}")


def to_latex(
    summary: pd.DataFrame,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    caption: str = "OOD detection results (\\%).",
) -> str:
    """A booktabs ``table`` with a ``tabular``; best per column in ``\\textbf``; mean $\\pm$ std."""
    t = format_table(summary, columns, bold="\\textbf{{{}}}")
    cols = list(t.columns)
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{caption}}}",
        "\\begin{tabular}{" + "lll" + "r" * (len(cols) - 3) + "}",
        "\\toprule",
        " & ".join(_tex_escape(c) for c in cols) + " \\\\",
        "\\midrule",
    ]
    prev = None
    for row in t.itertuples(index=False):
        key = (row[0], row[2])
        if prev is not None and key != prev:
            lines.append("\\midrule")
        prev = key
        cells = [
            _tex_escape(str(v)) if i < 3 else str(v).replace("±", "$\\pm$")
            for i, v in enumerate(row)
        ]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _plots(result: BenchmarkResult, out: Path) -> list[Path]:
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    run = result.runs[0]
    scorers = list(run.scores)
    oods = [o.name for o in result.config.ood]
    written = []
    # ROC curves: one panel per OOD set, one curve per scorer
    fig = Figure(figsize=(4 * len(oods), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(oods), squeeze=False)).ravel()
    for ax, name in zip(axes, oods, strict=True):
        for spec in scorers:
            s_id, s_ood = run.scores[spec]["id"], run.scores[spec][name]
            fpr, tpr, _ = roc_curve(
                np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood]
            )
            ax.plot(fpr, tpr, lw=1.3, label=spec)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title(f"ID test vs {name}")
        ax.set_xlabel("OOD accepted (FPR)")
        ax.set_ylabel("ID accepted (TPR)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"ROC, {run.backbone} (seed {run.seed})")
    written.append(out / "roc.png")
    fig.savefig(written[-1], dpi=110)
    # score distributions: one panel per scorer, ID vs each OOD set
    cols = min(3, len(scorers))
    rows = math.ceil(len(scorers) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[len(scorers) :]:
        ax.set_visible(False)
    for ax, spec in zip(axes, scorers, strict=False):
        data = run.scores[spec]
        allv = np.concatenate(list(data.values()))
        lo, hi = np.percentile(allv, [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
        ax.hist(data["id"], bins=bins, density=True, alpha=0.5, label="ID test")
        for name in oods:
            ax.hist(data[name], bins=bins, density=True, histtype="step", lw=1.4, label=name)
        ax.set_title(spec, fontsize=9)
        ax.set_xlabel("score (higher = more ID)")
    axes[0].legend(fontsize=7)
    written.append(out / "score_distributions.png")
    fig.savefig(written[-1], dpi=110)
    # risk-coverage on ID test
    fig = Figure(figsize=(5, 3.8), layout="constrained")
    ax = fig.subplots()
    for spec in scorers:
        cov, risk, _ = risk_coverage_curve(run.scores[spec]["id"], run.id_correct)
        ax.step(cov, risk, where="post", lw=1.3, label=spec)
    ax.set_xlabel("coverage (share of ID test accepted)")
    ax.set_ylabel("risk (error rate among accepted)")
    ax.set_title(f"Risk-coverage, {run.backbone}")
    ax.legend(fontsize=7)
    written.append(out / "risk_coverage.png")
    fig.savefig(written[-1], dpi=110)
    return written


def write_report(
    result: BenchmarkResult, out: Path, formats: Sequence[str] = FORMATS, plots: bool = True
) -> Path:
    """Write ``results.{md,csv,json,tex}``, ``table_full.csv`` (every row and seed), plots, and
    ``results.json`` with the config, versions, timings and the table. Returns ``out``."""
    bad = set(formats) - set(FORMATS)
    if bad:
        raise ValueError(f"Unknown format(s) {sorted(bad)}; valid: {', '.join(FORMATS)}.")
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    if "md" in formats:
        (out / "results.md").write_text(to_markdown(summary))
    if "csv" in formats:
        summary.to_csv(out / "results.csv", index=False)
        result.table.to_csv(out / "table_full.csv", index=False)
    if "tex" in formats:
        (out / "results.tex").write_text(to_latex(summary))
    figures = [str(p.name) for p in _plots(result, out)] if plots else []
    if result.attention is not None:
        result.attention.to_csv(out / "attention.csv", index=False)
        if plots and result.confident_errors:
            from .diagnose import plot_explanations

            path = plot_explanations(
                result.confident_errors[0],
                out / "confident_errors.png",
                title="Most confident ID errors (highest score first)",
            )
            figures.append(path.name)
    payload = {
        "config": result.config.to_dict(),
        "versions": result.info.get("versions", {}),
        "timings_s": result.timings,
        "info": {k: v for k, v in result.info.items() if k != "versions"},
        "figures": figures,
        "summary": summary.to_dict(orient="records"),
        "attention": None
        if result.attention is None
        else result.attention.to_dict(orient="records"),
        "table": result.table.to_dict(orient="records"),
    }
    (out / "results.json").write_text(json.dumps(_json_safe(payload), indent=2, default=str))
    return out
