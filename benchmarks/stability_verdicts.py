"""Verdicts of the stability test (sdsim.stability) on a scenario, by load and run length.

    python benchmarks/stability_verdicts.py [SCENARIO] --requests 2000 --seeds 100 \\
        --loads 0.5,0.8,0.9,0.95,1.1,1.3

Loads are fractions of the analytic model's saturation rate; each (load, seed) is one
`simulate(..., keep_records=False)` run. Prints one line per load: counts of stable, not enough
data, unstable (notes/testing.md has the figures).
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

from sdsim import load_scenario, simulate
from sdsim.analytic import predict

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios/default.yaml"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--loads", default="0.5,0.8,0.9,0.95,1.1,1.3")
    args = ap.parse_args()
    base = load_scenario(args.scenario)
    sat = predict(base, rates=[], k_values=[base.spec.k], quantiles=False).saturation_rate
    print(f"{args.scenario}: predicted saturation {sat:.2f} req/s", flush=True)
    for frac in (float(x) for x in args.loads.split(",")):
        t0 = time.perf_counter()
        scn = load_scenario(
            args.scenario, {"workload.rate": frac * sat, "workload.num_requests": args.requests}
        )
        counts = collections.Counter(
            simulate(scn, seed=s, keep_records=False).summary["stability"]
            for s in range(args.seeds)
        )
        print(
            f"load {frac:.2f} ({frac * sat:.1f} req/s), {args.requests} requests, seeds "
            f"0..{args.seeds - 1}: {dict(counts)} [{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )


if __name__ == "__main__":
    main()
