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
# # 3. Speculative decoding: why its speedup shrinks under load
#
# Speculative decoding (SD) lets a cheap drafter propose `k` tokens; the verifier checks all of
# them in one pass over `k + 1` tokens per request, keeps the longest accepted prefix and adds one
# token of its own. A lone request gets several tokens per step for little more than the price of
# one step. A loaded server pays for every drafted token in verifier compute, accepted or not.
#
# This notebook builds the argument in four steps: the law of tokens per step, the law of steps
# per request, the two coefficient ratios C1R and C2R, and the speedup vs load with its
# break-even point, checked against simulation.
#
# Set `SDSIM_NOTEBOOK_SMALL=1` for small, fast runs (CI); the defaults are full size.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

import sdsim
from sdsim.acceptance import (
    expected_tokens_per_step,
    steps_to_finish_pmf,
    tokens_per_step_pmf,
)
from sdsim.costs.build import build_cost_model
from sdsim.costs.step import StepShape
from sdsim.labels import field_label
from sdsim.loadfit import fit_load, load_table

SMALL = os.environ.get("SDSIM_NOTEBOOK_SMALL", "") not in ("", "0")
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "scenarios").is_dir())
N_REQUESTS = 1000 if SMALL else 1500

# %% [markdown]
# ## Tokens per step: a truncated geometric law
#
# Each draft position is accepted with probability `α` until the first rejection; the verifier
# always adds one token. Tokens per step `X` take values `1 … k + 1` with
# `P(X = j) = α^(j−1)(1 − α)` for `j ≤ k` and `P(X = k + 1) = α^k`, and
# `E[X] = (1 − α^(k+1)) / (1 − α)`. Longer drafts help less and less: each extra position is
# reached only if all before it were accepted.

# %%
fig, ax = plt.subplots(1, 2, figsize=(11, 4))
ks = np.arange(0, 11)
for a in (0.5, 0.6, 0.7, 0.8, 0.9):
    ax[0].plot(ks, [expected_tokens_per_step(a, int(k)) for k in ks], "o-", ms=3, label=f"α = {a}")
ax[0].set_xlabel(field_label("spec.k"))
ax[0].set_ylabel("E[X], mean tokens per step")
ax[0].legend()
ALPHA, K = 0.6, 4
ax[1].bar(np.arange(1, K + 2), tokens_per_step_pmf(ALPHA, K), label=f"α = {ALPHA}, k = {K}")
ax[1].set_xlabel("tokens per step X")
ax[1].set_ylabel("probability P(X)")
ax[1].legend()
for a in ax:
    a.xaxis.set_major_locator(MaxNLocator(integer=True))
plt.show()

# %% [markdown]
# ## The scenario
#
# An 8B-class verifier with an EAGLE-style drafter, `k = 4`, `α = 0.6`, on a GPU whose verifier
# is compute-starved: the linear cost model with 60 µs per verified token (four times the H100
# default, about what an 8B model costs per token on an A100-class GPU at realistic efficiency).
# That makes the cost of drafted tokens visible at moderate load; on an H100 the same effect
# appears only at larger `k` or lower `α` (exercise 2).

# %%
base = sdsim.load_scenario(
    ROOT / "scenarios" / "default.yaml",
    overrides={
        "costs.source": "linear",
        "costs.linear.verify_per_token_s": 6.0e-5,
        "acceptance.alpha": ALPHA,
        "spec.k": K,
        "workload.num_requests": N_REQUESTS,
        "warmup_requests": N_REQUESTS // 10,
    },
)

# %% [markdown]
# ## The simulated engine draws exactly this law
#
# At a very low rate the batch is almost always one request, so each decode step's emitted tokens
# are one draw of `X`. Each request needs `255` decode tokens after its first (prefill) token; the
# number of steps that takes has an exact law (dynamic programming over tokens remaining, with
# the last step cut at what the request still needs). Its mean is close to the renewal estimate
# `255 / E[X]`, but its spread is what makes requests of equal length finish at different times.

# %%
n_low = 300 if SMALL else 800  # a slow run: ~110 steps per request, one request at a time
low = sdsim.simulate(base.with_overrides({"workload.rate": 0.5, "workload.num_requests": n_low,
                                          "warmup_requests": 10}), seed=0)
