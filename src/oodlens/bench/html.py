"""A self-contained HTML page for one benchmark run: the tables, the figures embedded as data
URIs, the configuration, versions, timings and the metric convention, readable from the
file system without a server."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .report import table_parts

__all__ = ["render_html"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.left, th.left { text-align: left; }
figure { display: inline-block; margin: 0.5em; } img { max-width: 560px; border: 1px solid #eee; }
.note { color: #555; font-size: 0.9em; } pre { background: #f7f7f7; padding: 0.8em; overflow: auto; }
"""

# after loading, the page records how many tables are visible and how many figures decoded,
# so a headless browser test can read the result from the DOM
_CHECK = """
window.addEventListener("load", () => {
  const tables = [...document.querySelectorAll("table")].filter(
    (t) => t.offsetHeight > 0 && getComputedStyle(t).display !== "none");
  const images = [...document.querySelectorAll("img")];
  document.body.dataset.tablesVisible = tables.length;
  document.body.dataset.figuresLoaded = images.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.figures = images.length;
});
"""


def _table(t: pd.DataFrame, left: Sequence[str]) -> str:
    head = "".join(
        f'<th class="{"left" if c in left else ""}">{html.escape(str(c))}</th>' for c in t.columns
    )
    rows = []
    for row in t.itertuples(index=False):
        cells = []
        for c, v in zip(t.columns, row, strict=True):
            text = html.escape(str(v))
            if text.startswith("**") and text.endswith("**"):
                text = f"<b>{text[2:-2]}</b>"
            cells.append(f'<td class="{"left" if c in left else ""}">{text}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_html(
    summary: pd.DataFrame,
    columns: Sequence[str] | None,
    caption: str,
    notes: Sequence[str],
    figures: Mapping[str, bytes],
    payload: Mapping[str, Any],
) -> str:
    """The page: caption, the per-model ID table and the per-set OOD table (best in bold;
    ``columns``: the metric columns, default those the metric catalogue shows in tables),
    notes, every figure (PNG bytes, embedded), then configuration, versions, plugins,
    timings and failures from ``payload`` (the results.json content)."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>oodlens benchmark report</title>",
        f"<style>{_STYLE}</style><script>{_CHECK}</script></head><body>",
        "<h1>oodlens benchmark report</h1>",
        f"<p class='note'>{html.escape(caption)}</p>",
    ]
    if not summary.empty:
        for title, t, left in table_parts(summary, columns):
            parts += [f"<h2>{html.escape(title)}</h2>", _table(t, left)]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    if figures:
        parts.append("<h2>Figures</h2>")
        for name, data in figures.items():
            uri = "data:image/png;base64," + base64.b64encode(data).decode()
            parts.append(
                f"<figure><img src='{uri}' alt='{html.escape(name)}'>"
                f"<figcaption>{html.escape(name)}</figcaption></figure>"
            )
    for title, key in (
        ("Failures", "failures"),
        ("Configuration", "config"),
        ("Versions", "versions"),
        ("Plugins", "plugins"),
        ("Timings (s)", "timings_s"),
    ):
        value = payload.get(key)
        if value:
            text = json.dumps(value, indent=2, default=str)
            parts += [f"<h2>{title}</h2>", f"<pre>{html.escape(text)}</pre>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def figure_bytes(folder: Path, names: Sequence[str]) -> dict[str, bytes]:
    """The PNG figures written in ``folder``, by name."""
    return {n: (folder / n).read_bytes() for n in names if n.endswith(".png")}
