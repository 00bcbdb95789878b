"""Reading report folders back: a paired test between two scorers on the same rows
(``oodlens compare``) and joining several runs into one table (``oodlens merge``)."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..stats import paired_bootstrap
from .result import SAMPLE_COLUMNS

__all__ = ["compare_scorers", "merge_runs", "read_scores"]


def read_scores(run: str | os.PathLike[str]) -> pd.DataFrame:
    """The per-sample scores of a report folder (``scores.csv.gz``)."""
    path = Path(run) / "scores.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} not found: give a report folder written by oodlens bench --out "
            "(version 0.1 reports from before per-sample export have no scores file)."
        )
    try:
        scores = pd.read_csv(path, keep_default_na=False)
    except (OSError, EOFError, ValueError, zlib.error, pd.errors.ParserError) as exc:
        raise ValueError(
            f"{str(path)!r} is not a readable scores file ({type(exc).__name__}: {exc}); run "
            "oodlens bench --out again to write it."
        ) from None
    missing = [c for c in SAMPLE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks the column(s) {missing} of an oodlens scores file; run "
            "oodlens bench --out again to write it."
        )
    return scores


def compare_scorers(
    run: str | os.PathLike[str], a: str, b: str, n_resamples: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Paired bootstrap of AUROC(a) − AUROC(b) per backbone/seed and OOD set, on the rows
    both scored, and on the near and far groups (resampling every set of the group at once
    and comparing the mean AUROCs). Columns: backbone, seed, ood, auroc_a, auroc_b, diff,
    ci (95%), p_value.

    Raises:
        ValueError: fewer than 10 resamples, a column that is not a scorer of the run, the
            same scorer twice, or an unreadable scores file.
    """
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 10:
        raise ValueError(
            f"resamples={n_resamples!r} is not valid: a bootstrap needs at least 10 resamples "
            "(2,000 by default)."
        )
    scores = read_scores(run)
    valid = [c for c in scores.columns if c not in SAMPLE_COLUMNS]
    missing = [s for s in (a, b) if s not in valid]
    if missing:
        raise ValueError(
            f"{missing} {'is not a scorer' if len(missing) == 1 else 'are not scorers'} of "
            f"{str(run)!r}; its scorers: {valid}."
        )
    if a == b:
        raise ValueError(f"compare needs two different scorers, got {a!r} twice.")
    rows = []
    for (backbone, run_seed), block in scores.groupby(["backbone", "seed"], sort=False):
        ind = block[block.set == "id"]
        oods = {name: g for name, g in block[block.set != "id"].groupby("set", sort=False)}
        for name, g in oods.items():
            res = paired_bootstrap(ind[a], g[a], ind[b], g[b], n_resamples, seed)
            rows.append(_row(backbone, run_seed, name, ind, g, a, b, res))
        for group in ("near", "far"):
            members = [g for g in oods.values() if g.group.iloc[0] == group]
            if len(members) < 2:
                continue
            res = _group_test(ind, members, a, b, n_resamples, seed)
            rows.append(
                {
                    "backbone": backbone,
                    "seed": run_seed,
                    "ood": f"{group} (mean of {len(members)})",
                    **res,
                }
            )
    return pd.DataFrame(rows)


def _row(backbone, seed, name, ind, g, a, b, res) -> dict:
    from ..metrics import auroc

    return {
        "backbone": backbone,
        "seed": seed,
        "ood": name,
        "auroc_a": round(100 * auroc(ind[a], g[a]), 2),
        "auroc_b": round(100 * auroc(ind[b], g[b]), 2),
        "diff": round(100 * res["diff"], 2),
        "ci": f"[{100 * res['ci_low']:.2f}, {100 * res['ci_high']:.2f}]",
        "p_value": float(f"{res['p_value']:.4g}"),
    }


def _group_test(ind, members, a, b, n_resamples, seed) -> dict:
    from ..metrics import auroc

    rng = np.random.default_rng(seed)
    ia, ib = ind[a].to_numpy(), ind[b].to_numpy()
    sets = [(m[a].to_numpy(), m[b].to_numpy()) for m in members]

    def mean_diff(ri, ros):
        da = np.mean([auroc(ia[ri], sa[r]) for (sa, _), r in zip(sets, ros, strict=True)])
        db = np.mean([auroc(ib[ri], sb[r]) for (_, sb), r in zip(sets, ros, strict=True)])
        return da, db

    full_a, full_b = mean_diff(np.arange(ia.size), [np.arange(sa.size) for sa, _ in sets])
    diffs = []
    for _ in range(n_resamples):
        ri = rng.integers(0, ia.size, ia.size)
        ros = [rng.integers(0, sa.size, sa.size) for sa, _ in sets]
        da, db = mean_diff(ri, ros)
        diffs.append(da - db)
    diffs = np.asarray(diffs)
    side = min(np.mean(diffs <= 0.0), np.mean(diffs >= 0.0))
    return {
        "auroc_a": round(100 * full_a, 2),
        "auroc_b": round(100 * full_b, 2),
        "diff": round(100 * (full_a - full_b), 2),
        "ci": f"[{100 * np.percentile(diffs, 2.5):.2f}, {100 * np.percentile(diffs, 97.5):.2f}]",
        "p_value": float(f"{max(min(1.0, 2 * side), 1 / (n_resamples + 1)):.4g}"),
    }


def merge_runs(runs: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """The summaries (``results.csv``) of several report folders as one table, e.g. runs of
    several backbones on the same sets, with a first column ``run`` telling them apart (the
    folder's name, or its path as given when two folders share a name). Runs under
    different metric conventions refuse to merge."""
    frames, conventions = [], {}
    names = [Path(r).name for r in runs]
    for run, name in zip(runs, names, strict=True):
        path = Path(run)
        if not (path / "results.csv").is_file():
            raise FileNotFoundError(
                f"{str(path / 'results.csv')!r} not found: not a report folder."
            )
        frame = pd.read_csv(path / "results.csv")
        label = name if names.count(name) == 1 else str(run)
        frames.append(frame.drop(columns=["run"], errors="ignore").assign(run=label))
        try:
            config = json.loads((path / "results.json").read_text())["config"]
        except (OSError, ValueError, KeyError):
            config = {}
        conventions[str(path)] = config.get("convention", "oodlens")
    if len(set(conventions.values())) > 1:
        raise ValueError(f"The runs use different metric conventions: {conventions}.")
    merged = pd.concat(frames, ignore_index=True)
    return merged[["run", *[c for c in merged.columns if c != "run"]]]