one = low.steps[(low.steps["decode_seqs"] == 1) & (low.steps["prefill_tokens"] == 0)]
x_sim = np.bincount(one["emitted"].astype(int), minlength=K + 2)[1:] / len(one)
n_dec = int(base.workload.output_tokens.mean) - 1
steps_law = steps_to_finish_pmf(n_dec, ALPHA, K)
steps_sim = low.requests["steps"].to_numpy()
s_axis = np.arange(steps_law.size)
exact_mean = float((s_axis * steps_law).sum())

fig, ax = plt.subplots(1, 2, figsize=(11, 4))
w = 0.4
ax[0].bar(np.arange(1, K + 2) - w / 2, x_sim, w, label=f"simulated ({len(one)} steps)")
ax[0].bar(np.arange(1, K + 2) + w / 2, tokens_per_step_pmf(ALPHA, K), w, label="exact law")
ax[0].set_xlabel("tokens per step X")
ax[0].set_ylabel("fraction of steps")
ax[0].legend()
ax[1].hist(steps_sim, bins=np.arange(steps_sim.min() - 0.5, steps_sim.max() + 1.5), density=True,
           alpha=0.5, label=f"simulated ({steps_sim.size} requests)")
ax[1].plot(s_axis, steps_law, "k", label="exact law")
ax[1].set_xlim(steps_sim.min() - 10, steps_sim.max() + 10)
ax[1].set_xlabel(f"decode steps to emit {n_dec} tokens")
ax[1].set_ylabel("fraction of requests")
ax[1].legend()
for a in ax:
    a.xaxis.set_major_locator(MaxNLocator(integer=True))
plt.show()
print(f"tokens per step : simulated mean {(one['emitted']).mean():.3f}, "
      f"E[X] = {expected_tokens_per_step(ALPHA, K):.3f}")
print(f"steps / request : simulated mean {steps_sim.mean():.2f}, exact {exact_mean:.2f}, "
      f"naive {n_dec}/E[X] = {n_dec / expected_tokens_per_step(ALPHA, K):.2f}")

# %% [markdown]
# ## C1R and C2R: what SD buys and what it costs
#
# The mean-field model (notebook 1) needs two numbers per configuration: `C1`, a request's
# latency alone, and `C2`, what each other request in flight adds. SD divides the number of steps
# by about `E[X]`, but makes each step longer (k drafter passes) and each request in a step more
# expensive (k + 1 verified tokens). Their ratios to plain decoding tell the whole story:
# **C1R < 1** (SD helps a lone request) and **C2R > 1** (each request costs the others more).

# %%
# rates=[] skips the best-k search, which these cells do not need (it costs ~1 s a call)
p0 = sdsim.predict(base.with_overrides({"spec.k": 0, "workload.rate": 1.0}), rates=[],
                   quantiles=False)
rows = []
for k in range(1, 7):
    pk = sdsim.predict(base.with_overrides({"spec.k": k, "workload.rate": 1.0}), rates=[],
                       quantiles=False)
    rows.append({"k": k, "E[X]": expected_tokens_per_step(ALPHA, k), "C1R": pk.c1 / p0.c1,
                 "C2R": pk.c2 / p0.c2, "capacity_rps": pk.saturation_rate,
                 "break_even_rps": pk.break_even_rate})
ratios = pd.DataFrame(rows)
print(f"plain decoding: C1 = {p0.c1:.3f} s, C2 = {1e3 * p0.c2:.1f} ms, "
      f"capacity {p0.saturation_rate:.1f} req/s")
ratios.round(3)

# %% [markdown]
# With `r = λ·C2` the dense utilisation, the mean-field speedup is
# `S(r) = (1/C1R) · (1 + (1 − C2R) r/(1 − r))`: it starts at `1/C1R` and falls with load, and
# crosses 1 at the **break-even** utilisation `r* = (1 − C1R)/(C2R − C1R)`. Longer drafts lower
# C1R only a little past `k ≈ 3` but keep raising C2R.
#
# ## Speedup vs load, simulated and predicted
#
# Simulate plain decoding and `k = 4` at the same rates, with the same random numbers (same seed:
# the arrivals and lengths do not depend on k), and divide their mean latencies.

