"""Copy measured results into the docs, so that a number in the docs cannot go stale.

A page quotes a results file between two marks::

    <!-- results: benchmarks/results/pipeline_overhead.txt -->
    ```text
    (the file's text, verbatim)
    ```
    <!-- /results -->

Each benchmark script writes its file under ``benchmarks/results/``; this script (run last
by ``make bench`` and ``make bench-real``) puts every quoted file's current text between its
marks. ``tests/test_docs.py`` fails when a quote differs from its file, so a rerun that is
not synced, or a hand edit of a quoted number, does not go unnoticed.

    python benchmarks/sync_docs.py           # rewrite the quotes
    python benchmarks/sync_docs.py --check   # only report the quotes that differ (exit 1)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: A quote: the opening mark naming the file, a fenced block, the closing mark.
QUOTE = re.compile(
    r"(?P<open><!-- results: (?P<file>\S+) -->\n```(?P<lang>\w*)\n)(?P<body>.*?)(?P<close>```\n<!-- /results -->)",
    re.S,
)


def quotes(text: str) -> list[re.Match[str]]:
    """The quotes of a page, in order."""
    return list(QUOTE.finditer(text))


def synced(text: str) -> str:
    """``text`` with every quote replaced by its file's current text."""

    def body(match: re.Match[str]) -> str:
        path = ROOT / match["file"]
        if not path.is_file():
            raise FileNotFoundError(f"quoted results file {match['file']!r} does not exist")
        content = path.read_text()
        return match["open"] + content + ("" if content.endswith("\n") else "\n") + match["close"]

    return QUOTE.sub(body, text)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--check", action="store_true", help="report, do not write")
    args = ap.parse_args()
    stale = []
    for page in PAGES:
        text = page.read_text()
        new = synced(text)
        if new != text:
            stale.append(page.relative_to(ROOT).as_posix())
            if not args.check:
                page.write_text(new)
    verb = "differ from their results files" if args.check else "updated"
    print(f"{len(stale)} page(s) {verb}" + (f": {', '.join(stale)}" if stale else ""))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
