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
# # 6. Mixture of experts: how expert coverage turns SD's trade-off around
#
# A mixture-of-experts (MoE) layer routes each token to `m` of its `M` experts. A decode step
# reads the weights of every expert that *some* token in the step was routed to, so the bytes a
# step moves depend on how many tokens it carries. Under uniform routing the expected fraction of
# experts touched by `T` tokens is
#
# `φ(T) = 1 − (1 − m/M)^T`.
#
# For a dense model a step reads all weights whatever the batch; for an MoE model a nearly empty
# server reads few experts and a busy one reads them all. This notebook shows what that does to
# step times, and why speculative decoding, whose verifier sends `k + 1` tokens per request, pays
# off differently on an MoE model than on a dense one.
#
# Set `SDSIM_NOTEBOOK_SMALL=1` for a quicker run (CI): the same 3,000-request runs at three loads
# per model instead of five or six.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import sdsim
from sdsim.analytic.moe import expert_fraction
from sdsim.labels import field_label
from sdsim.models import resolve_model

SMALL = os.environ.get("SDSIM_NOTEBOOK_SMALL", "") not in ("", "0")
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "scenarios").is_dir())
# 3,000 requests per run: long enough for the stability test to call every run below stable, so
# each speedup compares two steady states
N_REQUESTS = 3000

# %% [markdown]
# ## Expert coverage φ(T)
#
# Qwen3-30B-A3B has 128 experts per layer and routes each token to 8; gpt-oss-20b has 32 experts
# and routes to 4. The dots mark the tokens of a lone request's step with plain decoding
# (`T = 1`) and with `k = 3` (`T = 4`), and of a batch of 16 requests with `k = 3` (`T = 64`).

# %%
T = np.arange(0, 257)
fig, ax = plt.subplots(figsize=(8, 4))
for name in ("qwen3-30b-a3b", "gpt-oss-20b"):
    spec = resolve_model(name, "target")
    M, m = spec.experts, spec.experts_per_token
    ax.plot(T, expert_fraction(T, M, m), label=f"{name} (M = {M}, m = {m})")
    marks = [1, 4, 64]
    ax.plot(marks, expert_fraction(marks, M, m), "o", color=ax.lines[-1].get_color(),
            label=f"{name} at T = 1, 4, 64")
    print(f"{name:14s} φ(1) = {expert_fraction(1, M, m):.3f}  φ(4) = "
          f"{expert_fraction(4, M, m):.3f}  φ(64) = {expert_fraction(64, M, m):.3f}")
ax.set_xscale("symlog", linthresh=1)
ax.set_xlabel("tokens routed in the step, T (tokens)")
ax.set_ylabel("fraction of experts touched, φ(T)")
ax.legend()
plt.show()

# %% [markdown]
# Verifying `k + 1 = 4` tokens for a lone request touches almost four times as many experts as
# decoding one token (`φ(4)/φ(1) ≈ 3.6` for Qwen3-30B-A3B). By 64 tokens in a step, nearly all
# experts are read anyway.
#
# ## Step time vs batch: dense vs MoE
#
# The roofline cost model (the H100 spec sheet; `costs.source: roofline`) prices the expert
# GEMMs by the expected number of experts touched. Compare Llama-3.1-8B (dense, 8B parameters
# read every step) with Qwen3-30B-A3B (MoE: 30B parameters in all, 3.3B active per token), each
# with plain decoding and with `k = 3`.

# %%
dense = sdsim.load_scenario(ROOT / "scenarios" / "default.yaml",
                            overrides={"costs.source": "roofline", "spec.k": 3})
moe = sdsim.load_scenario(ROOT / "scenarios" / "moe-qwen3-30b-a3b.yaml",
                          overrides={"costs.source": "roofline"})
ctx = 640  # mean KV length: 512-token prompt + half of the 256-token answer
batches = np.unique(np.geomspace(1, 256, 30).astype(int))
fig, ax = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
rows = []
for a, (name, scn) in zip(ax, (("Llama-3.1-8B (dense)", dense), ("Qwen3-30B-A3B (MoE)", moe)),
                          strict=True):
    t = {k: np.array([sdsim.step_time(scn, decode_seqs=int(b), context_tokens=ctx, k=k).total
                      for b in batches]) for k in (0, 3)}
    for k in (0, 3):
        a.plot(batches, 1e3 * t[k], label=f"k = {k}")
    a.set_title(name)
    a.set_xscale("log")
    a.set_xlabel("decoding requests in the step")
    a.legend()
    for b in (1, 8, 64, 256):
        i = int(np.searchsorted(batches, b))
        rows.append({"model": name, "batch": b, "step_ms_k0": 1e3 * t[0][i],
                     "step_ms_k3": 1e3 * t[3][i], "k3 / k0": t[3][i] / t[0][i]})
