"""What CPU thread contention does to a run: the same extraction-like workload (resnet18
forward passes at 64 px), timed alone with torch's default threads, then as two processes at
once with the default threads each (oversubscribed), then as two processes at once with
``--threads`` = cores / 2 each. Reported as each process's time relative to the lone run.

    python benchmarks/thread_contention.py        # writes benchmarks/results/thread_contention.txt
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = """
import sys, time, torch, timm
threads = int(sys.argv[1])
if threads > 0:
    torch.set_num_threads(threads)
model = timm.create_model("resnet18", num_classes=10).eval()
x = torch.rand(64, 3, 64, 64)
with torch.inference_mode():
    model(x)
    t0 = time.perf_counter()
    for _ in range(int(sys.argv[2])):
        model(x)
print(time.perf_counter() - t0)
"""


def _run(threads: list[int], steps: int) -> list[float]:
    """Start one process per entry of ``threads`` at once; their times."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORK, str(t), str(steps)], stdout=subprocess.PIPE, text=True
        )
        for t in threads
    ]
    return [float(p.communicate()[0].strip()) for p in procs]


def main() -> None:
    import torch

    cores = os.cpu_count() or 1
    default = torch.get_num_threads()
    steps = 20
    alone = min(_run([0], steps)[0] for _ in range(3))
    over = _run([0, 0], steps)
    shared = _run([max(1, cores // 2)] * 2, steps)
    lines = [
        f"# {time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()}, "
        f"{cores} cores, torch {torch.__version__} ({default} threads by default)",
        f"resnet18 forward, 64 images at 64 px, {steps} batches per process",
        f"one process alone, default threads:            {alone:6.2f} s (1.00x)",
        "two processes at once, default threads each:  "
        + ", ".join(f"{t:6.2f} s ({t / alone:.2f}x)" for t in over),
        f"two processes at once, {max(1, cores // 2)} thread(s) each:        "
        + ", ".join(f"{t:6.2f} s ({t / alone:.2f}x)" for t in shared),
        "(2.00x per process is a fair share of the cores: the two finish together in the time "
        "of two lone runs one after the other)",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = HERE / "results" / "thread_contention.txt"
    out.write_text(text)


if __name__ == "__main__":
    main()
