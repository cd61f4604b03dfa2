"""Analysis (not a speed benchmark): speculative decoding under load, calibrated vs roofline costs.

For three setups (:data:`SETUPS`: two 8B models with EAGLE heads on an A100 and an H100, a 70B
model at TP 4 with a 1B draft model) and every acceptance rate and draft length k in 0..8,
simulate the mean latency at 10-80% of each configuration's saturation, fit
``L = C1 / (1 - lambda C2)`` per configuration (the paper's way) and report C1R, C2R, the
speedup at 10% and 80% of plain decoding's saturation, the break-even rate and the best k at low
and high load, for the calibrated model and the roofline side by side; then, at alpha = 0.7 and
with the analytic model's means (fast), what each group of calibration terms contributes (one
switched off at a time, :data:`sdsim.costs.calibration.ABLATIONS`).

Run: ``nice .venv/bin/python benchmarks/sd_under_load.py [--quick] [OUT.csv]`` (full: ~20 min
CPU on one core; --quick: two alphas, k in {0, 2, 4}, analytic only). Figures in notes/costs.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

import sdsim
from sdsim.costs.calibration import ABLATIONS, ablated, shipped_calibration
from sdsim.loadfit import fit_load, load_table

ROOT = Path(__file__).resolve().parents[1]

SETUPS = {
    "A: Qwen3-8B + EAGLE, A100, 1024/1024": (
        ROOT / "scenarios/qwen3-8b-eagle-a100.yaml",
        {"workload.num_requests": 800, "warmup_requests": 100},
        (0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    ),
    "B: Llama-3.1-8B + EAGLE-3, H100, ShareGPT-like": (
        ROOT / "scenarios/default.yaml",
        {"drafter.kind": "eagle3", "workload.num_requests": 1500, "warmup_requests": 150,
         "workload.prompt_tokens": {"dist": "lognormal", "mean": 220, "cv": 1.0, "max": 4096},
         "workload.output_tokens": {"dist": "lognormal", "mean": 200, "cv": 1.0, "max": 2048}},
        (0.6, 0.7, 0.8, 0.9),
    ),
    "C: Llama-3.1-70B TP4 + Llama-3.2-1B (TP4), H100, 512/256": (
        ROOT / "scenarios/llama70b-tp4-a100.yaml",
        {"hardware": "h100-sxm", "drafter": {"kind": "model", "model": "llama-3.2-1b", "tp": 4},
         "workload.num_requests": 800, "warmup_requests": 100},
        (0.6, 0.7, 0.8),
    ),
}


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    out = next((a for a in argv if a.endswith(".csv")), None)
    ks = [0, 2, 4] if quick else list(range(0, 9))
    frames = []
    t0 = time.process_time()
    for name, (path, over, alphas) in SETUPS.items():
        base = sdsim.load_scenario(path, over)
        al = alphas[1:3] if quick else alphas
        for src in ("calibrated", "roofline"):
            scn = base.with_overrides({"costs.source": src})
            tab = load_table(scn, ks, al, simulate=not quick)
            fits = fit_load(tab).assign(setup=name, costs=src, variant="all terms")
            frames.append(fits)
            print(f"{name} / {src}: {time.process_time() - t0:.0f} s CPU", file=sys.stderr)
        cal = shipped_calibration()
        scn = base.with_overrides({"costs.source": "calibrated"})
        for group in ABLATIONS:
            tab = load_table(scn, ks, [0.7], simulate=False, calibration=ablated(cal, group))
            frames.append(fit_load(tab).assign(setup=name, costs="calibrated",
                                               variant=f"without {group}"))
        tab = load_table(scn, ks, [0.7], simulate=False)
        frames.append(fit_load(tab).assign(setup=name, costs="calibrated",
                                           variant="all terms (analytic)"))
        print(f"{name} ablations: {time.process_time() - t0:.0f} s CPU", file=sys.stderr)
    df = pd.concat(frames, ignore_index=True)
    if out:
        df.to_csv(out, index=False)
    keys = ["setup", "costs", "variant", "alpha"]
    best = df[df["k"] > 0].sort_values("C1R").groupby(keys).head(1)
    cols = ["setup", "costs", "variant", "alpha", "k", "C1R", "C2R", "speedup_low",
            "speedup_high", "break_even_fraction", "best_k_low", "best_k_high"]
    print(best[cols].round(3).to_string(index=False))


if __name__ == "__main__":
    main(sys.argv[1:])
