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
# # 2. Continuous batching
#
# A continuous-batching engine (vLLM, SGLang, TensorRT-LLM) runs one *step* after another; every
# request in flight advances by one token per step, new requests join at the next step and
# finished ones leave. Nobody chooses the batch size: it **emerges** from the arrival rate. And
# how long a step takes depends on that batch through the GPU's roofline: a step that reads the
# model's weights once is **memory-bound** while the batch is small (more requests are nearly
# free) and **compute-bound** once it carries enough tokens (each token costs its FLOPs).
#
# This notebook looks at the three consequences: the batch distribution, the step-time curve, and
# how prefill work in the same steps inflates time to first token (TTFT) and the decode gap.
#
# Set `SDSIM_NOTEBOOK_SMALL=1` for a quicker run (CI): the same 3,000-request runs at three arrival
# rates instead of eight.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

import sdsim
from sdsim.analytic.operating import derive_coefficients
from sdsim.analytic.prediction import gps_law
from sdsim.costs.build import build_cost_model
from sdsim.costs.calibration import shipped_calibration
from sdsim.hardware import get_gpu

SMALL = os.environ.get("SDSIM_NOTEBOOK_SMALL", "") not in ("", "0")
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "scenarios").is_dir())
# 3,000 requests per run: long enough for the stability test to judge a run at 75% of capacity
N_REQUESTS = 3000

# %% [markdown]
# ## The batch emerges from the arrival rate
#
# We use `scenarios/plain.yaml` (an 8B model on an H100, no speculation) with the linear step-cost
# model: a decode step of `n` requests lasts `a + b·n`. By Little's law the mean batch is about
# `λ` times the time a request spends decoding, and that time itself grows with the batch.

# %%
plain = sdsim.load_scenario(
    ROOT / "scenarios" / "plain.yaml",
    overrides={
        "costs.source": "linear",
        "workload.num_requests": N_REQUESTS,
        "warmup_requests": N_REQUESTS // 10,
    },
)
rates = [5, 20, 30] if SMALL else [2, 5, 10, 15, 20, 25, 30, 35]
rows = []
for r in rates:
    s = sdsim.simulate(plain.with_overrides({"workload.rate": r}), seed=0).summary
    rows.append(
        {"rate": r, "batch_mean": s["batch_mean"], "e2e_mean": s["e2e_mean"],
         "tpot_mean_ms": 1e3 * s["tpot_mean"], "stable": s["stable"]}
    )
batches = pd.DataFrame(rows)
batches.round(3)

# %% [markdown]
# The batch grows faster than linearly with the rate: more requests in flight make every step
# longer, so each request stays longer, so there are even more in flight. The decode gap (TPOT)
# grows with it.
#
# ## The batch fluctuates, more than you would guess
#
# Treat the engine as processor sharing whose speed depends on the number served (Cohen's
# generalised processor sharing, THEORY.md): its stationary law of the number in system has a
# closed form. For `t(n) = a + b·n` it is negative binomial, **over-dispersed** by `1/(1 − ρ)`
# compared with a Poisson number of the same mean. We compare the simulated, time-weighted
# distribution of the batch with that law at one rate.

# %%
rate = 30.0
scn = plain.with_overrides({"workload.rate": rate})
res = sdsim.simulate(scn, seed=1)
st = res.steps[res.steps["start"] > res.requests["arrival"].iloc[scn.warmup_requests]]
weights = st["duration"].to_numpy()
batch = st["num_seqs"].to_numpy()
sim_pmf = np.bincount(batch, weights=weights) / weights.sum()

co = derive_coefficients(scn)
law = gps_law(scn, co, rate, build_cost_model(scn))
n = np.arange(law.pmf.shape[0])

sim_mean = float(np.average(batch, weights=weights))
sim_var = float(np.average((batch - sim_mean) ** 2, weights=weights))
law_mean = float((n * law.pmf).sum())
law_var = float(((n - law_mean) ** 2 * law.pmf).sum())
print(f"batch mean      : simulated {sim_mean:6.1f}   birth-death law {law_mean:6.1f}")
print(f"variance / mean : simulated {sim_var / sim_mean:6.2f}   birth-death law "
      f"{law_var / law_mean:6.2f}   (a Poisson batch would give 1.00)")

fig, ax = plt.subplots(figsize=(8, 4))
ax.bar(np.arange(sim_pmf.size), sim_pmf, width=1.0, alpha=0.5, label="simulation (time-weighted)")
ax.plot(n, law.pmf, "k", label="GPS birth-death law")
ax.set_xlabel("requests in the batch")
ax.set_ylabel("fraction of time")
ax.set_xlim(0, max(n[-1], sim_pmf.size))
ax.xaxis.set_major_locator(MaxNLocator(integer=True))
ax.legend()
plt.show()
# CI guard: both are well above the Poisson value of 1 (seen: 2.2 to 3.5 simulated, 1.7 law).
assert sim_var / sim_mean > 1.5 and law_var / law_mean > 1.3

# %% [markdown]
# The variance of the batch is two to three and a half times its mean: a server at 75% of
# capacity spends real time at batches far above its average, and those are the moments the tail
# latency is made (notebook 4). The birth-death law gets the mean right but under-states the
# spread: it spreads prefill work evenly over all steps, while the simulated engine has long
# prefill steps and short decode-only ones. The simulated spread also varies a lot from run to
# run (slow excursions of the batch dominate it): change `seed=1` and see.
#
# ## Step time vs batch: memory-bound, then compute-bound
#
# Now the step cost itself, from the default **calibrated** cost model (`costs.source: auto`):
# the H100's spec sheet and the Llama-3.1-8B architecture, with GEMM efficiencies fitted to
# measured kernels and a serving engine's host costs per step and per request (notes/costs.md).
# A decode step reads all weights once (~16 GB) whatever the batch; each token adds its FLOPs
# (~16 GFLOP) and each request reads its KV cache and costs some host time. With speculative
# decoding every request sends `k + 1` tokens through the verifier, so the same batch carries
# `k + 1` times the FLOPs.

