"""The logit-KDE study: can a density over logits become a good OOD score?

    python benchmarks/logit_kde_study.py [--data-root ../shared/data] [--only cifar10]

Compares the two existing modes of ``logit_kde`` with variants that a density over logits
suggests, on the CIFAR-10 benchmark (the shared checkpoint) and on cats vs dogs (the model
``make bench-real`` trains; its checkpoint comes from the cache, so run that first):

* ``marginal``: the origin's average of per-column 1-D densities (the default mode);
* ``cc_top1``: class-conditional 1-D density of the top logit (``mode="class_conditional"``);
* ``cc_full``: class-conditional Gaussian KDE over the **whole** logit vector of the
  predicted class's training rows, scored as a log-density (exact, in blocks);
* ``cc_full_heldout``: the same, fitted on held-out ID data (the ``val`` split) instead of
  the training rows, on which the network is over-confident;
* ``cc_top1_onesided``: the class-conditional top-logit density, but a top logit above the
  class's densest value scores as that value: over-confidence is not punished
  (``mode="class_conditional", one_sided=True``).

Every variant is scored on ID ``val`` against an OOD validation set (Fashion-MNIST, never a
test set) to choose, and reported on the test sets (near = CIFAR-100; far = the mean of the
far sets), beside MSP and max-logit. Writes benchmarks/results/logit_kde_study.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

import oodlens
from oodlens.bench import OODSet, load_config, run_benchmark
from oodlens.metrics import auroc
from oodlens.scorers.kde import bandwidth_factor

HERE = Path(__file__).resolve().parent


def full_kde_log_density(train: np.ndarray, points: np.ndarray, block: int = 256) -> np.ndarray:
    """log of a Gaussian KDE (Scott's factor, scipy's covariance convention) at ``points``."""
    n, d = train.shape
    cov = np.atleast_2d(np.cov(train.T)) * bandwidth_factor("scott", n, d) ** 2
    chol = np.linalg.cholesky(cov + 1e-9 * np.trace(cov) / d * np.eye(d))
    zt = np.linalg.solve(chol, train.T).T
    log_norm = -math.log(n) - 0.5 * d * math.log(2 * math.pi) - np.log(np.diag(chol)).sum()
    out = np.empty(len(points))
    for s in range(0, len(points), block):
        zp = np.linalg.solve(chol, points[s : s + block].T).T
        sq = (zp**2).sum(1)[:, None] - 2 * zp @ zt.T + (zt**2).sum(1)[None, :]
        out[s : s + block] = logsumexp(-0.5 * np.maximum(sq, 0), axis=1) + log_norm
    return out


def class_conditional_full(
    fit: oodlens.Outputs, labels: np.ndarray, logits: np.ndarray
) -> np.ndarray:
    """Log-density of each row's logits under the KDE of its predicted class."""
    pred = logits.argmax(1)
    out = np.full(len(logits), -np.inf)
    for c in np.unique(pred):
        rows = np.asarray(fit.logits)[labels == c]
        if len(rows) <= logits.shape[1]:
            continue  # too few rows for a full-dimensional density: lowest score
        out[pred == c] = full_kde_log_density(rows, logits[pred == c])
    return np.where(np.isfinite(out), out, np.min(out[np.isfinite(out)]) - 1.0)


def variants(out: dict[str, oodlens.Outputs]) -> dict[str, dict[str, np.ndarray]]:
    """Scores of every variant on ID val, ID test and each OOD set (and OOD val)."""
    train, val = out["id_train"], out["id_val"]
    keys = [k for k in out if k not in ("id_train", "id_calib")]
    res: dict[str, dict[str, np.ndarray]] = {}
    for name, params in (
        ("msp", {}),
        ("max_logit", {}),
        ("marginal", {}),
        ("cc_top1", {"mode": "class_conditional"}),
    ):
        scorer_name = name if name in ("msp", "max_logit") else "logit_kde"
        s = oodlens.create_scorer(scorer_name, **params).fit(train)
        res[name] = {k: s.score(out[k]) for k in keys}
    res["cc_full"] = {
        k: class_conditional_full(train, train.labels, np.asarray(out[k].logits)) for k in keys
    }
    # held-out fit: half of val fits, the other half is the ID validation rows for choosing
    half = np.arange(val.n_samples) % 2 == 0
    fit_rows = val.subset(half)
    res["cc_full_heldout"] = {
        k: class_conditional_full(fit_rows, fit_rows.labels, np.asarray(out[k].logits))
        for k in keys
    }
    res["cc_full_heldout"]["id_val"] = res["cc_full_heldout"]["id_val"][~half]
    for name in res:
        if name != "cc_full_heldout":
            res[name]["id_val"] = res[name]["id_val"][~half]  # the same validation rows for all
    s = oodlens.create_scorer("logit_kde", mode="class_conditional", one_sided=True).fit(train)
    res["cc_top1_onesided"] = {k: s.score(out[k]) for k in keys}
    res["cc_top1_onesided"]["id_val"] = res["cc_top1_onesided"]["id_val"][~half]
    return res


def study(name: str, out: dict[str, oodlens.Outputs], groups: dict[str, str]) -> list[str]:
    scores = variants(out)
    ood_val = next(k for k in out if k.startswith("ood_val:"))
    near = [k for k, g in groups.items() if g == "near"]
    far = [k for k, g in groups.items() if g == "far"]
    lines = [
        f"### {name}",
        "",
        f"AUROC in %; validation = half of ID val vs {ood_val.split(':')[1]} (chooses); "
        f"near = {', '.join(near) or '(none)'}; far = mean of {', '.join(far)}.",
        "",
        "| variant | validation | near | far |",
        "| --- | ---: | ---: | ---: |",
    ]
    for variant, s in scores.items():
        v = auroc(s["id_val"], s[ood_val])
        n = np.mean([auroc(s["id_test"], s[k]) for k in near]) if near else float("nan")
        f = np.mean([auroc(s["id_test"], s[k]) for k in far])
        lines.append(f"| {variant} | {100 * v:.1f} | {100 * n:.1f} | {100 * f:.1f} |")
    return lines + [""]


def outputs_of(config: str, root: Path, models_root: Path | None) -> tuple[dict, dict]:
    cfg = load_config(HERE / "configs" / config, data_root=root, models_root=models_root)
    ood_val = cfg.ood_val or (OODSet("fashion_mnist", str(root / "ood" / "fashion_mnist")),)
    cfg = dataclasses.replace(
        cfg, scorers=("msp",), alphas=(), bootstrap=0, attention=False, ood_val=ood_val
    )
    res = run_benchmark(cfg, progress=False)
    groups = {o.name: o.group for o in cfg.ood}
    return res.runs[0].outputs, groups


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--models-root", default=None)
    ap.add_argument("--only", choices=("catsdogs", "cifar10"))
    ap.add_argument("--out", default=str(HERE / "results" / "logit_kde_study.md"))
    args = ap.parse_args()
    root = Path(args.data_root)
    if not (root / "cifar10").is_dir():
        print(f"skipped: no data at {root}")
        return 0
    lines = ["# logit-KDE study (generated by benchmarks/logit_kde_study.py)", ""]
    for name, config in (
        ("CIFAR-10, shared resnet18 checkpoint", "cifar10.yaml"),
        ("cats vs dogs", "catsdogs.yaml"),
    ):
        if args.only and args.only not in config:
            continue
        out, groups = outputs_of(config, root, Path(args.models_root) if args.models_root else None)
        lines += study(name, out, groups)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
