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
# # 7. Prefix caching: when it beats speculation, how the two share the KV cache, and routing
#
# Real traffic repeats itself: every request of a product starts with the same system prompt, and
# every turn of a chat resends the conversation so far. A server with **prefix caching** (vLLM's
# automatic prefix caching, on by default in V1; SGLang's radix cache) keeps the KV blocks of
# those prefixes after a request finishes; a later request that starts with the same full blocks
# takes them from the cache instead of prefilling them again. Speculative decoding (SD) attacks
# the other phase: it makes *decoding* cheaper per token. Which one matters more depends on how
# long the prompts are, how much of them repeats, and the load.
#
# Three questions:
#
# 1. **When does caching beat speculation?** Long shared prompts at high load: prefill saved vs
#    decode sped up (caching on/off × `k = 0`/`k = 4`, simulated and from the closed-form model).
# 2. **How do they combine?** Speculation reserves look-ahead KV slots, cached prefixes occupy
#    blocks too: what does a small KV cache do to each?
# 3. **What does prefix-affinity routing buy on several replicas?** Each replica has its own
#    cache; a router that sends a conversation back to the replica holding its blocks keeps the
#    hit rate up.
#
# Set `SDSIM_NOTEBOOK_SMALL=1` for a quicker run (CI): one seed per point instead of three,
# 800-request runs instead of 2,000 (6,000 for the replicas instead of 2,000 there), two loads
# instead of three, two draft lengths and cache sizes instead of four and three. The numbers the
# prose quotes are those of the full size; the checks under each figure hold at both sizes.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

import sdsim
from sdsim.labels import field_label, metric_label
from sdsim.metrics import t_confidence_interval

SMALL = os.environ.get("SDSIM_NOTEBOOK_SMALL", "") not in ("", "0")
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "scenarios").is_dir())
SEEDS = [0] if SMALL else [0, 1, 2]
N_REQUESTS = 800 if SMALL else 2000
KEEP = ("prefix_hit_rate", "prefill_saved_fraction", "e2e_mean", "e2e_p99", "ttft_mean",
        "ttft_p99", "tpot_mean", "preemptions", "prefix_evictions", "batch_mean",
        "kv_util_mean", "stable")


