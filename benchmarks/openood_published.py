"""Write OpenOOD v1.5's published results into the protocol file, as data.

OpenOOD publishes its leaderboard as CSV files (repository ``zjysteven/OpenOOD``, branch
``leaderboard``, ``results/<benchmark>.csv``): per training method, post-processor and
network, the near-OOD and far-OOD AUROC and the ID accuracy, as ``mean ± std`` over its
checkpoints (ImageNet-1k rows are single torchvision checkpoints: no std; ``/`` where a value
is not given). No per-set numbers and no FPR@95 are published. This script copies the rows
of networks trained with plain cross-entropy (the post-hoc setting oodlens's scorers are
in), exactly as written, into a ``published:`` block of each protocol of
``src/oodlens/protocols/openood_v1_5.yaml``, with the source (repository, file, commit) and
the name map from OpenOOD's post-processors to oodlens scorer specs.

    python benchmarks/openood_published.py --leaderboard PATH_TO_CHECKOUT          # write
    python benchmarks/openood_published.py --leaderboard PATH_TO_CHECKOUT --check  # compare

``PATH_TO_CHECKOUT``: a git clone of ``zjysteven/OpenOOD`` (any branch; the files are read
from ``--commit``).
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOCOLS = HERE.parent / "src" / "oodlens" / "protocols" / "openood_v1_5.yaml"
REPOSITORY = "zjysteven/OpenOOD"
COMMIT = "28d3a40b613c452af379e687f46cbb426a9ea36b"
BEGIN = "  # published: written by benchmarks/openood_published.py, do not edit by hand"
END = "  # end of published"

#: protocol -> (its standard results file, its full-spectrum results file or None)
FILES = {
    "cifar10": ("results/cifar10.csv", None),
    "cifar100": ("results/cifar100.csv", None),
    "imagenet200": ("results/imagenet200_ood.csv", "results/imagenet200_fsood.csv"),
    "imagenet1k": ("results/imagenet1k_ood.csv", "results/imagenet1k_fsood.csv"),
}

#: OpenOOD's post-processor -> (oodlens spec of the same method and settings, how OpenOOD
#: runs it: its configs/postprocessors/<name>.yml at Jingkang50/OpenOOD@3c35632; "APS" =
#: OpenOOD's automatic parameter search on its validation sets). None: no oodlens scorer.
METHODS: dict[str, tuple[str | None, str]] = {
    "MSP": ("msp", ""),
    "TempScale": ("temperature_msp", "temperature fitted on ID validation data"),
    "ODIN": ("odin", "T 1000, noise 0.0014; APS over T 1-1000 and noise 0.0014-0.0028"),
    "MDS": ("mahalanobis", ""),
    "RMDS": ("rmd", ""),
    "EBO": ("energy", "T 1"),
    "GradNorm": ("gradnorm", ""),
    "ReAct": ("react", "percentile 90; APS over 85-99"),
    "MLS": ("max_logit", ""),
    "KLM": ("kl_matching", ""),
    "VIM": ("vim:dim=256", "dim 256; APS over 256 and 1000"),
    "KNN": ("knn", "K 50; APS over 50-1000"),
    "DICE": ("dice", "p 90"),
    "ASH": ("ash:variant=b,percentile=90", "ASH-B at percentile 90; APS over 65-95"),
    "SHE": ("she", "inner product"),
    "GEN": ("gen", "gamma 0.1, M 100; APS over gamma 0.01-10 and M 10-1000"),
    "SCALE": ("scale", "percentile 85; APS over 65-95"),
    "NNGuide": (
        "nnguide:k=100",
        "K 100 over a bank of 1% of the training features (alpha 0.01); oodlens uses them all",
    ),
}
#: On more than 100 classes GEN's M = 100 keeps the top 100 probabilities.
MANY_CLASSES = {"GEN": ("gen:top_m=100", METHODS["GEN"][1])}


def _read(checkout: Path, commit: str, path: str) -> list[dict[str, str]]:
    text = subprocess.run(
        ["git", "-C", str(checkout), "show", f"{commit}:{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return list(csv.DictReader(io.StringIO(text)))


def _value(text: str) -> str:
    """A published cell as YAML: the text as given (``"88.03 ± 0.25"``, ``"76.02"``), or null."""
    text = text.strip()
    return "null" if text in ("", "/") else f'"{text}"'


def block(name: str, checkout: Path, commit: str) -> str:
    """The ``published:`` block of one protocol, as YAML text (two-space indented)."""
    standard, fsood = FILES[name]
    lines = [
        BEGIN,
        "  published:",
        f"    source: {{repository: {REPOSITORY}, branch: leaderboard, commit: {commit}, "
        f"file: {standard}" + (f", fsood_file: {fsood}" if fsood else "") + "}",
        "    training: CrossEntropy",
        "    methods:",
    ]
    settings = {}
    for setting, path in (("ood", standard), ("fsood", fsood)):
        if path is None:
            continue
        for row in _read(checkout, commit, path):
            if row["Training"] != "CrossEntropy":
                continue
            net = settings.setdefault(row["Arch"], {"note": row["Additional_Description"]})
            net.setdefault(setting, []).append(row)
    names = sorted(
        {row["Postprocessor"] for net in settings.values() for rows in net.values()
         if isinstance(rows, list) for row in rows},
        key=str.lower,
    )  # fmt: skip
    methods = {**METHODS, **(MANY_CLASSES if name.startswith("imagenet") else {})}
    for method in names:
        ours, variant = methods.get(method, (None, ""))
        spec = "null" if ours is None else f'"{ours}"'
        extra = f', settings: "{variant}"' if variant else ""
        lines.append(f'      "{method}": {{ours: {spec}{extra}}}')
    lines.append("    networks:")
    for arch, net in settings.items():
        lines.append(f'      "{arch}":')
        lines.append(f'        note: "{net["note"]}"')
        for setting in ("ood", "fsood"):
            if setting not in net:
                continue
            lines.append(f"        {setting}:")
            for row in net[setting]:
                lines.append(
                    f'          "{row["Postprocessor"]}": {{near: {_value(row["Near-OOD_AUROC"])}, '
                    f"far: {_value(row['Far-OOD_AUROC'])}, "
                    f"id_accuracy: {_value(row['ID_Accuracy'])}}}"
                )
    lines.append(END)
    return "\n".join(lines)


def write(text: str, blocks: dict[str, str]) -> str:
    """The protocol file with each protocol's published block replaced (or added at the end
    of the protocol's mapping)."""
    out, lines, i = [], text.splitlines(), 0
    current = None
    while i < len(lines):
        line = lines[i]
        if line and not line.startswith((" ", "#")) and line.endswith(":"):
            if current in blocks:
                out.append(blocks.pop(current))
            current = line[:-1]
        if line == BEGIN:
            while lines[i] != END:
                i += 1
            i += 1
            continue
        out.append(line)
        i += 1
    if current in blocks:
        out.append(blocks.pop(current))
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--leaderboard", required=True, help="a git clone of zjysteven/OpenOOD")
    ap.add_argument("--commit", default=COMMIT, help=f"the commit to read (default {COMMIT})")
    ap.add_argument("--check", action="store_true", help="compare, do not write (exit 1 if stale)")
    args = ap.parse_args()
    blocks = {name: block(name, Path(args.leaderboard), args.commit) for name in FILES}
    text = PROTOCOLS.read_text()
    new = write(text, dict(blocks))
    if args.check:
        print("up to date" if new == text else "differs: run without --check")
        return 0 if new == text else 1
    PROTOCOLS.write_text(new)
    print(f"wrote the published blocks of {', '.join(blocks)} into {PROTOCOLS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
