"""Speed benchmark: the shipped k-vs-load sweep (120 runs) on 2 local workers (not in `make test`).

Prints the wall time of a fresh run. Reference: 96 s on a 2-core VM shared with other jobs (load
average 4-6), 72 s of CPU in the workers; expect about a minute on an idle 2-core laptop.
Run: `.venv/bin/python benchmarks/sweep_k_vs_load.py [WORKERS]`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from sdsim.sweep import load_sweep, plan_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    path = ROOT / "scenarios/sweeps/k-vs-load.yaml"
    plan = plan_sweep(load_sweep(path), path)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_sweep(plan, Path(tmp) / "out", workers=workers)
        wall = time.perf_counter() - t0
    print(
        f"k-vs-load: {len(plan.tasks)} runs on {workers} workers in {wall:.1f} s "
        f"({res.failed} failed, {wall / len(plan.tasks):.2f} s per run)"
    )


if __name__ == "__main__":
    main()
