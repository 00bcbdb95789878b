"""Our numbers beside a protocol's published ones (``oodlens bench --compare-published``).

For every (backbone, scorer) of a run and each of near- and far-OOD: our mean AUROC over the
group's sets (OpenOOD's convention), the published mean ± std of the method the name map
ties to the scorer, ``ours - published``, and a flag where the difference exceeds the
published std plus our own uncertainty (the bootstrap interval's half-width of our mean, or
the std over seeds). A difference is read correctly only beside what it compares:

* a scorer whose settings differ from the published method's (e.g. ASH-S at 65 against
  OpenOOD's ASH-B at 90) is marked as a variant, with both settings;
* a mean over fewer sets than the published one (a set missing here), over a subset (a set
  smaller than the split it names), or with sets the published mean does not have (a
  stand-in) is marked partial, naming which.

A scorer with no published counterpart gets no published columns; published methods with
no oodlens scorer are listed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..metrics import auroc
from ..protocol import Protocol, PublishedValue
from ..registry import parse_scorer_spec

__all__ = ["COLUMNS", "compare_published", "published_markdown", "mean_auroc_interval"]

#: The columns of the comparison (CSV and JSON alike), one row per backbone, scorer, group.
COLUMNS = (
    "backbone",
    "scorer",
    "group",
    "published_method",
    "variant",
    "ours_auroc",
    "ours_interval",
    "published_auroc",
    "published_std",
    "difference",
    "flag",
    "partial",
    "coverage",
    "ours_id_accuracy",
    "published_id_accuracy",
)


def mean_auroc_interval(
    id_scores: np.ndarray,
    ood_scores: Mapping[str, np.ndarray],
    n_resamples: int,
    seed: int = 0,
    level: float = 0.95,
) -> float:
    """Half-width (in AUROC, 0-1) of a percentile bootstrap interval of the mean AUROC over
    several OOD sets scored against the same ID rows: each resample draws the ID rows once
    (every set's AUROC uses them) and each set's rows independently."""
    rng = np.random.default_rng(seed)
    ind = np.asarray(id_scores, dtype=np.float64)
    sets = [np.asarray(v, dtype=np.float64) for v in ood_scores.values()]
    means = np.empty(n_resamples)
    for b in range(n_resamples):
        rows = ind[rng.integers(0, ind.size, ind.size)]
        means[b] = np.mean([auroc(rows, s[rng.integers(0, s.size, s.size)]) for s in sets])
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return float(hi - lo) / 2.0


def _variant(text: str, chosen: Mapping[str, Any] | None, ours: str) -> str:
    """ "same" when the run's scorer has the published method's settings, else both."""
    spec, target = parse_scorer_spec(text), parse_scorer_spec(ours)
    mine = {**spec.create().get_params(), **(chosen or {})}
    theirs = target.create().get_params()
    if mine == theirs:
        return "same"
    differ = sorted(k for k in theirs if mine.get(k) != theirs[k])
    return "differs: " + ", ".join(
        f"{k} {mine.get(k)!r} here, {theirs[k]!r} published" for k in differ
    )


def _coverage(
    protocol: Protocol, group: str, ours: Sequence[str], sizes: Mapping[str, int]
) -> tuple[bool, str]:
    """Whether our group mean covers the published one's sets, and a note when it does not."""
    published = [s for s in protocol.ood if s.group == group]
    names = {s.name for s in published}
    missing = [s.name for s in published if s.name not in ours]
    extra = [n for n in ours if n not in names]
    subsets = [
        f"{s.name} {sizes[s.name]:,} of {s.size:,}"
        for s in published
        if s.name in ours and s.size is not None and sizes.get(s.name, s.size) < s.size
    ]
    notes = []
    if missing:
        notes.append(
            f"{len(published) - len(missing)} of {len(published)} sets (no {', '.join(missing)})"
        )
    if subsets:
        notes.append("subset: " + "; ".join(subsets))
    if extra:
        notes.append(f"not in the published mean: {', '.join(extra)}")
    return bool(notes), "; ".join(notes)


def compare_published(
    summary: pd.DataFrame,
    runs: Sequence[Any],
    protocol: Protocol,
    groups: Mapping[str, Sequence[str]],
    sizes: Mapping[str, int],
    network: str | None = None,
    setting: str = "ood",
    n_resamples: int = 0,
) -> dict[str, Any]:
    """The comparison with ``protocol``'s published results.

    Args:
        summary: a run's summary (:meth:`BenchmarkResult.summary`, OpenOOD's convention).
        runs: its runs (:class:`RunScores`: per scorer the ID and OOD scores, tuning).
        groups: ``{"near": [set names], "far": [...]}``: the sets of our group means.
        sizes: images of each of our OOD sets.
        network: the published network to compare with (default: the first).
        setting: ``"ood"`` or ``"fsood"`` (full-spectrum).
        n_resamples: bootstrap resamples for our interval (0: none; seeds' std if several).

    Returns ``{"protocol", "network", "setting", "source", "rows" (records with
    :data:`COLUMNS`), "without_oodlens_scorer" and "not_run" (published methods with no
    oodlens scorer, or whose scorer this run did not run), "notes"}``.
    """
    published = protocol.results
    if published is None:
        raise ValueError(f"Protocol {protocol.name!r} has no published results to compare with.")
    net = published.network(network)
    table = published.networks[net].get(setting)
    if not table:
        raise ValueError(
            f"Protocol {protocol.name!r} publishes no {setting} results for {net}"
            + (
                " (OpenOOD publishes no full-spectrum numbers for CIFAR)."
                if setting == "fsood"
                else "."
            )
        )
    by_scorer = {m.ours and parse_scorer_spec(m.ours).name: m for m in published.methods.values()}
    by_scorer.pop(None, None)
    keyed = summary.set_index(["backbone", "scorer", "ood"])
    rows = []
    for (backbone, scorer), block in summary.groupby(["backbone", "scorer"], sort=False):
        method = by_scorer.get(parse_scorer_spec(scorer).name)
        cells = table.get(method.name) if method is not None else None
        mine = [r for r in runs if r.backbone == backbone and scorer in r.scores]
        chosen = mine[0].tuning.get(scorer, {}).get("chosen") if mine else None
        variant = _variant(scorer, chosen, method.ours) if method and cells else ""
        for group in ("near", "far"):
            if (backbone, scorer, group) not in keyed.index:
                continue
            ours = keyed.loc[(backbone, scorer, group)]
            row = {
                "backbone": backbone,
                "scorer": scorer,
                "group": group,
                "published_method": method.name if method and cells else "",
                "variant": variant,
                "ours_auroc": 100 * float(ours["auroc"]),
                "ours_interval": _interval(ours, mine, scorer, groups[group], n_resamples),
                "ours_id_accuracy": 100 * float(block.iloc[0]["id_accuracy"]),
            }
            value: PublishedValue | None = cells.get(group) if cells else None
            accuracy = cells.get("id_accuracy") if cells else None
            partial, coverage = _coverage(protocol, group, groups[group], sizes)
            row.update(
                published_auroc=value.mean if value else math.nan,
                published_std=value.std if value and value.std is not None else math.nan,
                difference=row["ours_auroc"] - value.mean if value else math.nan,
                partial=partial,
                coverage=coverage,
                published_id_accuracy=accuracy.mean if accuracy else math.nan,
            )
            tolerance = (value.std or 0.0) + row["ours_interval"] if value else math.nan
            row["flag"] = bool(value) and abs(row["difference"]) > tolerance
            rows.append({k: row[k] for k in COLUMNS})
    ours_names = {parse_scorer_spec(s).name for s in summary.scorer.unique()}
    in_table = [m for m in published.methods.values() if m.name in table]
    without = sorted(m.name for m in in_table if m.ours is None)
    not_run = sorted(
        m.name
        for m in in_table
        if m.ours is not None and parse_scorer_spec(m.ours).name not in ours_names
    )
    source = published.source
    notes = [
        f"Published: {source['repository']} {source.get('file', '')} at "
        f"{str(source.get('commit', ''))[:10]}, network {net} ({published.networks[net]['note']}), "
        f"training {published.training}, {setting} setting; mean ± std over their checkpoints.",
        "flag: |ours - published| > published std + our interval "
        + (
            f"(bootstrap 95%, {n_resamples} resamples, half-width)"
            if n_resamples
            else "(no --ci: our sampling error is not included)"
        )
        + "; a partial mean or a variant may differ for that reason alone.",
    ]
    return {
        "protocol": protocol.name,
        "network": net,
        "setting": setting,
        "source": dict(source),
        "rows": rows,
        "without_oodlens_scorer": without,
        "not_run": not_run,
        "notes": notes,
    }


def _interval(
    ours: pd.Series, runs: Sequence[Any], scorer: str, sets: Sequence[str], n: int
) -> float:
    """Our uncertainty about a group mean, in percent: the std over seeds when there are
    several, else the bootstrap half-width (0 without resamples)."""
    if int(ours.get("n_seeds", 1)) > 1:
        return 100 * float(ours.get("auroc_std", 0.0))
    if not n or not runs:
        return 0.0
    scores = runs[0].scores[scorer]
    return 100 * mean_auroc_interval(
        scores["id"], {s: scores[s] for s in sets}, n, max(runs[0].seed, 0)
    )


def _cell(value: float, std: float = math.nan) -> str:
    if math.isnan(value):
        return ""
    return f"{value:.2f}" + ("" if math.isnan(std) else f" ± {std:.2f}")


def published_markdown(comparison: Mapping[str, Any]) -> str:
    """The comparison as a Markdown table (one row per backbone and scorer) with its notes."""
    rows = comparison["rows"]
    wide: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        out = wide.setdefault(
            (r["backbone"], r["scorer"]),
            {"backbone": r["backbone"], "scorer": r["scorer"], "published": r["published_method"]},
        )
        g = r["group"]
        flag = " !" if r["flag"] else ""
        interval = f" ± {r['ours_interval']:.2f}" if r["ours_interval"] else ""
        out[f"{g} ours"] = f"{r['ours_auroc']:.2f}{interval}"
        out[f"{g} published"] = _cell(r["published_auroc"], r["published_std"])
        out[f"{g} diff"] = "" if math.isnan(r["difference"]) else f"{r['difference']:+.2f}{flag}"
        out[f"{g} partial"] = "partial" if r["partial"] else ""
        out["ID acc. ours / published"] = (
            f"{r['ours_id_accuracy']:.2f} / {_cell(r['published_id_accuracy'])}"
            if not math.isnan(r["published_id_accuracy"])
            else f"{r['ours_id_accuracy']:.2f}"
        )
        out["variant"] = r["variant"]
    if not wide:
        return ""
    headers = list(dict.fromkeys(k for v in wide.values() for k in v))
    lines = [
        "| " + " | ".join(headers) + " |",
        "| "
        + " | ".join(
            "---" if h in ("backbone", "scorer", "published", "variant") else "---:"
            for h in headers
        )
        + " |",
    ]
    lines += ["| " + " | ".join(v.get(h, "") for h in headers) + " |" for v in wide.values()]
    coverage = {r["group"]: r["coverage"] for r in rows if r["coverage"]}
    notes = [f"partial {g}: {c}" for g, c in coverage.items()]
    if comparison["not_run"]:
        notes.append("published, not in this run: " + ", ".join(comparison["not_run"]))
    if comparison["without_oodlens_scorer"]:
        notes.append(
            "published, no oodlens scorer: " + ", ".join(comparison["without_oodlens_scorer"])
        )
    return "\n".join(lines + [""] + comparison["notes"] + notes) + "\n"
