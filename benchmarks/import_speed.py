"""How light ``import oodlens; oodlens.list_scorers()`` is: its wall time in a fresh process
against a bare ``import numpy`` (the floor any numpy library pays), run side by side,
interleaved, best of N each.

    python benchmarks/import_speed.py [--repeats 7]

Target: below 1 s and no torch (``tests/test_structure.py`` checks the second; a test never
asserts a time, which a loaded machine makes flaky).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

OODLENS = "import sys, oodlens; oodlens.list_scorers(); print('torch' in sys.modules)"
NUMPY = "import numpy; print(False)"


def wall(code: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    ours, ref, torch_loaded = [], [], set()
    for _ in range(args.repeats):
        t, loaded = wall(OODLENS)
        ours.append(t)
        torch_loaded.add(loaded)
        ref.append(wall(NUMPY)[0])
    best, floor = min(ours), min(ref)
    print(
        f"import oodlens + list_scorers: best {best:.3f} s of {args.repeats} (torch loaded: "
        f"{', '.join(sorted(torch_loaded))})"
    )
    print(f"import numpy:                  best {floor:.3f} s")
    print(f"ratio {best / floor:.2f}x; target < 1 s: {'met' if best < 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
