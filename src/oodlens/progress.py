"""Progress of the long phases (training, extraction, the model-aware scorers' passes,
fitting and scoring), on a terminal and in a log file alike.

On a terminal: a tqdm bar on stderr, cleared when the phase ends. Elsewhere (a log file,
SLURM, ``nohup``): tqdm's own meter (counts, share, elapsed and remaining time, rate)
written as one plain, timestamped line once the phase has run 5 seconds, then about every
30 seconds (``$OODLENS_PROGRESS_INTERVAL`` seconds; 0: at every step, from the start), and
when it ends, instead of a bar redrawn with carriage returns that a log file shows as one
endless line; a phase shorter than that leaves no line. ``enabled=False`` (``-q``)
silences both.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

__all__ = ["progress_bar", "progress_note", "log_interval"]

#: A progress line: counts, share, elapsed and remaining time, rate (tqdm's fields).
_LINE = (
    "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) in {elapsed}, {remaining} left, "
    "{rate_fmt}{postfix}"
)

#: Terminal control sequences (tqdm moves the cursor between nested bars).
_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def log_interval() -> float:
    """Seconds between two progress lines in a log file (``$OODLENS_PROGRESS_INTERVAL``,
    default 30)."""
    text = os.environ.get("OODLENS_PROGRESS_INTERVAL", "30")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"OODLENS_PROGRESS_INTERVAL={text!r} is not a number of seconds; set it to e.g. 30."
        ) from None
    if value < 0:
        raise ValueError(f"OODLENS_PROGRESS_INTERVAL={text!r} must be 0 or more seconds.")
    return value


class _Lines:
    """A file for tqdm that turns each redraw (a carriage return, then the meter) into one
    timestamped line, without terminal control sequences or repeats."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> int:
        for piece in _CONTROL.sub("", text).replace("\r", "\n").split("\n"):
            piece = piece.strip()
            if piece and piece != self.last:  # tqdm redraws the final state when it closes
                self.stream.write(f"[{time.strftime('%H:%M:%S')}] {piece}\n")
                self.last = piece
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _interactive(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
) -> Any:
    """A tqdm progress bar (iterate over it, or ``update(n)`` it) that suits where stderr
    goes: a bar on a terminal, timestamped lines in a file (see the module docstring)."""
    from tqdm.auto import tqdm

    stream = sys.stderr
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if _interactive(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=stream)
    interval = log_interval()
    known = total is not None or hasattr(iterable, "__len__")
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=_Lines(stream),
        mininterval=interval,
        delay=min(interval, 5.0),
        miniters=1,
        bar_format=_LINE if known else None,
        leave=True,
    )


def progress_note(text: str, enabled: bool = True) -> None:
    """One line of progress (e.g. an epoch's loss and accuracy) on stderr, above a running
    bar on a terminal; nothing when ``enabled`` is False."""
    if not enabled:
        return
    from tqdm.auto import tqdm

    stream = sys.stderr
    line = text if _interactive(stream) else f"[{time.strftime('%H:%M:%S')}] {text}"
    tqdm.write(line, file=stream)