# %%
pk = sdsim.predict(base, rates=[], quantiles=False)
rates = [2.0, 8.0, 11.0, 12.0] if SMALL else [2.0, 4.0, 6.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0]
rows = []
for r in rates:
    e = {}
    for k in (0, K):
        scn = base.with_overrides({"workload.rate": r, "spec.k": k})
        e[k] = sdsim.simulate(scn, seed=0).summary["e2e_mean"]
        e[f"pred{k}"] = sdsim.predict(scn, rates=[], quantiles=False).summary["e2e_mean"]
    rows.append({"rate": r, "e2e_k0": e[0], f"e2e_k{K}": e[K], "speedup_sim": e[0] / e[K],
                 "speedup_pred": e["pred0"] / e[f"pred{K}"]})
sp = pd.DataFrame(rows)

# measured break-even: linear interpolation between the two rates where the speedup crosses 1
i = int(np.argmax(sp["speedup_sim"].to_numpy() < 1.0))
(r0, s0), (r1, s1) = sp.loc[i - 1, ["rate", "speedup_sim"]], sp.loc[i, ["rate", "speedup_sim"]]
measured_be = r0 + (1.0 - s0) * (r1 - r0) / (s1 - s0)
print(f"break-even rate: measured {measured_be:.2f} req/s, predicted {pk.break_even_rate:.2f} "
      f"req/s ({measured_be / pk.break_even_rate - 1:+.1%})")
print(f"capacity: plain {p0.saturation_rate:.1f} req/s, k = {K}: {pk.saturation_rate:.1f} req/s")
sp.round(3)

# %%
lam = np.linspace(0.01, 0.99 * pk.saturation_rate, 200)
c1r, c2r = pk.c1 / p0.c1, pk.c2 / p0.c2
r_dense = lam * p0.c2
fig, ax = plt.subplots(figsize=(8, 4.5))
ax.plot(lam, (1 / c1r) * (1 + (1 - c2r) * r_dense / (1 - r_dense)), label="mean-field S(λ)")
ax.plot(sp["rate"], sp["speedup_sim"], "o", label="simulation")
ax.axhline(1.0, color="grey", lw=0.8, label="no speedup")
ax.axvline(pk.break_even_rate, color="C0", ls=":", label="predicted break-even")
ax.axvline(measured_be, color="C1", ls="--", label="measured break-even")
ax.set_xlabel(field_label("workload.rate"))
ax.set_ylabel(f"speedup of k = {K} over plain decoding")
ax.set_ylim(0, None)
ax.legend()
plt.show()
# CI guard: seen within 1% in full and small runs; 5% allows for seed noise near the crossing
assert abs(measured_be / pk.break_even_rate - 1) < 0.05

# %% [markdown]
# At light load SD cuts latency by `1/C1R`; the benefit melts as the batch fills, and past the
# break-even SD makes latency *worse*, then the SD server saturates first (its capacity is lower
# because each request costs more verifier compute). Nothing about the drafter changed: the same
# acceptance, the same k. Only the load did.
#
# ## The best draft length at each load
#
# `predict(...).best_k` gives, for each rate, the k with the lowest predicted mean latency. We
# check it by simulating a few k at a few rates.

# %%
sim_rates = [3.0, 11.0] if SMALL else [3.0, 8.0, 12.0]
k_grid = [0, 2, 4] if SMALL else [0, 1, 2, 3, 4, 6]
best = sdsim.predict(base, rates=sim_rates, k_values=k_grid, quantiles=False).best_k
rows = []
for r in sim_rates:
    lat = {k: sdsim.simulate(base.with_overrides({"workload.rate": r, "spec.k": k}),
                             seed=0).summary["e2e_mean"] for k in k_grid}
    row = {"rate": r, **{f"e2e_k{k}": v for k, v in lat.items()}}
    row.update(best_k_sim=min(lat, key=lambda k: lat[k]), best_k_pred=best[r])
    rows.append(row)
