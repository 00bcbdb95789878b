"""Tables of a benchmark summary: Markdown, LaTeX and the display format they share."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..metrics import higher_is_better, metric, metric_columns

__all__ = [
    "CONVENTION_NOTES",
    "openood_table",
    "openood_markdown",
    "openood_latex",
    "format_table",
    "to_markdown",
    "to_latex",
    "json_safe",
    "md_escape",
    "table_parts",
    "per_set_rows",
]

#: One line naming each metric convention, for table captions.
CONVENTION_NOTES = {
    "oodlens": "oodlens convention (step-wise AUPR; fpr95 = OOD accepted at 95% ID acceptance)",
    "openood": "OpenOOD v1.5 convention (trapezoidal AUPR; fpr95 = ID rejected at 95% OOD recall)",
}


def _cell(mean: float, std: float, n: int, pct: bool, half_width: float | None = None) -> str:
    """``mean`` (in % when ``pct``), then ``± half-width`` of its bootstrap interval when
    given, else ``± std`` over seeds when there are several."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    scale = 100.0 if pct else 1.0
    text = f"{mean * scale:.2f}" if pct else f"{mean:.4f}"
    text = "0.00" if text == "-0.00" else text
    if half_width is not None and not math.isnan(half_width):
        text += f" ± {half_width * scale:.2f}"
    elif n > 1:
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
            best = vals.max() if higher_is_better(col) is not False else vals.min()
            mask.loc[block.index[np.isclose(vals, best, rtol=0, atol=1e-12)], col] = True
    return mask


def format_table(
    summary: pd.DataFrame, columns: Sequence[str] | None = None, bold: str = "**{}**"
) -> pd.DataFrame:
    """Display table: metric cells as percentages (AURC x100 too), ``mean ± std`` over seeds,
    the best value of each column within a (backbone, OOD set) block wrapped in ``bold``."""
    columns = metric_columns(summary.columns, "table") if columns is None else columns
    columns = [c for c in columns if c in summary]
    best = _best_mask(summary, columns)
    out = summary[[*_keys(summary), "ood"]].copy()
    for col in columns:
        std_col = summary.get(f"{col}_std", pd.Series(0.0, index=summary.index))
        if f"{col}_ci_lo" in summary:  # bootstrap interval: mean ± half-width
            half = (summary[f"{col}_ci_hi"] - summary[f"{col}_ci_lo"]) / 2.0
        else:
            half = pd.Series([None] * len(summary), index=summary.index)
        cells = [
            _cell(m, s, n, pct=True, half_width=h)
            for m, s, n, h in zip(summary[col], std_col, summary["n_seeds"], half, strict=True)
        ]
        out[col] = [bold.format(c) if b else c for c, b in zip(cells, best[col], strict=True)]
    return out


def md_escape(text: Any) -> str:
    """A value as the text of one Markdown table cell: ``|`` escaped, line breaks as spaces."""
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md(t: pd.DataFrame, left: Sequence[str]) -> str:
    head = "| " + " | ".join(md_escape(c) for c in t.columns) + " |"
    sep = "| " + " | ".join("---" if c in left else "---:" for c in t.columns) + " |"
    body = [
        "| " + " | ".join(md_escape(v) for v in row) + " |" for row in t.itertuples(index=False)
    ]
    return "\n".join([head, sep, *body]) + "\n"


