"""Profile the engine's hot path with pyinstrument (not part of `make test`).

Runs one benchmark case's simulation (default: (a), the default scenario with 20,000 requests;
`c` for 10% load) under pyinstrument and prints the call tree. pyinstrument comes with the
`bench` extra: `.venv/bin/pip install -e '.[bench]'`.
Run: `.venv/bin/python benchmarks/profile_hot_path.py [a|c] [--no-ff]`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pyinstrument import Profiler

import sdsim
from sdsim.costs.build import build_cost_model
from sdsim.engine.server import run_simulation
from sdsim.workload import generate_workload

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    case = next((a for a in argv if not a.startswith("--")), "a")
    over: dict[str, object] = {"workload.num_requests": 20_000}
    if case == "c":
        over["workload.rate"] = 5.29  # 10% of the predicted saturation rate
    scn = sdsim.load_scenario(ROOT / "scenarios/default.yaml", over)
    wl = generate_workload(scn, scn.seed)
    cost = build_cost_model(scn)
    prof = Profiler(interval=0.0005)
    prof.start()
    run = run_simulation(scn, wl, cost, scn.seed, fast_forward="--no-ff" not in argv)
    prof.stop()
    steps = len(run.steps["start"])
    ff = sum(e.ff_steps for e in run.engines)
    blocks = sum(e.ff_blocks for e in run.engines)
    print(f"case {case}: {steps} steps, {ff} fast-forwarded in {blocks} runs")
    print(prof.output_text(unicode=True, color=False, show_all=False))


if __name__ == "__main__":
    main(sys.argv[1:])
