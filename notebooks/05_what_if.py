# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. A what-if study: which draft length meets a p99 target at the highest rate?
#
# The question an operator actually asks: *"I must keep the p99 end-to-end latency under 3 s.
# How much traffic can this server take, and with which speculative-decoding setting?"*
#
# We answer it the way `sdsim sweep` does: a grid of draft lengths × arrival rates, several
# replications per point (with confidence intervals), then read off, for each k, the highest rate
# whose p99 meets the target. Finally we compare the best fixed k with an **adaptive** draft
# length that picks k before every step from the batch and the acceptance it observes.
#
# Set `SDSIM_NOTEBOOK_SMALL=1` for a quicker run (CI): four draft lengths at five rates, one run
# of 800 requests per point, so the figure's error bars (confidence intervals over replications)
# collapse to nothing; the full size has six draft lengths at eight rates, three runs of 1,500
# requests per point.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import sdsim
from sdsim.labels import field_label, metric_label
from sdsim.plots import draw_target
from sdsim.sweep import SweepSpec, plan_sweep, run_sweep

SMALL = os.environ.get("SDSIM_NOTEBOOK_SMALL", "") not in ("", "0")
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "scenarios").is_dir())
N_REQUESTS = 800 if SMALL else 1500
P99_TARGET = 3.0  # seconds, end-to-end

# %% [markdown]
# ## The sweep
#
# Base scenario: `scenarios/default.yaml` (8B-class verifier, EAGLE-style drafter, α = 0.7) with
# the linear step costs used throughout the course. `common_random_numbers: [spec.k]` gives every
# k the same requests in a replication, so differences between k are not seed noise.