best_k = pd.DataFrame(rows)
best_k.round(3)

# %% [markdown]
# The best k falls as load rises: long drafts at light load, short ones (or none) near
# saturation. A server that must serve both regimes wants an adaptive draft length (notebook 5).
#
# ## With a real engine's step costs
#
# Everything above used a linear cost model with an inflated per-token verify cost, to make the
# effect visible. The default cost model (`costs.source: auto`) is **calibrated**: GEMM
# efficiencies fitted to measured kernels (mid-sized GEMMs, where the verify pass of a loaded
# server lands, run far below the roofline), vLLM's host costs per step, per request and per
# logits row, and the drafter as vLLM runs it (its first pass over every verified token). How
# does SD's benefit under load look with it, and with the ideal roofline? The same measurement as
# above, the paper's way: mean latency at 10-80% of each configuration's saturation, the dense
# fit `L = C1/(1 − λC2)` per configuration, then C1R and C2R.

# %%
real = sdsim.load_scenario(ROOT / "scenarios" / "default.yaml",
                           overrides={"workload.num_requests": 400 if SMALL else 1500,
                                      "warmup_requests": 40 if SMALL else 150})
fractions = (0.1, 0.4, 0.7) if SMALL else (0.1, 0.25, 0.4, 0.55, 0.7, 0.8)
fits = []
for src in ("calibrated", "roofline"):
    tab = load_table(real.with_overrides({"costs.source": src}), [0, 4], [0.7],
                     fractions=fractions)
    fits.append(fit_load(tab).assign(costs=src))
load_fits = pd.concat(fits, ignore_index=True)
load_fits[["costs", "k", "C1", "C2", "saturation", "C1R", "C2R", "speedup_low", "speedup_high",
           "break_even_fraction"]].round(3)

# %% [markdown]
# `C1R` barely moves: a lone request sees about the same speedup under either model. `C2R` is
# where they part. With the roofline, verifying five tokens per request costs little more than
# one (the weights are read once, and the ideal GEMM stays memory-bound up to ~300 tokens), so
# each SD request costs the others less than a plain one (`C2R` 0.90-0.95 in these runs) and the
# speedup grows with load (from about 2 at light load to 2.5-2.8 at 80% of saturation). With the
# calibrated costs the verify pass of a loaded server lands on the slow, mid-sized part of the
# measured GEMM curve, and every logits row and every draft pass over the whole batch costs what
# a real engine pays, so `C2R` comes out within about a percent of 1 (0.99-1.00 in these runs:
# the long KV reads that SD shares across `k + 1` tokens and the extra verify work nearly
# cancel): the speedup stays near 1.9 at every load, neither growing nor falling. With lower
# acceptance, longer drafts, shorter contexts or a separate draft model, `C2R` passes 1 and SD
# loses past a break-even load: notes/costs.md has the tables for three setups, the break-even
# rates and what each calibration term contributes.
#
# Remember that `S(λ) = (1/C1R)·(1 − λ·C2(k))/(1 − λ·C2(0))`: the speedup falls with load only
# when `C2R > 1`.

# %%
c2r = load_fits.set_index(["costs", "k"])["C2R"]
# CI guards on the paragraph above (seen: calibrated 0.994 and 1.003, roofline 0.904 and 0.948,
# from the small and the full runs); the fits come from simulated means, hence the margins
assert abs(c2r["calibrated", 4] - 1) < 0.04
assert c2r["roofline", 4] < c2r["calibrated", 4]

# %%
lam = np.linspace(0.01, 0.95, 100)
fig, ax = plt.subplots(figsize=(8, 4.5))
for src, g in load_fits.groupby("costs"):
    f0, f4 = g[g["k"] == 0].iloc[0], g[g["k"] == 4].iloc[0]
    rate = lam * f0["saturation"]
    l0 = f0["C1"] / (1 - rate * f0["C2"])
    l4 = np.where(rate * f4["C2"] < 1, f4["C1"] / (1 - rate * f4["C2"]), np.inf)
    ax.plot(lam, l0 / l4, label=f"{src} costs (dense fit)")
