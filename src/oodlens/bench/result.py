"""What a benchmark run produced (:class:`BenchmarkResult`), and writing it as a report folder."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..explainers.base import Explanation
from ..files import MANIFEST, check_writable_dir, report_dir
from ..metrics import metric_columns
from ..outputs import Outputs
from ..plots import (
    plot_calibration,
    plot_explanations,
    plot_risk_coverage,
    plot_roc,
    plot_score_distributions,
)
from .config import BenchmarkConfig
from .html import figure_bytes, render_html
from .published import COLUMNS as PUBLISHED_COLUMNS
from .published import published_markdown
from .report import (
    CONVENTION_NOTES,
    json_safe,
    openood_latex,
    openood_markdown,
    openood_table,
    to_latex,
    to_markdown,
)

__all__ = [
    "RunScores",
    "ScorerFailure",
    "BenchmarkResult",
    "check_report_dir",
    "REPORT_VERSION",
    "ReportFormat",
    "ReportContext",
    "REPORT_FORMATS",
    "DEFAULT_FORMATS",
    "SAMPLE_COLUMNS",
    "FSOOD_CAPTION",
    "summarize_table",
    "fsood_markdown",
]

#: Version of the results.json layout (also the marker of an oodlens report folder).
REPORT_VERSION = 2


#: Every file a report of an oodlens without manifests wrote: in such a folder these are
#: oodlens's (replaced by a rerun), the others the user's (kept).
LEGACY_REPORT_FILES = frozenset(
    {
        "results.md",
        "results.csv",
        "results.tex",
        "results.json",
        "table_full.csv",
        "scores.csv.gz",
        "openood.md",
        "openood.csv",
        "openood.tex",
        "report.html",
        "attention.csv",
        "roc.png",
        "score_distributions.png",
        "risk_coverage.png",
        "calibration.png",
        "confident_errors.png",
    }
)

#: What ``--out`` writes when ``--format`` is not given (see :data:`REPORT_FORMATS`).
DEFAULT_FORMATS = ("md", "csv", "json", "tex")

#: The columns of ``scores.csv.gz`` that describe a sample; every other column is a scorer's.
SAMPLE_COLUMNS = ("backbone", "seed", "set", "group", "index", "id", "label", "prediction")


@dataclass
class RunScores:
    """Scores of one (backbone, seed) run, kept for plots."""

    backbone: str
    seed: int
    id_correct: np.ndarray
    scores: dict[str, dict[str, np.ndarray]]  #: scorer -> {"id": ..., ood name: ...}
    #: "id_train", "id_test", OOD names
    outputs: dict[str, Outputs] = field(default_factory=dict, repr=False)
    checkpoint: str | None = None  #: the weights used (None: timm pretrained or not kept)
    #: scorer -> operating threshold, chosen on the ID calib split (accepts id_acceptance)
    thresholds: dict[str, float] = field(default_factory=dict)
    #: scorer -> {"chosen", "grid", "trials"} when tuned (on ID val + OOD val only)
    tuning: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: scorer -> {"alpha": grid, "frr": realised ID false-rejection rate on ID test} (conformal)
    calibration: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: "id_test" and OOD names -> each row's sample id (path), None if rows were skipped
    ids: dict[str, list[str] | None] = field(default_factory=dict)
    #: scorer -> the fitted scorer and its scores of the calib split (for saved detectors)
    fitted: dict[str, tuple[Any, np.ndarray]] = field(default_factory=dict, repr=False)

    def per_sample(self, ood_groups: dict[str, str]) -> pd.DataFrame:
        """One row per scored sample: set, group, index, id, label, prediction, and one
        column per scorer (higher = more in-distribution)."""
        frames = []
        for key, group in [("id_test", "id"), *ood_groups.items()]:
            out = self.outputs[key]
            ids = self.ids.get(key)
            frame = pd.DataFrame(
                {
                    "backbone": self.backbone,
                    "seed": self.seed,
                    "set": "id" if key == "id_test" else key,
                    "group": group,
                    "index": np.arange(out.n_samples),
                    "id": ids if ids is not None else [""] * out.n_samples,
                    "label": out.labels if out.labels is not None else -1,
                    "prediction": out.predictions,
                }
            )
            for spec, scores in self.scores.items():
                frame[spec] = scores["id" if key == "id_test" else key]
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class ScorerFailure:
    """A scorer that failed in one run; the other scorers' results are kept."""

    scorer: str  #: the scorer spec
    distribution: str  #: the distribution that registered it
    backbone: str
    seed: int
    stage: str  #: "fit" or "score"
    error: str  #: the exception, as one line


