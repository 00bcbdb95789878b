"""The ``oodlens`` command line. The CLI owns the terminal; the library only logs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _registry

__all__ = ["main"]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([line.rstrip(), sep, *body])


def _cmd_scorers(args: argparse.Namespace) -> int:
    entries = [
        e
        for e in _registry.list_entries("scorer")
        if e.name in _registry.list_scorers(args.pattern)
    ]
    rows = [(e.name, e.distribution, ", ".join(e.requires), e.description) for e in entries]
    print(_table(("name", "distribution", "requires", "description"), rows))
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    plugins, failures = _registry.plugin_report()
    rows = [(p.plugin, p.distribution, ", ".join(p.hooks)) for p in plugins]
    print(_table(("plugin", "distribution", "hooks"), rows))
    if failures:
        print("\nFailed to load:")
        frows = [(f.plugin, f.distribution, f.stage, f.error) for f in failures]
        print(_table(("plugin", "distribution", "stage", "error"), frows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``oodlens`` command."""
    parser = argparse.ArgumentParser(
        prog="oodlens", description="OOD detection and explanation for image classifiers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("scorers", help="list the installed scorers")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. '*kde*'")
    p.set_defaults(func=_cmd_scorers)
    p = sub.add_parser("plugins", help="list installed plugins and load failures")
    p.set_defaults(func=_cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as exc:
        print(f"oodlens: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