# %%
server = sdsim.load_scenario(ROOT / "scenarios" / "plain.yaml")
gpu = get_gpu("h100-sxm")
# ridge point: tokens per pass at which weight-streaming GEMMs turn compute-bound (bf16 weights are
# 2 bytes per parameter and cost 2 FLOPs per token, so one FLOP per weight byte per token), at the
# efficiencies fitted to the H100's measured GEMMs
gemm = shipped_calibration().gpu("h100-sxm").gemm
ridge = (gpu.bf16_tflops * gemm.compute_eff) / (gpu.hbm_tbps * gemm.memory_eff)
print(f"ridge point ≈ {ridge:.0f} tokens per forward pass")

ctx = 640  # a request's mean KV length: 512-token prompt + half of 256 output tokens
ns = np.unique(np.geomspace(1, 512, 40).astype(int))
fig, ax = plt.subplots(1, 2, figsize=(11, 4))
table = {}
for k in (0, 2, 4):
    t = np.array([sdsim.step_time(server, decode_seqs=int(b), context_tokens=ctx, k=k).total
                  for b in ns])
    ax[0].plot(ns, 1e3 * t, label=f"k = {k} ({k + 1} token{'s' if k else ''} per request)")
    ax[1].plot(ns * (k + 1), 1e6 * t / (ns * (k + 1)), label=f"k = {k}")
    table[k] = {b: 1e3 * sdsim.step_time(server, decode_seqs=b, context_tokens=ctx, k=k).total
                for b in (1, 32, 64, 128, 256)}
ax[0].set_xlabel("decoding requests in the step")
ax[0].set_ylabel("step time (ms)")
ax[0].legend()
ax[1].axvline(ridge, color="grey", ls="--", label="ridge point")
ax[1].set_xscale("log")
ax[1].set_yscale("log")
ax[1].set_xlabel("tokens through the verifier")
ax[1].set_ylabel("step time per token (µs)")
ax[1].legend()
plt.show()
pd.DataFrame(table).rename_axis("batch").round(2).add_prefix("step ms, k=")

# %% [markdown]
# Left: at k = 0 the step time barely moves for small batches (reading the weights dominates) and
# grows with the KV reads and the host's per-request work; at k = 4 the slope steepens sharply
# once the batch carries more tokens than the ridge point (measured GEMMs are slowest around it).
# Right: the cost per token falls as the fixed weight read is shared, until the pass becomes
# compute-bound and it stops falling. This is why speculative decoding is nearly free at low load
# and expensive at high load (notebook 3).
#
# ## Prefill interference on TTFT
#
# A new request's prompt is processed (prefilled) inside the same steps that decode everyone else
# (chunked prefill, up to `max_num_batched_tokens` tokens per step). So
#
# * TTFT = `queue_delay` (waiting for the step in progress, or for admission) + the prefill
#   step(s), and a prefill step also carries the whole decoding batch: TTFT grows with load even
#   when nobody queues for admission;
# * every prefill makes one step longer for all decoding requests: the decode gap gets spikes,
#   larger with long prompts. Chunking the prompt into smaller pieces bounds the spikes and pays
#   in TTFT.
#
# Compare 512-token prompts with 2048-token prompts, with the default 8192-token budget and with
# 512-token chunks.

# %%
variants = {
    "prompt 512": {},
    "prompt 2048": {"workload.prompt_tokens": 2048},
    "prompt 2048, chunk 512": {"workload.prompt_tokens": 2048,
                               "server.max_num_batched_tokens": 512},
}
rows = []
for name, over in variants.items():
    for r in (5, 10):
        out = sdsim.simulate(plain.with_overrides({"workload.rate": r, **over}), seed=0)
        s, dur = out.summary, out.steps["duration"]
        rows.append({"variant": name, "rate": r,
                     "queue_delay_ms": 1e3 * s["queue_delay_mean"],
                     "ttft_mean_ms": 1e3 * s["ttft_mean"], "ttft_p99_ms": 1e3 * s["ttft_p99"],
                     "tpot_mean_ms": 1e3 * s["tpot_mean"],
                     "longest_step_ms": 1e3 * dur.max(), "stable": s["stable"]})
interference = pd.DataFrame(rows)
interference.round(1)

# %% [markdown]
# Read the table row by row. With 512-token prompts `queue_delay` is a few milliseconds and TTFT
# is mostly the prefill step itself. Quadrupling the prompt more than doubles TTFT and slows the
# decode gap (TPOT) of *everyone else*, more so at the higher rate: prefill is work the decoding
# requests share. Chunks of 512 tokens cap the longest step (no decode ever waits behind a whole
# 2048-token prefill) but the prompt now needs several steps, and TTFT pays.
#
# ## Exercises
#
# 1. Re-run the batch histogram at `rate = 15` and `rate = 38`. How does the over-dispersion
#    ratio change? Compare it with `1/(1 − ρ)`.
# 2. Plot the step-time curve for `hardware: a100-80gb` (`server.with_overrides({"hardware":
#    "a100-80gb"})`). Where is its ridge point?
# 3. Set `server.scheduler: prefill-first` in the interference table. Which of TTFT and TPOT
#    improves, and which pays?