ax[0].set_ylabel("step time (ms)")
plt.show()
steps = pd.DataFrame(rows)
steps.round(2)

# %% [markdown]
# The dense model's step is flat at small batches (the 16 GB weight read dominates) and verifying
# 4 tokens per request costs only ~30% more than 1 token until the batch turns compute-bound. The
# MoE step is the other way round: a lone request's step is cheap (few experts read), its cost
# climbs steeply as the batch grows and more experts are touched, then flattens once all are
# read; and `k = 3` costs *twice* as much as `k = 0` at small batches (it reads 3.6× the
# experts), but only ~15–30% more once the batch covers every expert.
#
# ## What that does to speculative decoding's speedup
#
# Simulate both servers with and without speculation (`k = 3`, `α = 0.7`, EAGLE-style drafter)
# over a range of loads, with common random numbers, and compare the speedups.

# %%
loads = {
    "Llama-3.1-8B (dense)": (dense, [2.0, 20.0, 30.0] if SMALL else [2.0, 10.0, 20.0, 25.0, 30.0]),
    "Qwen3-30B-A3B (MoE)": (moe, [1.0, 4.0, 14.0] if SMALL else [1.0, 2.0, 4.0, 7.0, 10.0, 14.0]),
}
size = {"workload.num_requests": N_REQUESTS, "warmup_requests": N_REQUESTS // 10}
rows = []
for name, (scn, rates) in loads.items():
    for r in rates:
        e = {k: sdsim.simulate(scn.with_overrides({**size, "workload.rate": r, "spec.k": k}),
                               seed=0).summary for k in (0, 3)}
        rows.append({"model": name, "rate": r, "e2e_k0": e[0]["e2e_mean"],
                     "e2e_k3": e[3]["e2e_mean"], "speedup": e[0]["e2e_mean"] / e[3]["e2e_mean"],
                     "batch_k0": e[0]["batch_mean"], "stable": e[0]["stable"] and e[3]["stable"]})
sd = pd.DataFrame(rows)

fig, ax = plt.subplots(figsize=(8, 4))
for name, grp in sd.groupby("model"):
    ax.plot(grp["rate"], grp["speedup"], "o-", label=name)
ax.axhline(1.0, color="grey", lw=0.8, label="no speedup")
ax.set_xlabel(field_label("workload.rate"))
ax.set_ylabel("speedup of k = 3 over plain decoding")
ax.legend()
plt.show()
sd.round(3)

# %%
dense_sp = sd[sd["model"].str.contains("dense")]["speedup"].to_numpy()
moe_sp = sd[sd["model"].str.contains("MoE")]["speedup"].to_numpy()
print(f"dense: speedup {dense_sp[0]:.2f} at the lowest rate, {dense_sp[-1]:.2f} at the highest")
print(f"MoE  : speedup {moe_sp[0]:.2f} at the lowest rate, {moe_sp[-1]:.2f} at the highest")
# CI guards on the claim below (seen: dense 1.97 rising to 2.29; MoE 1.05 rising to 2.39), and
# every run stable, so each speedup compares two steady states
assert dense_sp[0] > 1.5 and moe_sp[0] < 1.3 and moe_sp[-1] > 1.8
assert (sd["stable"] == True).all()  # noqa: E712 (None: not enough data to judge)

# %% [markdown]
# On the dense model SD gives about 2× at every load shown, up to 80% of plain decoding's
# capacity (on this H100 the verifier turns compute-bound only near capacity; notebook 3 showed
# a server where SD then breaks even). On
# the MoE model it is the reverse: at light load SD gains almost nothing, because every verify
# step of a lone request reads several times the expert weights, which eats the saving in steps;
# as the load grows the experts are read anyway, the extra verify tokens ride along almost free,
# and the speedup *rises* to well above 2×. On MoE models "SD helps at low load and hurts at high
# load" is the wrong rule of thumb, at least until the verifier becomes compute-bound.
#
# ## Exercises
#
# 1. Replace the MoE target by `gpt-oss-20b` (32 experts, top-4). Its coverage saturates after
#    fewer tokens: how does the low-load speedup change?
# 2. Try `k = 1` and `k = 6` on the MoE server at 1 and 10 req/s. Which k is best at each load?
# 3. `scenarios/moe-qwen3-30b-a3b.yaml` ships with a *linear* fit of these costs
#    (`costs.source: linear`). Re-run the speedup comparison with it: what does a straight line
#    through φ(T) miss at light load?
