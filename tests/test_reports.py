"""Reports people read (issue 14): bootstrap intervals, the paired test, per-sample export,
merging runs, the split tables, and the HTML page rendered in a real (headless) browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from oodlens import cli
from oodlens.stats import bootstrap_ci, paired_bootstrap

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_bootstrap_interval_covers_the_true_auroc():
    """Over many draws, the 95% interval contains the population AUROC about 95% of the time."""
    rng = np.random.default_rng(0)
    truth = 0.7602  # P(N(1,1) > N(0,1)) = Phi(1/sqrt 2)
    hits = []
    for _ in range(60):
        lo, hi = bootstrap_ci(rng.normal(1, 1, 150), rng.normal(0, 1, 150), 200)["auroc"]
        hits.append(lo <= truth <= hi)
    assert 0.85 <= np.mean(hits) <= 1.0


def test_paired_bootstrap():
    rng = np.random.default_rng(1)
    ind, ood = rng.normal(1, 1, 300), rng.normal(0, 1, 300)
    same = paired_bootstrap(ind, ood, ind, ood, 300)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    noisy_id, noisy_ood = ind + rng.normal(0, 2, 300), ood + rng.normal(0, 2, 300)
    res = paired_bootstrap(ind, ood, noisy_id, noisy_ood, 500)
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(300)], np.r_[ind, ood]) - roc_auc_score(
        np.r_[np.ones(300), np.zeros(300)], np.r_[noisy_id, noisy_ood]
    )
    assert res["diff"] == pytest.approx(expected)
    assert res["ci_low"] > 0 and res["p_value"] < 0.01


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cache_dir, digits_train):
    out = tmp_path_factory.mktemp("reports") / "run"
    rc = cli.main(
        [
            "bench",
            "--scorers",
            "msp",
            "energy",
            "vim",
            "--ci",
            "50",
            "--alpha",
            "0.05",
            "--cache-dir",
            str(cache_dir),
            "--epochs",
            str(digits_train["epochs"]),
            "--format",
            "md,csv,json,tex,html",
            "--out",
            str(out),
            "-q",
        ]  # fmt: skip
    )
    assert rc == 0
    return out


@pytest.mark.slow
def test_per_sample_export_recomputes_the_table(run_dir):
    scores = pd.read_csv(run_dir / "scores.csv.gz", keep_default_na=False)
    table = pd.read_csv(run_dir / "table_full.csv")
    ind = scores[scores.set == "id"]
    for name in ("digits5-9", "noise"):
        ood = scores[scores.set == name]
        y = np.r_[np.ones(len(ind)), np.zeros(len(ood))]
        expected = roc_auc_score(y, np.r_[ind.msp, ood.msp])
        row = table[(table.scorer == "msp") & (table.ood == name)].iloc[0]
        assert row.auroc == pytest.approx(expected, abs=1e-12)
        assert row.auroc_ci_lo <= row.auroc <= row.auroc_ci_hi
    assert ind.id.str.startswith("digits#").all()
    assert set(scores.columns) >= {"set", "group", "index", "id", "label", "prediction"}


@pytest.mark.slow
def test_tables_split_and_intervals(run_dir):
    md = (run_dir / "results.md").read_text()
    assert "ID test, per model:" in md and "OOD detection, per set:" in md
    per_set = md.split("OOD detection, per set:")[1]
    # one set per group: no near/far row repeating it, only the mean of the two
    assert "| near |" not in per_set and "| far |" not in per_set and "| mean |" in per_set
    assert re.search(r"\| msp \| digits5-9 \| \d+\.\d+ ± \d+\.\d+", per_set)
    tex = (run_dir / "results.tex").read_text()
    assert "$\\pm$" in tex


@pytest.mark.slow
def test_compare_and_merge(run_dir, tmp_path, capsys):
    rc = cli.main(["compare", str(run_dir), "--scorers", "vim", "msp", "--resamples", "200"])
    out = capsys.readouterr().out
    assert rc == 0 and "AUROC of vim - msp" in out and "digits5-9" in out and "p_value" in out
    rc = cli.main(["compare", str(run_dir), "--scorers", "vim", "nope"])
    assert rc == 2 and "['nope'] is not a scorer of" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    rc = cli.main(["merge", str(run_dir), str(other), "--out", str(tmp_path / "m")])
    assert rc == 0
    merged = pd.read_csv(tmp_path / "m" / "merged.csv")
    assert len(merged) == 2 * len(pd.read_csv(run_dir / "results.csv"))


def _render(page: Path, tmp_path: Path) -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI: .ci/run installs it (apt-get install chromium)")
        pytest.skip("Chromium is not installed (CI installs it): the HTML check needs a browser")
    result = subprocess.run(
        [
            CHROMIUM,
            *CHROME_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout


def _check_page(dom: str, n_figures: int) -> None:
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body.group(1)))
    assert int(attrs["tables-visible"]) >= 2, attrs
    assert int(attrs["figures"]) == n_figures and int(attrs["figures-loaded"]) == n_figures, attrs


@pytest.mark.slow
def test_html_report_renders_in_a_browser(run_dir, tmp_path):
    page = run_dir / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text.split("<pre>")[0]  # self-contained
    n_png = len([p for p in run_dir.iterdir() if p.suffix == ".png"])
    _check_page(_render(page, tmp_path), n_png)


def test_committed_cifar10_html_report_renders(tmp_path):
    page = ROOT / "benchmarks" / "results" / "openood_cifar10" / "html" / "report.html"
    if not page.exists():
        pytest.skip("no committed CIFAR-10 HTML report")
    _check_page(_render(page, tmp_path), len(re.findall(r"<img ", page.read_text())))


def test_many_scorers_get_a_legend_beside_the_panels(tmp_path):
    """With 30 scorers a legend inside a 4-inch panel left constrained layout no room (a
    warning in make demo); beyond 8 curves it goes beside the figure."""
    import warnings

    from oodlens.plots import plot_risk_coverage, plot_roc

    rng = np.random.default_rng(0)
    scores = {
        f"scorer_{k}:mode=long_name": {"id": rng.normal(1, 1, 50), "ood": rng.normal(0, 1, 50)}
        for k in range(30)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_roc(scores, ["ood"], "ROC", tmp_path / "roc.png")
        plot_risk_coverage(
            {k: v["id"] for k, v in scores.items()}, rng.random(50) < 0.8, "RC", tmp_path / "rc"
        )
    assert (tmp_path / "roc.png").stat().st_size > 0 and (tmp_path / "rc.png").exists()
