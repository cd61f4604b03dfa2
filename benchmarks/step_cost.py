"""Speed benchmark: microseconds per StepCostModel.step() call (not part of `make test`).

The engine calls step() once per simulated step, so it must stay at a few microseconds.
Run: `.venv/bin/python benchmarks/step_cost.py`.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

import sdsim
from sdsim.costs import StepShape, build_cost_model

ROOT = Path(__file__).resolve().parents[1]


def per_call_us(scn: sdsim.Scenario, n: int = 50_000) -> float:
    model = build_cost_model(scn)
    rng = np.random.default_rng(0)
    b = rng.integers(1, 256, size=n)
    ctx = rng.integers(100, 4000, size=n)
    pf = np.where(rng.random(n) < 0.1, rng.integers(1, 8192, size=n), 0)
    shapes = [
        StepShape(int(b[i]), int(b[i] * ctx[i]), 4, int(pf[i]), int(pf[i]), 1 if pf[i] else 0)
        for i in range(n)
    ]
    for s in shapes[:2000]:  # warm the per-token caches as a long simulation would
        model.step(s)
    t0 = time.perf_counter()
    for s in shapes:
        model.step(s)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    base = sdsim.load_scenario(ROOT / "scenarios/default.yaml")
    cases = {
        "linear": base.with_overrides({"costs.source": "linear"}),
        "roofline": base.with_overrides({"costs.source": "roofline"}),
        "calibrated (default)": base,
        "profile (cpu bundle)": base.with_overrides(
            {
                "target": "llama-3.2-1b",
                "costs.source": "profile",
                "costs.profile": str(ROOT / "profiles/cpu-numpy-llama-3.2-1b"),
            }
        ),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, scn in cases.items():
            print(f"{name:>22}: {per_call_us(scn):6.2f} us per step() call")


if __name__ == "__main__":
    main()