# %%
k_values = [0, 2, 4, 6] if SMALL else [0, 1, 2, 3, 4, 6]
rates = [10, 25, 35, 40, 44] if SMALL else [10, 20, 25, 30, 35, 38, 41, 44]
spec = SweepSpec(
    name="what-if",
    base=str(ROOT / "scenarios" / "default.yaml"),
    set={"costs.source": "linear", "workload.num_requests": N_REQUESTS,
         "warmup_requests": N_REQUESTS // 10},
    grid={"spec.k": k_values, "workload.rate": rates},
    replications=1 if SMALL else 3,
    common_random_numbers=["spec.k"],
    metrics=["e2e_mean", "e2e_p99", "ttft_p99", "stable"],
)
plan = plan_sweep(spec)
out_dir = Path(tempfile.mkdtemp(prefix="sdsim-what-if-"))
result = run_sweep(plan, out_dir, workers=1 if SMALL else min(4, os.cpu_count() or 1))
print(f"{result.done} runs in {result.wall_s:.1f} s, results under {out_dir}")
summary = result.summary
summary[["spec.k", "workload.rate", "e2e_p99", "e2e_p99_ci_low", "e2e_p99_ci_high",
         "stable"]].round(3).head(8)

# %%
fig, ax = plt.subplots(figsize=(8, 4.5))
for k, grp in summary.groupby("spec.k"):
    grp = grp.sort_values("workload.rate")
    ax.errorbar(grp["workload.rate"], grp["e2e_p99"],
                yerr=[grp["e2e_p99"] - grp["e2e_p99_ci_low"],
                      grp["e2e_p99_ci_high"] - grp["e2e_p99"]],
                marker="o", ms=3, capsize=2, label=f"k = {k} (95% CI)")
draw_target(ax, "e2e_p99", P99_TARGET)
ax.set_ylim(0, 3 * P99_TARGET)
ax.set_xlabel(field_label("workload.rate"))
ax.set_ylabel(metric_label("e2e_p99"))
ax.legend()
plt.show()

# %% [markdown]
# ## Reading off the answer
#
# For each k, the highest swept rate whose p99 (mean over replications) meets the target, from a
# stable run. Between grid points the truth lies somewhere in between: refine the grid near the
# answer before committing to a number.

# %%
def max_rate_meeting(df: pd.DataFrame, target: float) -> float:
    ok = df[(df["e2e_p99"] <= target) & (df["stable"] >= 1.0)]
    return float(ok["workload.rate"].max()) if len(ok) else float("nan")


answer = (
    summary.groupby("spec.k")
    .apply(lambda g: max_rate_meeting(g, P99_TARGET), include_groups=False)
    .rename("max_rate_meeting_p99")
    .to_frame()
)
best_k = int(answer["max_rate_meeting_p99"].idxmax())
print(answer)
print(f"\nbest fixed draft length for p99 <= {P99_TARGET} s: k = {best_k}, up to "
      f"{answer.loc[best_k, 'max_rate_meeting_p99']:g} req/s "
      f"(plain decoding: {answer.loc[0, 'max_rate_meeting_p99']:g} req/s)")
# CI guards on the paragraph below (seen: k = 2 best at 35 / 38 req/s, k = 6 at 25 / 30)
top = answer["max_rate_meeting_p99"]
assert top[max(k_values)] < top[best_k] and top[0] < top[best_k]

# %% [markdown]
# Speculative decoding here buys a large share of capacity *at the target*: plain decoding
# misses 3 s much earlier because every request takes 255 steps, while SD needs about 90. But
# the best k is not the largest: `k = 6` wastes verifier compute on drafts that are rejected, and
# at high rates that compute is what the server runs out of.
#
# ## Fixed vs adaptive draft length
#
# `spec.policy: adaptive` chooses k in `0..spec.k_max` before each step, to maximise the expected
# tokens emitted per second of step time, using the acceptance rate it *observes* (never the
# scenario's α) and the cost model's price for the current batch. Does it match the best fixed k
# at every rate without being told the load?

# %%
base = sdsim.load_scenario(ROOT / "scenarios" / "default.yaml", overrides=spec.set)
rows = []
for r in rates:
    scn = base.with_overrides({"workload.rate": r, "spec.policy": "adaptive", "spec.k_max": 6})
    # the sweep's own seeds for this rate (shared by every k): the adaptive runs see exactly
    # the same requests and acceptance draws as the fixed-k runs they are compared with
    seeds = sorted({(t.replication, t.seed) for t in plan.tasks
                    if t.overrides["workload.rate"] == r})
    reps = [sdsim.simulate(scn, seed=seed).summary for _, seed in seeds]
    fixed = summary[summary["workload.rate"] == r].set_index("spec.k")["e2e_p99"]
    rows.append({"rate": r, "adaptive_p99": np.mean([s["e2e_p99"] for s in reps]),
                 "adaptive_mean_k": np.mean([s["k_mean"] for s in reps]),
                 "best_fixed_p99": fixed.min(), "best_fixed_k": int(fixed.idxmin()),
                 "k4_p99": fixed.get(4, np.nan)})
adaptive = pd.DataFrame(rows)
adaptive.round(3)

# %%
fig, ax = plt.subplots(figsize=(8, 4))
ax.plot(adaptive["rate"], adaptive["best_fixed_p99"], "o-", label="best fixed k at each rate")
ax.plot(adaptive["rate"], adaptive["k4_p99"], "s--", label="fixed k = 4")
ax.plot(adaptive["rate"], adaptive["adaptive_p99"], "^-", label="adaptive (k_max = 6)")
draw_target(ax, "e2e_p99", P99_TARGET)
ax.set_xlabel(field_label("workload.rate"))
ax.set_ylabel(metric_label("e2e_p99"))
ax.legend()
plt.show()
worst = (adaptive["adaptive_p99"] / adaptive["best_fixed_p99"] - 1).max()
print(f"adaptive p99 / best fixed-k p99 - 1, worst rate: {worst:+.1%}")
# CI guard: seen at most +1%; 10% allows for noise in the small run.
assert worst < 0.10

# %% [markdown]
# The adaptive policy drafts long at light load (mean k above 4) and shortens its drafts as the
# batch grows (mean k falling towards 2–3), tracking the best fixed k at every rate to within
# about a percent without knowing the rate or α, while a fixed `k = 4`, best at light load, loses
# 10–20% of p99 near capacity. For an operator that means one setting instead of a per-load table.
#
# ## Exercises
#
# 1. Tighten the target to 2 s. Does the best k change?
# 2. Add `acceptance.alpha: [0.6, 0.8]` to the grid and find the best k for each α.
# 3. The same study from the command line: write this grid to a sweep YAML and run
#    `sdsim sweep FILE --out DIR` (see `scenarios/sweeps/k-vs-load.yaml`).