ax.axhline(1.0, color="grey", lw=0.8, label="no speedup")
ax.set_xlabel("load (fraction of plain decoding's saturation)")
ax.set_ylabel("speedup of k = 4 (α = 0.7) over plain decoding")
ax.legend()
plt.show()

# %% [markdown]
# ### A check on data the model was not fitted to
#
# SpecDecode-Bench (arXiv 2601.11580, Figure 1; vLLM 0.10.1 on an H100, k = 3) measured the
# throughput speedup of SD at offline batches of 1, 16, 64 and 128. The throughput speedup at
# batch `B` is `AL × t_plain(B) / t_SD(B)`: the acceptance length `AL` times the ratio of step
# times. Taking `AL` from the measured batch-1 speedup, the cost model alone predicts how the
# speedup falls with the batch (ShareGPT rows; the contexts are not given, 600 tokens assumed).

# %%
pm = pd.read_csv(ROOT / "sdsim" / "data" / "calibration" / "public-measurements.csv")
bench = pm[(pm["metric"] == "throughput_speedup") & (pm["dataset"] == "sharegpt")
           & (pm["target"] == "llama-3.1-8b") & pm["drafter"].isin(["eagle-1", "eagle-3"])]
rows = []
for drafter, g in bench.groupby("drafter"):
    kind = "eagle" if drafter == "eagle-1" else "eagle3"
    models = {src: build_cost_model(real.with_overrides({"costs.source": src,
                                                         "drafter.kind": kind}))
              for src in ("calibrated", "roofline")}
    s1 = float(g[g["concurrency"] == 1]["value"].iloc[0])
    for src, m in models.items():
        def ratio(b: int, m=m) -> float:
            return m.step(StepShape(b, b * 600, 0)).total / m.step(StepShape(b, b * 600, 3)).total
        al = s1 / ratio(1)
        for _, r in g.iterrows():
            b = int(r["concurrency"])
            rows.append({"drafter": drafter, "batch": b, "costs": src,
                         "measured": r["value"], "predicted": al * ratio(b)})
check = (pd.DataFrame(rows).pivot_table(index=["drafter", "batch"], columns="costs",
                                        values="predicted")
         .add_prefix("predicted, ")
         .join(bench.set_index(["drafter", "concurrency"])["value"]
               .rename_axis(["drafter", "batch"]).rename("measured")))
err = check["predicted, calibrated"] / check["measured"] - 1
print(f"calibrated model: largest error {err.abs().max():.1%}")
# CI guard on the paragraph below (seen: 8.1%, EAGLE-1 at batch 64)
assert err.abs().max() < 0.10
check.round(2)

# %% [markdown]
# The throughput speedup at a large batch is about `1/C2R`: the measured 1.28-1.30 at batch 128
# says `C2R ≈ 0.8` on a real engine for this setup. The calibrated model reproduces the measured
# fall from about 1.7 at batch 1 to about 1.3 at batch 128 within 9% at every batch: for the
# EAGLE-1 head it falls a little early (1.41 against 1.53 measured at batch 64, 1.19 against
# 1.28 at 128), for EAGLE-3 it is within 0.03 throughout. The roofline keeps too much of the
# speedup at batch 64 (1.61-1.62 against 1.53-1.55), where its ideal GEMMs are still
# memory-bound, and for EAGLE-3 loses too much at batch 128 (1.20 against 1.30). On other data
# sets and on Qwen3-8B the calibrated model over-predicts EAGLE-3's speedup at batch 128 (its
# extra cost over EAGLE-1 is fitted at batch 1, as a fixed cost per pass): notes/costs.md
# reports it, not tuned away.
#
# ## Exercises
#
# 1. Set `ALPHA = 0.8` and re-run: where does the break-even move, and why (C1R or C2R)?
# 2. Set `costs.linear.verify_per_token_s` back to the H100 default `1.5e-5`. Is there still a
#    break-even below capacity? Try `k = 8`.
# 3. Change `K` to 2 and compare the measured and predicted break-even again.
# 4. In the last section, switch one calibration term off at a time
#    (`sdsim.costs.calibration.ablated(shipped_calibration(), "host_request")`, passed to
#    `load_table(..., calibration=...)`): which term moves C2R most?