#: What the full-spectrum table shows.
FSOOD_CAPTION = (
    "Full-spectrum OOD (OpenOOD's FS-OOD): each metric in % with ID test alone as ID (OOD) "
    "and with ID test and the covariate-shifted ID sets together as ID (FS-OOD); ID accuracy "
    "over the same ID rows."
)

#: The metrics the full-spectrum table puts beside the usual ones.
FSOOD_COLUMNS = ("auroc", "fpr95", "aupr_in", "aupr_out", "id_accuracy")


def summarize_table(table: pd.DataFrame) -> pd.DataFrame:
    keys = ["backbone", "scorer", "ood", "group"]
    if table.empty:
        return pd.DataFrame(columns=[*keys, "n_seeds"])
    cols = metric_columns(table.columns)
    cis = [c for c in table.columns if c.endswith(("_ci_lo", "_ci_hi"))]
    g = table.groupby(keys, sort=False, dropna=False)[cols + cis]
    mean = g.mean()
    std = g.std(ddof=1).fillna(0.0)[cols].add_suffix("_std")
    out = pd.concat([mean, std], axis=1).reset_index()
    out.insert(4, "n_seeds", g.size().to_numpy())
    return out


def fsood_markdown(side: pd.DataFrame) -> str:
    """The side-by-side table of :meth:`BenchmarkResult.fsood_summary` in Markdown (%)."""
    pairs = [c for c in FSOOD_COLUMNS if c in side.columns]
    headers = ["backbone", "scorer", "ood"] + [
        f"{c} {s}" for c in pairs for s in ("(OOD)", "(FS-OOD)")
    ]
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(["---"] * 3 + ["---:"] * (len(headers) - 3)) + " |",
    ]
    for r in side.itertuples(index=False):
        row = r._asdict()
        cells = [f"{100 * row[c + s]:.2f}" for c in pairs for s in ("", "_fsood")]
        lines.append("| " + " | ".join([row["backbone"], row["scorer"], row["ood"], *cells]) + " |")
    return "\n".join(lines) + "\n"