def runs(path: Path, overrides: dict, n: int = N_REQUESTS) -> pd.DataFrame:
    """One simulated run per seed: the summary figures this notebook reads, one row each."""
    scn = sdsim.load_scenario(path, overrides={"workload.num_requests": n,
                                               "warmup_requests": n // 10, **overrides})
    rows = []
    for seed in SEEDS:
        s = sdsim.simulate(scn, seed=seed).summary
        rows.append({"seed": seed, **{k: s[k] for k in KEEP}})
    return pd.DataFrame(rows)


def mean_ci(x: pd.Series) -> tuple[float, float]:
    """Mean over seeds and the half-width of its 95% t interval (0 with one seed)."""
    m, lo, hi = t_confidence_interval(x.to_numpy(dtype=float))
    return m, (hi - lo) / 2


# %% [markdown]
# ## 1. Prefill saved vs decode sped up
#
# `scenarios/shared-system-prompt.yaml`: every request starts with one of 16 system prompts of
# 1,000-3,000 tokens (Zipf popularity) followed by its own ~200-token question, and its answer is
# ~250 tokens; an 8B verifier with an EAGLE head on one H100. Four servers: neither technique,
# SD only (`k = 4`), caching only, both. What does each technique remove from a request's work?

# %%
SSP = ROOT / "scenarios" / "shared-system-prompt.yaml"
CONFIGS = {
    "neither (cache off, k = 0)": {"server.prefix_caching": False, "spec.k": 0},
    "SD only (cache off, k = 4)": {"server.prefix_caching": False, "spec.k": 4},
    "caching only (k = 0)": {"server.prefix_caching": True, "spec.k": 0},
    "caching + SD (k = 4)": {"server.prefix_caching": True, "spec.k": 4},
}
base = sdsim.load_scenario(SSP)
light = sdsim.simulate(base.with_overrides({"workload.rate": 2.0, "workload.num_requests":
                                            N_REQUESTS, "warmup_requests": N_REQUESTS // 10}),
                       seed=0)
req = light.requests
prompt_mean = float(req["prompt_tokens"].mean())
hit = float(light.summary["prefix_hit_rate"])
prefill_full = sdsim.step_time(base, decode_seqs=0, context_tokens=0,
                               prefill_tokens=round(prompt_mean)).prefill
prefill_cached = sdsim.step_time(base, decode_seqs=0, context_tokens=0,
                                 prefill_tokens=round(prompt_mean * (1 - hit))).prefill
out_mean = float(req["output_tokens"].mean())
tps = float(light.summary["tokens_per_step_mean"])
print(f"mean prompt {prompt_mean:,.0f} tokens, of which the cache serves {hit:.1%}")
print(f"prefill GPU time of a mean prompt: {1e3 * prefill_full:.0f} ms uncached, "
      f"{1e3 * prefill_cached:.0f} ms with the measured hit rate")
print(f"mean answer {out_mean:.0f} tokens: {out_mean:.0f} decode steps at k = 0, "
      f"{out_mean / tps:.0f} at k = 4 ({tps:.2f} tokens per step)")

# %% [markdown]
# A request's prompt is about nine times its answer, and caching removes most of the prompt's
# prefill; SD removes about two thirds of the decode *steps*. The two remove different things,
# and what each is worth depends on the load: an idle server's latency is dominated by the
# ~250 decode steps a request takes one after another (SD's ground), while a busy server's is
# dominated by the GPU time every request costs the others: there, each uncached 2,000-token
# prefill is what fills the steps (caching's ground).
#
# The closed-form model (`sdsim.predict`, here `sdsim.predict_grid` over a range of rates)
# takes the hit rate as an input, `analytic.prefix_hit_rate`; we give it the one the simulation
# measured at light load above. Dots: simulation, mean over the seeds with its 95% interval.

# %%
model_rates = np.arange(1.0, 25.0, 1.0)
model = []
for name, ov in CONFIGS.items():
    scn = base.with_overrides({**ov, "analytic.prefix_hit_rate":
                               hit if ov["server.prefix_caching"] else 0.0})
    g = sdsim.predict_grid(scn, model_rates, ks=[ov["spec.k"]], quantiles=False)
    model.append(g.assign(config=name)[["config", "rate", "e2e_mean", "saturation_rate"]])
model = pd.concat(model, ignore_index=True)

sim_rates = [2.0, 10.0] if SMALL else [2.0, 6.0, 10.0]
sim = []
for name, ov in CONFIGS.items():
    for r in sim_rates:
        df = runs(SSP, {**ov, "workload.rate": r})
        m, h = mean_ci(df["e2e_mean"])
        sim.append({"config": name, "rate": r, "e2e_mean": m, "e2e_ci": h,
                    "ttft_mean": df["ttft_mean"].mean(), "hit": df["prefix_hit_rate"].mean(),
                    "stable": bool(df["stable"].fillna(True).all())})
sim = pd.DataFrame(sim)

fig, ax = plt.subplots(figsize=(12, 4.5), layout="constrained")
for name in CONFIGS:
    mg = model[(model["config"] == name) & np.isfinite(model["e2e_mean"])]
    line, = ax.plot(mg["rate"], mg["e2e_mean"], label=f"{name}: model")
    sg = sim[sim["config"] == name]
    ax.errorbar(sg["rate"], sg["e2e_mean"], yerr=sg["e2e_ci"], fmt="o", capsize=3,
                color=line.get_color(), label=f"{name}: simulated (95% CI)")
ax.set_ylim(0, 8)
ax.set_xlabel(field_label("workload.rate"))
ax.set_ylabel(metric_label("e2e_mean"))
ax.set_title("shared system prompts: mean latency vs load")
ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
plt.show()

sat = model.groupby("config")["saturation_rate"].first()
print("model saturation rate (req/s):", {k: round(v, 1) for k, v in sat.items()})
wide = model.pivot(index="rate", columns="config", values="e2e_mean")
sd_only, cache_only = wide["SD only (cache off, k = 4)"], wide["caching only (k = 0)"]
crossover = float(wide.index[(cache_only < sd_only).to_numpy()].min())
print(f"model: caching alone beats SD alone from {crossover:.0f} req/s on")
sim.round(3)

# %% [markdown]
# At light load SD alone gives about 40% less latency than caching alone: a lone request spends
# its life decoding, and SD shortens that. As the load grows the uncached servers slow down much
# faster, because each request's ~2,000 prompt tokens of prefill take GPU time from everyone
# else's decode steps; caching alone overtakes SD alone a little below 10 req/s (the printed
# crossover), and the uncached servers saturate at 10-12 req/s where the cached ones carry
# 17-25 req/s. Both together are best at every load: they remove different work. The
# simulation agrees with the model's ranking at every rate it was run at, and with its mean
# within a few percent wherever the server is below 80% of its saturation rate (the checks
# below).

# %%
for r in sim_rates:
    at = sim[sim["rate"] == r].set_index("config")
    assert at.loc["caching + SD (k = 4)", "e2e_mean"] == at["e2e_mean"].min(), r
lo, hi = sim_rates[0], sim_rates[-1]
s_lo = sim[sim["rate"] == lo].set_index("config")["e2e_mean"]
s_hi = sim[sim["rate"] == hi].set_index("config")["e2e_mean"]
print(f"simulated at {lo:g} req/s: SD only {s_lo['SD only (cache off, k = 4)']:.2f} s, "
      f"caching only {s_lo['caching only (k = 0)']:.2f} s")
print(f"simulated at {hi:g} req/s: SD only {s_hi['SD only (cache off, k = 4)']:.2f} s, "
      f"caching only {s_hi['caching only (k = 0)']:.2f} s")
assert s_lo["SD only (cache off, k = 4)"] < s_lo["caching only (k = 0)"]
assert s_hi["caching only (k = 0)"] < s_hi["SD only (cache off, k = 4)"]
assert 6 <= crossover <= 12
both = sim.merge(model, on=["config", "rate"], suffixes=("_sim", "_model"))
both = both[both["rate"] <= 0.8 * both["saturation_rate"]]
err = (both["e2e_mean_model"] / both["e2e_mean_sim"] - 1).abs()
print(f"model vs simulation, e2e mean below 80% of saturation: largest error {err.max():.1%} "
      f"over {len(both)} points")
assert err.max() < 0.10

# %% [markdown]
# ## 2. Look-ahead slots and cached blocks share one KV cache
#
# Both techniques use KV blocks. SD reserves `k + 1` slots per decoding request before each
# step (they are never cached, and the rejected ones are released after it); a cached prefix
# keeps its blocks after its request finished, and they are evicted least-recently-used when a
# running request needs room. On an H100 with an 8B model the cache has ~24,700 blocks and never
# fills here. Shrink it (as a larger model, a longer context or a smaller GPU would) and the
# two compete: here at 6 req/s, `server.num_gpu_blocks` from tight to ample, `k` from 0 to 6.

# %%
blocks = [1200, 2500] if SMALL else [1200, 1600, 2500]
ks = [0, 4] if SMALL else [0, 2, 4, 6]
rows = []
for nb in blocks:
    for k in ks:
        df = runs(SSP, {"workload.rate": 6.0, "server.num_gpu_blocks": nb, "spec.k": k})
        rows.append({"blocks": nb, "k": k, "hit": df["prefix_hit_rate"].mean(),
                     "preemptions per 1k": 1000 * df["preemptions"].mean() / N_REQUESTS,
                     "evictions per request": df["prefix_evictions"].mean() / N_REQUESTS,
                     "batch": df["batch_mean"].mean(), "kv use": df["kv_util_mean"].mean(),
                     "e2e_mean": df["e2e_mean"].mean(), "ttft_mean": df["ttft_mean"].mean()})
mix = pd.DataFrame(rows)

fig, ax = plt.subplots(1, 3, figsize=(13, 4), layout="constrained")
for nb, grp in mix.groupby("blocks"):
    ax[0].plot(grp["k"], grp["hit"], "o-", label=f"{nb:,} blocks")
    ax[1].plot(grp["k"], grp["preemptions per 1k"], "o-", label=f"{nb:,} blocks")
    ax[2].plot(grp["k"], grp["e2e_mean"], "o-", label=f"{nb:,} blocks")
ax[0].set_ylabel(metric_label("prefix_hit_rate"))
ax[1].set_ylabel("preemptions per 1,000 requests")
ax[2].set_ylabel(metric_label("e2e_mean"))
ax[2].set_yscale("log")
ax[2].yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
ax[2].yaxis.set_major_formatter(ScalarFormatter())
ax[2].yaxis.set_minor_formatter(NullFormatter())
for a in ax:
    a.set_xlabel(field_label("spec.k"))
    a.legend()
plt.show()
mix.round(3)

# %% [markdown]
# The cache size sets the hit rate (from ~0.64 at 1,200 blocks to ~0.80 at 2,500 here): cached
# prefixes are what the allocator evicts first when running requests need room, so a small
# cache forgets the less popular system prompts between their uses. The look-ahead slots cost
# the hit rate about one point between `k = 0` and `k = 4`: `k + 1` slots per running request
# is a few blocks against the hundred or more a system prompt holds. The larger effect goes the
# other way: SD finishes requests sooner, so fewer run at once (the `batch` column), so running
# requests hold fewer blocks and preempt each other far less often in a tight cache. At the
# tightest size plain decoding preempts about six times as often as `k = 4`, and its latency
# collapses (tens of seconds, against about 1.4 s with `k = 4`): SD *relieves* KV pressure here
# rather than adding to it.

# %%
tight = mix[mix["blocks"] == blocks[0]].set_index("k")
print(f"{blocks[0]:,} blocks: preemptions per 1,000 requests k = 0: "
      f"{tight.loc[0, 'preemptions per 1k']:.0f}, k = 4: {tight.loc[4, 'preemptions per 1k']:.0f}; "
      f"hit rate k = 0: {tight.loc[0, 'hit']:.3f}, k = 4: {tight.loc[4, 'hit']:.3f}")
assert tight.loc[4, "preemptions per 1k"] < tight.loc[0, "preemptions per 1k"]
assert abs(tight.loc[4, "hit"] - tight.loc[0, "hit"]) < 0.05
by_size = mix[mix["k"] == 4].set_index("blocks")["hit"]
assert by_size.is_monotonic_increasing

# %% [markdown]
# ## 3. Several replicas: what prefix-affinity routing buys
#
# With four replicas each has its own cache. `scenarios/prefix-affinity-4x.yaml` runs the
# multi-turn chat of `multi-turn-chat.yaml` (geometric turns, mean 3.5; 20 s think time; every
# turn resends the conversation) at 40 turns/s over four H100s. A round-robin router sends a
# later turn to the replica that holds its conversation one time in four;
# `server.router: prefix-affinity` hashes the conversation to a replica, falling back to the
# least-loaded one when that replica is more than `server.affinity_imbalance` requests busier.

# %%
PA = ROOT / "scenarios" / "prefix-affinity-4x.yaml"
N_ROUTER = 2000 if SMALL else 6000
rows = []
for router in ("prefix-affinity", "least-outstanding", "round-robin"):
    df = runs(PA, {"server.router": router}, n=N_ROUTER)
    row = {"router": router}
    for m in ("prefix_hit_rate", "ttft_mean", "ttft_p99", "e2e_mean"):
        row[m], row[m + "_ci"] = mean_ci(df[m])
    rows.append(row)
routers = pd.DataFrame(rows).set_index("router")

fig, ax = plt.subplots(1, 3, figsize=(13, 4), layout="constrained")
x = np.arange(len(routers))
for a, m, scale, where in ((ax[0], "prefix_hit_rate", 1.0, "upper right"),
                           (ax[1], "ttft_mean", 1e3, "upper left"),
                           (ax[2], "ttft_p99", 1e3, "upper left")):
    a.bar(x, scale * routers[m], color=["C0", "C1", "C2"], label="mean over seeds")
    a.errorbar(x, scale * routers[m], yerr=scale * routers[m + "_ci"], fmt="none",
               ecolor="black", capsize=4, label="95% CI")
    a.set_xticks(x, routers.index.str.replace("-", "-\n"))
    a.set_ylim(0, 1.35 * scale * routers[m].max())
    a.set_xlabel("router")
    a.set_ylabel(metric_label(m, "ms" if scale != 1.0 else None))
    a.legend(loc=where)
plt.show()
routers.round(4)

# %% [markdown]
# Affinity keeps the hit rate near the single-replica figure (about 0.9) where round-robin and
# least-outstanding fall to about 0.55: three turns in four land on a replica that never saw the
# conversation and prefill it all again. That prefill is what the TTFT columns show: with
# affinity the mean TTFT is about 40% lower and the p99 about two thirds lower. The end-to-end
# latency moves less (about 8%, within the seeds' spread at this run length): the answers' ~300
# decode steps dominate it, and at this load no replica is near saturation, so the prefill saved
# mostly shortens the wait for the first token.

# %%
pa, rr = routers.loc["prefix-affinity"], routers.loc["round-robin"]
print(f"hit rate: prefix-affinity {pa['prefix_hit_rate']:.3f}, round-robin "
      f"{rr['prefix_hit_rate']:.3f}; TTFT mean {1e3 * pa['ttft_mean']:.1f} ms vs "
      f"{1e3 * rr['ttft_mean']:.1f} ms; TTFT p99 {1e3 * pa['ttft_p99']:.1f} ms vs "
      f"{1e3 * rr['ttft_p99']:.1f} ms; e2e mean {pa['e2e_mean']:.3f} s vs {rr['e2e_mean']:.3f} s "
      f"({N_ROUTER:,} turns, {len(SEEDS)} seed(s))")
assert pa["prefix_hit_rate"] > rr["prefix_hit_rate"] + 0.2
assert pa["ttft_mean"] < 0.8 * rr["ttft_mean"]
assert pa["e2e_mean"] < rr["e2e_mean"]

# %% [markdown]
# ## Exercises
#
# 1. How large must the cache be for multi-turn chat? Run the sweep
#    `sdsim sweep scenarios/sweeps/prefix-cache.yaml --out out/pc --workers 2`, then
#    `sdsim plot out/pc`: hit rate and TTFT against `server.num_gpu_blocks` at three loads.
# 2. In section 1, give the model a lower `analytic.prefix_hit_rate` (0.5, then 0.7): from what
#    hit rate on does caching alone beat SD alone at 10 req/s?
# 3. Set `acceptance.alpha: 0.5` in section 1. Where does the crossover move, and why?
# 4. In section 3, raise the rate to 60 turns/s and lower `server.affinity_imbalance` to 4. What
#    happens to the hit rate and the TTFT p99?