def per_set_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary without the near/far rows that only repeat the one set of their group."""
    sets = summary[summary.group != "aggregate"]
    singles = {g for g in ("near", "far") if sets.loc[sets.group == g, "ood"].nunique() == 1}
    keep = ~((summary.group == "aggregate") & summary.ood.isin(singles))
    return summary[keep].reset_index(drop=True)


def _keys(summary: pd.DataFrame) -> list[str]:
    """The columns that name a row: the run (after ``oodlens merge``), backbone, scorer."""
    return [c for c in ("run", "backbone", "scorer") if c in summary]


def table_parts(
    summary: pd.DataFrame, columns: Sequence[str] | None = None, bold: str = "**{}**"
) -> list[tuple[str, pd.DataFrame, tuple[str, ...]]]:
    """The two display tables every report shows, as ``(title, table, text columns)``: the
    per-model table of the ID-only metrics (accuracy, AURC, ...: one row per backbone and
    scorer), then the per-OOD-set table of the others (a near/far mean row only when its
    group has several sets). ``columns``: the metric columns to show (default: those the
    metric catalogue shows in tables, see :func:`oodlens.metrics.metric_columns`)."""
    columns = metric_columns(summary.columns, "table") if columns is None else list(columns)
    columns = [c for c in columns if c in summary]
    id_cols = [c for c in columns if (m := metric(c)) is not None and m.id_only]
    ood_cols = [c for c in columns if c not in id_cols]
    keys = _keys(summary)
    parts = []
    if id_cols:
        first = summary.drop_duplicates([*keys, "seed"] if "seed" in summary else keys)
        first = first.assign(ood="ID test").reset_index(drop=True)
        t = format_table(first, id_cols, bold).drop(columns=["ood"])
        parts.append(("ID test, per model", t, tuple(keys)))
    t = format_table(per_set_rows(summary), ood_cols, bold)
    parts.append(("OOD detection, per set", t, (*keys, "ood")))
    return parts


def to_markdown(summary: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """GitHub Markdown of :func:`table_parts`: values in percent, best per column in bold,
    cells escaped (a ``|`` in a name does not break the table)."""
    return "\n".join(
        f"{title}:\n\n" + _md(t, left) for title, t, left in table_parts(summary, columns)
    )


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


def _booktabs(t: pd.DataFrame, caption: str, text_columns: int, group: tuple[int, ...] = ()) -> str:
    """A formatted table as a booktabs ``table``: the first ``text_columns`` columns escaped
    and left-aligned, the rest right-aligned with ``±`` as ``$\\pm$``; a ``\\midrule``
    wherever the values of the ``group`` columns change."""
    cols = list(t.columns)
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{caption}}}",
        "\\begin{tabular}{" + "l" * text_columns + "r" * (len(cols) - text_columns) + "}",
        "\\toprule",
        " & ".join(_tex_escape(c) for c in cols) + " \\\\",
        "\\midrule",
    ]
    prev = None
    for row in t.itertuples(index=False):
        key = tuple(row[i] for i in group)
        if group and prev is not None and key != prev:
            lines.append("\\midrule")
        prev = key
        cells = [
            _tex_escape(str(v)) if i < text_columns else str(v).replace("±", "$\\pm$")
            for i, v in enumerate(row)
        ]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def to_latex(
    summary: pd.DataFrame,
    columns: Sequence[str] | None = None,
    caption: str = "OOD detection results (\\%).",
) -> str:
    """A booktabs ``table`` with a ``tabular``; best per column in ``\\textbf``; mean $\\pm$ std."""
    t = format_table(summary, columns, bold="\\textbf{{{}}}")
    keys = len(_keys(summary))
    return _booktabs(t, caption, text_columns=keys + 1, group=(keys - 2, keys))


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` and numpy scalars as Python values."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj


_OPENOOD_METRICS = {"auroc": "AUROC", "fpr95": "FPR@95"}


def openood_table(summary: pd.DataFrame, full: bool = False, bold: str = "**{}**") -> pd.DataFrame:
    """OpenOOD's layout: one row per (backbone, scorer); near-OOD and far-OOD mean AUROC and
    FPR@95 columns whose headers give the number of sets behind each mean, then ID accuracy;
    with ``full``, every OOD set's own columns first. Cells in percent (``mean ± std`` over
    seeds); the best of each column within a backbone in ``bold``."""
    sets = summary[~summary.group.isin(["aggregate"])]
    n_sets = {g: int(sets.loc[sets.group == g, "ood"].nunique()) for g in ("near", "far")}
    columns: list[tuple[str, str, str]] = []  # (ood row, metric, header)
    if full:
        for name in sets.ood.unique():
            columns += [(name, m, f"{name} {label}") for m, label in _OPENOOD_METRICS.items()]
    for group in ("near", "far"):
        if n_sets[group]:
            suffix = f" ({n_sets[group]} set{'s' if n_sets[group] > 1 else ''})"
            columns += [
                (group, m, f"{group} {label}{suffix}") for m, label in _OPENOOD_METRICS.items()
            ]
    rows = []
    keyed = summary.set_index(["backbone", "scorer", "ood"])
    for (backbone, scorer), block in summary.groupby(["backbone", "scorer"], sort=False):
        row: dict[str, Any] = {"backbone": backbone, "scorer": scorer}
        for ood, column, header in columns:
            key = (backbone, scorer, ood)
            row[header] = (
                (keyed.at[key, column], keyed.at[key, f"{column}_std"], keyed.at[key, "n_seeds"])
                if key in keyed.index
                else (float("nan"), 0.0, 1)
            )
        first = block.iloc[0]
        row["ID acc."] = (first["id_accuracy"], first.get("id_accuracy_std", 0.0), first["n_seeds"])
        rows.append(row)
    raw = pd.DataFrame(rows)
    out = raw[["backbone", "scorer"]].copy()
    directions = {h: higher_is_better(c) for _, c, h in columns}
    for header in [h for _, _, h in columns] + ["ID acc."]:
        means = raw[header].map(lambda c: c[0]).astype(float)
        higher = directions.get(header, True)
        best = pd.Series(False, index=raw.index)
        for _, idx in raw.groupby("backbone").groups.items():
            vals = means.loc[idx]
            if vals.notna().sum() >= 2 and vals.nunique() > 1:
                target = vals.max() if higher else vals.min()
                best.loc[idx] = np.isclose(vals, target, rtol=0, atol=1e-12)
        cells = [_cell(m, sd, n, pct=True) for m, sd, n in raw[header]]
        out[header] = [bold.format(c) if b else c for c, b in zip(cells, best, strict=True)]
    return out


def openood_markdown(summary: pd.DataFrame, full: bool = False) -> str:
    """:func:`openood_table` as a GitHub Markdown table."""
    t = openood_table(summary, full)
    head = "| " + " | ".join(t.columns) + " |"
    sep = (
        "| "
        + " | ".join("---" if c in ("backbone", "scorer") else "---:" for c in t.columns)
        + " |"
    )
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in t.itertuples(index=False)]
    return "\n".join([head, sep, *body]) + "\n"


def openood_latex(summary: pd.DataFrame, caption: str, full: bool = True) -> str:
    """:func:`openood_table` as a booktabs LaTeX table (every OOD set's columns by default)."""
    t = openood_table(summary, full, bold="\\textbf{{{}}}")
    return _booktabs(t, caption, text_columns=2)
