"""Speed benchmark: the default scenario with 20,000 requests (not part of `make test`).

Prints wall seconds, simulated requests per wall second and engine steps per wall second.
Run: `make bench` (or `.venv/bin/python benchmarks/run.py`).
"""

from __future__ import annotations

import time
from pathlib import Path

import sdsim

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    scn = sdsim.load_scenario(ROOT / "scenarios/default.yaml", {"workload.num_requests": 20_000})
    t0 = time.perf_counter()
    res = sdsim.simulate(scn)
    wall = time.perf_counter() - t0
    n = res.summary["completed"]
    steps = res.summary["steps"]
    print(
        f"default, 20000 requests: wall {wall:.2f} s, {n / wall:,.0f} req/s, "
        f"{steps / wall:,.0f} steps/s, mean batch {res.summary['batch_mean']:.1f}"
    )


if __name__ == "__main__":
    main()
