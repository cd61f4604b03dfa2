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
# # 4. Tails: the p99 is not the mean
#
# Service-level objectives are written on tails ("p99 end-to-end latency under 3 s"), and tails
# behave differently from means. This notebook shows four things:
#
# 1. how the mean and the p99 grow with load, and how well the closed-form tail model follows;
# 2. why a single simulation run is not enough to state a p99, and how `sdsim` measures one at
#    steady state: warm-up cut, batched confidence intervals, runs long enough to tell;
# 3. where the model holds and where it breaks (an admission cap, a KV cache under pressure,
#    bursty arrivals), and how `predict` says so itself;
# 4. the map of where it holds: every shipped scenario, from 10% to 95% load.
#
# Set `SDSIM_NOTEBOOK_SMALL=1` for small, fast runs (CI); the defaults are full size.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import sdsim
from sdsim.analytic.validation import plot_error_map, reports_from_csv
from sdsim.metrics import t_confidence_interval
from sdsim.steadystate import mser_truncation, quantile_estimate

SMALL = os.environ.get("SDSIM_NOTEBOOK_SMALL", "") not in ("", "0")
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "scenarios").is_dir())
N_REQUESTS = 1000 if SMALL else 4000
SIZE = {"workload.num_requests": N_REQUESTS, "warmup_requests": N_REQUESTS // 10}


def predict_one(scn):
    """The analytic prediction at the scenario's own rate (rates=[] skips the best-k search)."""
    return sdsim.predict(scn, rates=[])


# %% [markdown]
# ## Mean and p99 as load grows
#
# The default server (k = 4, α = 0.7, linear step costs as in notebook 1). `predict` gives the
# mean and quantiles of end-to-end latency from a tagged-request model: the request's own
# service, the batch it finds on arrival (from the law of the number in system), the step it
# arrives in, and how that batch drifts during its life.

# %%
base = sdsim.load_scenario(ROOT / "scenarios" / "default.yaml",
                           overrides={"costs.source": "linear", **SIZE})
capacity = sdsim.predict(base, rates=[], quantiles=False).saturation_rate
fractions = [0.2, 0.6, 0.9] if SMALL else [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95]
rows = []
for f in fractions:
    scn = base.with_overrides({"workload.rate": round(f * capacity, 2)})
    s, p = sdsim.simulate(scn, seed=0).summary, predict_one(scn).summary
    rows.append({"load": f, "rate": scn.workload.rate, "mean_sim": s["e2e_mean"],
                 "p99_sim": s["e2e_p99"], "p99/mean_sim": s["e2e_p99"] / s["e2e_mean"],
                 "mean_pred": p["e2e_mean"], "p99_pred": p["e2e_p99"],
                 "p99_error": p["e2e_p99"] / s["e2e_p99"] - 1})
load = pd.DataFrame(rows)

fig, ax = plt.subplots(figsize=(8, 4.5))
ax.plot(load["rate"], load["mean_sim"], "o", color="C0", label="mean (simulation)")
ax.plot(load["rate"], load["mean_pred"], "-", color="C0", label="mean (model)")
ax.plot(load["rate"], load["p99_sim"], "s", color="C3", label="p99 (simulation)")
ax.plot(load["rate"], load["p99_pred"], "-", color="C3", label="p99 (model)")
ax.set_xlabel("arrival rate (req/s)")
ax.set_ylabel("end-to-end latency (s)")
ax.legend()
plt.show()
load.round(3)

# %% [markdown]
# Every request here asks for the same 256 tokens, yet the p99 sits 15–30% above the mean (see
# `p99/mean_sim`): the batch a request shares its life with fluctuates (notebook 2), so equal
# requests get unequal service. In absolute terms the tail grows as fast as the mean: the hockey
# stick of notebook 1 holds for the p99 too.
#
# Why the batch fluctuates *more* than the birth-death law of notebook 2 says: an arrival's
# prefill makes the step it lands in longer, and during that longer step more requests arrive,
# whose prefills make the next step longer... Arrivals reach the batch in clusters, and the
# number in system has `1 / (1 - λ c_p)²` times the noise (λ c_p, the share of GPU time prefill
# takes, is 0.3 at 80% load on default.yaml: twice the variance). The model counts it
# (notes/analytic.md); without it its p99 was 13% low at 80% load.
#
# ## One run is not enough
#
# The single runs above start from an empty server and are a few thousand requests long. Near
# saturation neighbouring requests share the same slow periods, so a p99 from one run rests on
# a handful of independent episodes. `sdsim validate` measures at steady state instead
# (`sdsim.steadystate`):
#
# * the warm-up is cut by **MSER-5** (the cut that minimises the standard error of what is
#   left);
# * the run is split into **batches**, and the p99's interval comes from the batch means of
#   the indicator "request below the p99" (both ends are observed latencies: never negative);
# * runs are added until the interval is narrow enough (`--half-width`, ±3% by default) or the
#   budget is spent, and a statistic whose interval straddles the tolerance is reported as
#   **CI too wide to judge** rather than as a pass or a fail on noise.

# %%
scn = base.with_overrides({"workload.rate": round(0.9 * capacity, 1)})
n_rep = 2 if SMALL else 4
runs = [sdsim.simulate(scn, seed=seed).requests["e2e"].to_numpy() for seed in range(n_rep)]
cuts = [mser_truncation(r).deleted for r in runs]
kept = [r[c:] for r, c in zip(runs, cuts, strict=True)]
est = quantile_estimate(kept, 0.99)
naive = t_confidence_interval([np.percentile(r, 99) for r in runs])
pred_p99 = predict_one(scn).summary["e2e_p99"]
print(f"warm-up cut (MSER-5) per run: {cuts} of {len(runs[0])} requests")
print(f"p99, batched, {n_rep} runs pooled: {est.value:.3f} s, 95% CI [{est.low:.3f}, "
      f"{est.high:.3f}] ({est.batches} batches)")
print(f"p99, t-interval over {n_rep} single-run p99s: {naive[0]:.3f} s, "
      f"[{naive[1]:.3f}, {naive[2]:.3f}]")
print(f"model p99: {pred_p99:.3f} s")

fig, ax = plt.subplots(figsize=(8, 3.5))
ax.plot(runs[0], ",", alpha=0.5, label="e2e of each request, one run (arrival order)")
ax.axvline(cuts[0], color="k", ls="--", label="MSER-5 cut")
ax.axhspan(est.low, est.high, color="C3", alpha=0.25, label="p99 95% CI (batched)")
ax.axhline(pred_p99, color="C3", label="model p99")
ax.set_xlabel("request")
ax.set_ylabel("e2e (s)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# With two or three replications the t-interval over single-run p99s uses a t quantile of 4.3
# to 12.7 and can reach below zero; the batched interval pools every retained request and
# stays inside the data's range. Sweeps use the same method (`sdsim sweep`: each run's
# steady-state estimate and its batch-means standard error, pooled on the log scale).
#
# ## Where the closed form holds, and where it breaks
#
# Four versions of the server, each compared with its own prediction:
#
# * **Poisson, no limits**: the reference case above, at 70% load.
# * **Admission cap**: `max_num_seqs = 32`; requests queue for a slot before their prefill. The
#   model knows the cap (a waiting line above it in the law of the number in system).
# * **KV pressure** (`scenarios/kv-pressure.yaml`): a 3000-block KV cache; requests are preempted
#   and recompute their prefill. The model sees only step times, not memory.
# * **Bursty arrivals** (`scenarios/bursty-gamma.yaml`): gamma gaps with CV 3 at the same mean
#   rate: half the gaps are below 1% of the mean, so arrivals come in clumps.

# %%
cap = base.with_overrides({"server.max_num_seqs": 32})
cap_capacity = sdsim.predict(cap, rates=[], quantiles=False).saturation_rate
cases = {
    "Poisson, no limits": base.with_overrides({"workload.rate": round(0.7 * capacity, 1)}),
    "admission cap (32 seqs)": cap.with_overrides({"workload.rate": round(0.85 * cap_capacity, 1)}),
    "KV pressure (3000 blocks)": sdsim.load_scenario(
        ROOT / "scenarios" / "kv-pressure.yaml", overrides={**SIZE, "workload.rate": 32.0}),
    "bursty arrivals (CV 3)": sdsim.load_scenario(
        ROOT / "scenarios" / "bursty-gamma.yaml", overrides=SIZE),
}
rows = []
for name, scn in cases.items():
    p = predict_one(scn)
    s = sdsim.simulate(scn, seed=0).summary
    rows.append({"case": name, "rate": scn.workload.rate,
                 "e2e_p99_err": p.summary["e2e_p99"] / s["e2e_p99"] - 1,
                 "ttft_p99_sim": s["ttft_p99"], "ttft_p99_pred": p.summary["ttft_p99"],
                 "ttft_p99_err": p.summary["ttft_p99"] / s["ttft_p99"] - 1,
                 "preemptions": s["preemptions"],
                 "outside_model": p.outside_model or ""})
holds = pd.DataFrame(rows).set_index("case")
holds.drop(columns="outside_model").round(3)

# %%
for name, why in holds["outside_model"].items():
    print(f"{name}: {why or 'inside the model'}")

# %% [markdown]
# * With Poisson arrivals and no memory limit, and with the admission cap (which multiplies the
#   TTFT p99 several times over), the model's p99s are close to the simulation's: a few percent
#   in a full-size run (the small CI run is noisier).
# * Under KV pressure the model misses the preemptions: a preempted request goes back to the
#   queue and redoes its prefill, so the TTFT p99 is several times the prediction. `predict`
#   says so: the requests need more blocks than the cache has more than 0.5% of the time.
# * Bursty arrivals: the model takes the clumps as Poisson clumps of geometric size (their
#   batch-mates ahead, behind, and in the same prefill step) and its law of the number in system
#   gets the clumps' noise. That closes most of the gap (the e2e p99 was 70% low), but not all:
#   `predict` marks it outside the model and names the assumption.

# %%
# CI guards on the claims above. Seen at full size: |err| < 0.05 for the first two rows, -0.9
# for the KV-pressure TTFT p99; the bursty case outside the model.
assert abs(holds.loc["Poisson, no limits", "e2e_p99_err"]) < 0.1
assert holds.loc["KV pressure (3000 blocks)", "ttft_p99_err"] < -0.5
assert "KV pressure" in holds.loc["KV pressure (3000 blocks)", "outside_model"]
assert "clump" in holds.loc["bursty arrivals (CV 3)", "outside_model"]

# %% [markdown]
# ## The map: where the model holds
#
# `sdsim validate --all scenarios/` runs every shipped rate-driven scenario at 10% to 95% of its
# predicted saturation, each to steady state (up to 120,000 requests per rate here), and draws
# one figure of the model's error against load. The figures below are the committed results of
# that run (`notebooks/data/validation-all.csv`; re-run it with the command above, ~40 minutes
# on two cores). Bars are the range of errors the simulation's 95% CI allows; the shaded band is
# the tolerance; hollow points are where `predict` says it is outside the model.

# %%
reports = reports_from_csv(ROOT / "notebooks" / "data" / "validation-all.csv")
plot_error_map(reports)

# %%
table = pd.concat([r.table.assign(scenario=r.scenario) for r in reports])
p99 = table[(table["metric"] == "e2e") & (table["statistic"] == "p99")]
p99.pivot_table(index="scenario", columns=p99["fraction"].round(2), values="rel_error").round(3)

# %% [markdown]
# * On the Poisson scenarios inside the model the means are within 2% up to 80% of saturation
#   and the e2e p99 within about 5% (llama70b 6–7% low at 70–80%); at 90–95% the CIs are ±5–10%
#   even at 120,000 requests: that is how noisy a tail near saturation is.
# * capacity-70b-chat (long lognormal prompts, up to the token budget) keeps its e2e p99 but
#   its TTFT p99 is 10–26% low: a request often waits out another request's 8k-token prefill,
#   and the model prices the others' prompts at the mean length.
# * The KV-limited scenarios (kv-pressure, and llama70b and moe near their KV limits) leave the
#   model where preemption starts; `predict` says so from the KV demand alone.
# * mmpp-bursts holds while its bursts (2.5 times the mean rate) stay below saturation, i.e. up
#   to ~25–40% mean load; beyond, a queue builds in each burst and the model errs by 20–60%.
# * bursty-gamma is outside the model at every load (e2e p99 10–30% low).
#
# ## Exercises
#
# 1. Set `--half-width` to 0.01 for one rate of `sdsim validate scenarios/default.yaml`. How many
#    requests does the p99 need at 90% load, and why so many more than at 50%?
# 2. Lower `workload.cv` in the bursty scenario to 1.5. Does `predict` still say it is outside
#    the model? How large is the error?
# 3. Give the KV-pressure scenario `server.num_gpu_blocks: 6000`. Does the model hold again?