def check_report_dir(out: str | os.PathLike[str]) -> Path:
    """Raise before any work unless ``out`` can take a report: absent, empty, or an earlier
    oodlens report (whose files oodlens wrote are replaced, the others kept); never a folder
    of other files."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file; give a folder for the report.")
    if out.is_dir() and any(out.iterdir()) and not _is_report(out):
        raise FileExistsError(
            f"--out {str(out)!r} holds files that are not an oodlens report; refusing to replace "
            "them. Choose a new or empty folder."
        )
    check_writable_dir(out.parent, "The folder of --out")
    return out


def _is_report(folder: Path) -> bool:
    if (folder / MANIFEST).is_file():
        return True
    try:
        data = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "config" in data and "table" in data


def _tex_caption(text: str) -> str:
    return text.replace("%", "\\%").replace("_", "\\_")


@dataclass
class BenchmarkResult:
    """What :func:`~oodlens.run_benchmark` returns."""

    config: BenchmarkConfig
    table: pd.DataFrame  #: one row per (backbone, seed, scorer, ood), plus near/far/mean rows
    runs: list[RunScores]
    timings: dict[str, float]
    info: dict[str, Any]  #: versions, plugins, cache hits, corrupt files, training, warnings
    failures: list[ScorerFailure] = field(default_factory=list)
    attention: pd.DataFrame | None = None  #: attention-area summary per run and group
    #: Mann-Whitney tests of the attention analysis, per "backbone/seed<k>"
    attention_tests: dict[str, Any] = field(default_factory=dict)
    confident_errors: list[Explanation] = field(default_factory=list)  #: for figures
    #: full-spectrum rows (``--fsood``): as ``table``, with the covariate-shifted ID sets
    #: counted as ID; None when not asked for
    fsood: pd.DataFrame | None = None

    def summary(self) -> pd.DataFrame:
        """Mean and std over seeds per (backbone, scorer, ood): columns ``metric`` and
        ``metric_std``, and ``n_seeds``."""
        return summarize_table(self.table)

    def fsood_summary(self) -> pd.DataFrame | None:
        """Both settings side by side (``--fsood``): per (backbone, scorer, OOD set or
        near/far/mean) the usual ``auroc``, ``fpr95``, ``aupr_in``, ``aupr_out`` and
        ``id_accuracy``, and the same with the covariate-shifted ID sets counted as ID
        (``auroc_fsood``, ...; ``id_accuracy_fsood`` is over ID test and those sets).
        None without ``--fsood``."""
        if self.fsood is None or self.fsood.empty:
            return None
        keys = ["backbone", "scorer", "ood", "group"]
        usual, full = self.summary(), summarize_table(self.fsood)
        cols = [c for c in FSOOD_COLUMNS if c in full.columns and c in usual.columns]
        return usual[keys + cols].merge(full[keys + cols], on=keys, suffixes=("", "_fsood"))

    def caption(self) -> str:
        """One line for every table: what the numbers are and under which convention."""
        cfg = self.config
        where = f"protocol {cfg.protocol}; " if cfg.protocol else ""
        return (
            f"OOD detection, {where}metrics in % under the {CONVENTION_NOTES[cfg.convention]}; "
            f"rejection rates at the threshold accepting {cfg.id_acceptance:.0%} of the held-out "
            "ID calib split."
        )

    def footnotes(self) -> list[str]:
        """Lines to print under a table: tuned parameters, missing protocol sets."""
        lines = []
        for run in self.runs:
            tuned = {spec: t for spec, t in run.tuning.items() if t["grid"]}
            if tuned:
                chosen = "; ".join(
                    spec + ": " + ", ".join(f"{k}={t['chosen'][k]}" for k in t["grid"])
                    for spec, t in tuned.items()
                )
                which = run.backbone if run.seed < 0 else f"{run.backbone} seed {run.seed}"
                lines.append(
                    f"Tuned on ID val + OOD val ({', '.join(o.name for o in self.config.ood_val)}) "
                    f"by AUROC, {which}: {chosen}."
                )
        for m in self.config.missing_sets:
            lines.append(
                f"Missing {m['group']}-OOD set {m['name']!r} (not found; put it at "
                f"{m['put_it_at'][0]}): skipped, not in the means."
            )
        for text, reason in (self.info.get("not_applicable") or {}).items():
            lines.append(f"Not run: {text} does not apply to {reason}.")
        stages = self.info.get("stage_scorers_not_run")
        if stages:
            lines.append(
                f"Not run: the scorer(s) on earlier stages {', '.join(stages)} (they add every "
                "stage's features to the extraction); add them with --scorers all+model."
            )
        skipped = self.info.get("model_aware_not_run")
        if skipped:
            lines.append(
                f"Not run: the model-aware scorer(s) {', '.join(skipped)} (own passes over the "
                "images, slow on large sets); add them with --scorers all+model."
            )
        return lines

    def save(
        self,
        out_dir: str | os.PathLike[str],
        formats: Sequence[str] = DEFAULT_FORMATS,
        plots: bool = True,
    ) -> Path:
        """Write the report folder: ``results.json`` (config, versions, plugins, timings,
        failures, tables) and ``scores.csv.gz`` (every scored sample with each scorer's
        score, so any metric can be recomputed) always, figures unless ``plots`` is off,
        and each of ``formats`` (see :data:`REPORT_FORMATS`: ``results.md``,
        ``results.csv`` and ``table_full.csv``, ``results.tex``, the OpenOOD layout, a
        self-contained HTML page).

        The folder is written under a temporary name and renamed into place, so an
        interrupted save leaves the previous report intact; an existing folder that is not
        an oodlens report is never replaced (see :func:`check_report_dir`), and in an
        earlier report only the files oodlens wrote (its manifest,
        ``.oodlens-manifest.json``) are replaced: a notebook or a ``paper/`` folder a user
        put there is kept, byte for byte (see :func:`oodlens.files.report_dir`).
        """
        bad = sorted(set(formats) - set(REPORT_FORMATS))
        if bad:
            raise ValueError(f"Unknown format(s) {bad}; valid: {', '.join(REPORT_FORMATS)}.")
        out = check_report_dir(out_dir)
        with report_dir(out, legacy=LEGACY_REPORT_FILES.__contains__) as tmp:
            self._write(tmp, formats, plots)
        return out

    def _write(self, out: Path, formats: Sequence[str], plots: bool) -> None:
        summary = self.summary()
        if self.runs:
            groups = {o.name: o.group for o in self.config.ood}
            pd.concat([r.per_sample(groups) for r in self.runs], ignore_index=True).to_csv(
                out / "scores.csv.gz", index=False
            )
        if self.attention is not None:
            self.attention.to_csv(out / "attention.csv", index=False)
        published = self.info.get("published")
        if published is not None:  # the same records as results.json's info.published.rows
            pd.DataFrame(published["rows"], columns=list(PUBLISHED_COLUMNS)).to_csv(
                out / "published.csv", index=False
            )
            (out / "published.md").write_text(published_markdown(published))
        side = self.fsood_summary()
        if side is not None:
            side.to_csv(out / "fsood.csv", index=False)
            (out / "fsood.md").write_text(f"{FSOOD_CAPTION}\n\n{fsood_markdown(side)}")
        figures = self._all_figures(out) if plots else []
        ctx = ReportContext(
            summary,
            self.caption(),
            self.footnotes(),
            figures,
            json_safe(self._payload(summary, figures, side)),
        )
        for name in dict.fromkeys(["json", *formats]):
            REPORT_FORMATS[name].write(self, out, ctx)

    def _payload(
        self, summary: pd.DataFrame, figures: list[str], fsood: pd.DataFrame | None
    ) -> dict[str, Any]:
        """The content of ``results.json``."""
        return {
            "report_version": REPORT_VERSION,
            "config": self.config.to_dict(),
            "versions": self.info.get("versions", {}),
            "plugins": self.info.get("plugins", {}),
            "timings_s": self.timings,
            "info": {k: v for k, v in self.info.items() if k not in ("versions", "plugins")},
            "failures": [f.__dict__ for f in self.failures],
            "figures": figures,
            "summary": summary.to_dict(orient="records"),
            "attention": None
            if self.attention is None
            else self.attention.to_dict(orient="records"),
            "attention_tests": self.attention_tests,
            "thresholds": {f"{r.backbone}/seed{r.seed}": r.thresholds for r in self.runs},
            "conformal_calibration": {
                f"{r.backbone}/seed{r.seed}": r.calibration for r in self.runs if r.calibration
            },
            "tuning": {f"{r.backbone}/seed{r.seed}": r.tuning for r in self.runs if r.tuning},
            "table": self.table.to_dict(orient="records"),
            "fsood": None if fsood is None else fsood.to_dict(orient="records"),
        }

    def _all_figures(self, out: Path) -> list[str]:
        """Every figure this run has data for, written into ``out``; their file names."""
        figures = self._figures(out) if self.runs and self.runs[0].scores else []
        if self.runs and self.runs[0].calibration:
            run = self.runs[0]
            path = plot_calibration(
                run.calibration,
                f"Conformal calibration on ID test, {run.backbone}",
                out / "calibration.png",
            )
            figures.append(path.name)
        if self.attention is not None and self.confident_errors:
            path = plot_explanations(
                self.confident_errors[0],
                out / "confident_errors.png",
                title="Most confident ID errors (highest score first)",
            )
            figures.append(path.name)
        return figures

    def _figures(self, out: Path) -> list[str]:
        run = self.runs[0]
        oods = [o.name for o in self.config.ood]
        written = [
            plot_roc(run.scores, oods, f"ROC, {run.backbone} (seed {run.seed})", out / "roc.png"),
            plot_score_distributions(run.scores, oods, out / "score_distributions.png"),
            plot_risk_coverage(
                {k: v["id"] for k, v in run.scores.items()},
                run.id_correct,
                f"Risk-coverage, {run.backbone}",
                out / "risk_coverage.png",
            ),
        ]
        return [p.name for p in written]


@dataclass(frozen=True)
class ReportContext:
    """What every report writer gets besides the result: computed once per save."""

    summary: pd.DataFrame  #: :meth:`BenchmarkResult.summary`
    caption: str  #: :meth:`BenchmarkResult.caption`
    notes: list[str]  #: :meth:`BenchmarkResult.footnotes`
    figures: list[str]  #: the figure files written into the folder
    payload: dict[str, Any]  #: the content of results.json (JSON-safe)

    @property
    def notes_text(self) -> str:
        """The footnotes as paragraphs under a Markdown table."""
        return "".join(f"\n{line}\n" for line in self.notes)


@dataclass(frozen=True)
class ReportFormat:
    """One report format: what ``--format NAME`` writes into the folder, and (for the table
    formats) how ``oodlens bench`` shows it in the terminal."""

    name: str  #: the ``--format`` value
    write: Callable[[BenchmarkResult, Path, ReportContext], None]  #: writes the files
    description: str  #: one line for ``--help``
    #: the table printed in the terminal for this format (None: the Markdown one)
    terminal: Callable[[pd.DataFrame], str] | None = None


def _write_md(result: BenchmarkResult, out: Path, ctx: ReportContext) -> None:
    (out / "results.md").write_text(f"{ctx.caption}\n\n{to_markdown(ctx.summary)}{ctx.notes_text}")


def _write_csv(result: BenchmarkResult, out: Path, ctx: ReportContext) -> None:
    ctx.summary.to_csv(out / "results.csv", index=False)
    result.table.to_csv(out / "table_full.csv", index=False)


def _write_json(result: BenchmarkResult, out: Path, ctx: ReportContext) -> None:
    (out / "results.json").write_text(json.dumps(ctx.payload, indent=2, default=str))


def _write_tex(result: BenchmarkResult, out: Path, ctx: ReportContext) -> None:
    (out / "results.tex").write_text(to_latex(ctx.summary, caption=_tex_caption(ctx.caption)))


def _write_openood(result: BenchmarkResult, out: Path, ctx: ReportContext) -> None:
    summary, caption = ctx.summary, ctx.caption
    (out / "openood.md").write_text(f"{caption}\n\n{openood_markdown(summary)}{ctx.notes_text}")
    openood_table(summary, full=True, bold="{}").to_csv(out / "openood.csv", index=False)
    (out / "openood.tex").write_text(openood_latex(summary, _tex_caption(caption)))


def _write_html(result: BenchmarkResult, out: Path, ctx: ReportContext) -> None:
    notes = ctx.notes + [f"warning: {w}" for w in result.info.get("warnings", [])]
    page = render_html(
        ctx.summary, None, ctx.caption, notes, figure_bytes(out, ctx.figures), ctx.payload
    )
    (out / "report.html").write_text(page)


def _terminal_md(summary: pd.DataFrame) -> str:
    return to_markdown(summary, metric_columns(summary.columns, "terminal"))


#: The report formats, by ``--format`` name (``json`` is always written).
REPORT_FORMATS: dict[str, ReportFormat] = {
    f.name: f
    for f in (
        ReportFormat("md", _write_md, "results.md: the tables in Markdown", _terminal_md),
        ReportFormat("csv", _write_csv, "results.csv (summary) and table_full.csv (every row)"),
        ReportFormat("json", _write_json, "results.json (always written)"),
        ReportFormat("tex", _write_tex, "results.tex: a booktabs LaTeX table"),
        ReportFormat(
            "openood",
            _write_openood,
            "OpenOOD's layout (one row per scorer, near/far means) as md, csv and tex",
            openood_markdown,
        ),
        ReportFormat("html", _write_html, "report.html: one self-contained page with figures"),
    )
}
