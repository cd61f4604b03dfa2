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
# 3. where the model holds and where it errs (prompts of random length, an admission cap, a KV
#    cache under pressure, bursty arrivals), and how `predict` says so itself;
# 4. the map of where it holds: every shipped scenario, from 10% to 95% load.
#
# Set `SDSIM_NOTEBOOK_SMALL=1` for small, fast runs (CI); the defaults are full size.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

import sdsim
from sdsim.analytic.validation import plot_error_map, reports_from_csv
from sdsim.metrics import t_confidence_interval
from sdsim.steadystate import mser_truncation, quantile_estimate, run_estimates

SMALL = os.environ.get("SDSIM_NOTEBOOK_SMALL", "") not in ("", "0")
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "scenarios").is_dir())
# Simulating is cheap (a few seconds per 100,000 requests); the small mode keeps runs long
# enough for the statements below to hold in it too, with fewer seeds.
N_REQUESTS = 6000 if SMALL else 20000
SEEDS = [0, 1] if SMALL else [0, 1, 2]
SIZE = {"workload.num_requests": N_REQUESTS, "warmup_requests": N_REQUESTS // 10}


def predict_one(scn):
    """The analytic prediction at the scenario's own rate (rates=[] skips the best-k search)."""
    return sdsim.predict(scn, rates=[])


def steady(scn, seeds=SEEDS):
    """Steady-state estimates ({metric}_{mean,p50,p90,p99} with 95% CIs) over seeded runs: each
    run's warm-up cut by MSER-5, the rest pooled (sdsim.steadystate, as `sdsim validate`)."""
    series = {m: [] for m in ("e2e", "ttft", "tpot")}
    for seed in seeds:
        r = sdsim.simulate(scn, seed=seed).requests
        cut = max(mser_truncation(r[m].to_numpy()).deleted for m in ("e2e", "ttft"))
        for m, kept in series.items():
            kept.append(r[m].to_numpy()[cut:])
    return run_estimates(series)


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
fractions = [0.2, 0.6, 0.8] if SMALL else [0.1, 0.3, 0.5, 0.7, 0.8, 0.9]
rows = []
for f in fractions:
    scn = base.with_overrides({"workload.rate": round(f * capacity, 2)})
    s, p = steady(scn), predict_one(scn).summary
    rows.append({"load": f, "rate": scn.workload.rate, "mean_sim": s["e2e_mean"].value,
                 "p99_sim": s["e2e_p99"].value, "p99_lo": s["e2e_p99"].low,
                 "p99_hi": s["e2e_p99"].high,
                 "p99/mean_sim": s["e2e_p99"].value / s["e2e_mean"].value,
                 "mean_pred": p["e2e_mean"], "p99_pred": p["e2e_p99"],
                 "mean_error": p["e2e_mean"] / s["e2e_mean"].value - 1,
                 "p99_error": p["e2e_p99"] / s["e2e_p99"].value - 1})
load = pd.DataFrame(rows)

fig, ax = plt.subplots(figsize=(8, 4.5))
ax.plot(load["rate"], load["mean_sim"], "o", color="C0", label="mean (simulation)")
ax.plot(load["rate"], load["mean_pred"], "--", color="C0", label="mean (model)")
ax.errorbar(load["rate"], load["p99_sim"],
            yerr=[load["p99_sim"] - load["p99_lo"], load["p99_hi"] - load["p99_sim"]],
            fmt="s", color="C3", capsize=3, label="p99 (simulation, 95% CI)")
ax.plot(load["rate"], load["p99_pred"], "--", color="C3", label="p99 (model)")
ax.set_xlabel("arrival rate (req/s)")
ax.set_ylabel("end-to-end latency (s)")
ax.set_title(f"default.yaml, linear costs: saturation {capacity:.1f} req/s")
ax.legend()
plt.show()
load.round(3)

# %%
# Guards on the prose below (both sizes): the p99 15-35% above the mean; the model's mean
# within 3% and its p99 within 8% at every load shown.
assert load["p99/mean_sim"].between(1.1, 1.4).all()
assert load["mean_error"].abs().max() < 0.03
assert load["p99_error"].abs().max() < 0.08

# %% [markdown]
# Every request here asks for the same 256 tokens, yet the p99 sits 15–35% above the mean (see
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
# The points above are already steady-state estimates. Why that matters: a single run starts
# from an empty server and is a few thousand requests long. Near
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
ax.plot(runs[0], ",", alpha=0.5, label="e2e of each request, one run")
ax.axvline(cuts[0], color="k", ls=":", label="MSER-5 cut")
ax.axhspan(est.low, est.high, color="C3", alpha=0.25, label="p99 95% CI (batched, all runs)")
ax.axhline(pred_p99, color="C3", ls="--", label="p99 (model)")
ax.set_xlabel("request (arrival order)")
ax.set_ylabel("end-to-end latency (s)")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# With two or three replications the t-interval over single-run p99s uses a t quantile of 4.3
# to 12.7 and can reach below zero; the batched interval pools every retained request and
# stays inside the data's range. Sweeps use the same method (`sdsim sweep`: each run's
# steady-state estimate and its batch-means standard error, pooled on the log scale).
#
# ## Where the closed form holds, and where it errs
#
# Five versions of the server, each compared with its own prediction:
#
# * **Poisson, no limits**: the reference case above, at 70% load.
# * **Long prompts of random length** (`scenarios/capacity-70b-chat.yaml`, one replica, 80%
#   load): Llama-3.1-70B with lognormal prompts (mean 1,024 tokens, CV 1, up to 8,192): a step
#   that carries a long prompt lasts half a second, twenty decode steps.
# * **Admission cap**: `max_num_seqs = 32`; requests queue for a slot before their prefill. The
#   model knows the cap (a waiting line above it in the law of the number in system).
# * **KV pressure** (`scenarios/kv-pressure.yaml`): a 3000-block KV cache; requests are preempted
#   and recompute their prefill. The model sees only step times, not memory.
# * **Bursty arrivals** (`scenarios/bursty-gamma.yaml`): gamma gaps with CV 3 at the same mean
#   rate: half the gaps are below 1% of the mean, so arrivals come in clumps.

# %%
cap = base.with_overrides({"server.max_num_seqs": 32})
cap_capacity = sdsim.predict(cap, rates=[], quantiles=False).saturation_rate
chat = sdsim.load_scenario(ROOT / "scenarios" / "capacity-70b-chat.yaml",
                           overrides={**SIZE, "server.replicas": 1})
chat_capacity = sdsim.predict(chat, rates=[], quantiles=False).saturation_rate
cases = {
    "Poisson, no limits": base.with_overrides({"workload.rate": round(0.7 * capacity, 1)}),
    "long random prompts (70B)": chat.with_overrides(
        {"workload.rate": round(0.8 * chat_capacity, 2)}),
    "admission cap (32 seqs)": cap.with_overrides({"workload.rate": round(0.85 * cap_capacity, 1)}),
    "KV pressure (3000 blocks)": sdsim.load_scenario(
        ROOT / "scenarios" / "kv-pressure.yaml", overrides={**SIZE, "workload.rate": 32.0}),
    "bursty arrivals (CV 3)": sdsim.load_scenario(
        ROOT / "scenarios" / "bursty-gamma.yaml", overrides=SIZE),
}
rows = []
for name, scn in cases.items():
    p = predict_one(scn)
    s = steady(scn)
    row = {"case": name, "rate": scn.workload.rate, "outside_model": p.outside_model or "",
           "caveats": "; ".join(p.caveats)}
    for key in ("e2e_p99", "ttft_p99"):
        e = s[key]
        row |= {f"{key}_sim": e.value, f"{key}_lo": e.low, f"{key}_hi": e.high,
                f"{key}_pred": p.summary[key], f"{key}_err": p.summary[key] / e.value - 1}
    rows.append(row)
holds = pd.DataFrame(rows).set_index("case")
holds[["rate", "e2e_p99_sim", "e2e_p99_pred", "e2e_p99_err",
       "ttft_p99_sim", "ttft_p99_pred", "ttft_p99_err"]].round(3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
x = np.arange(len(holds))
for ax, key, what in zip(axes, ("e2e_p99", "ttft_p99"), ("end-to-end", "time to first token"),
                         strict=True):
    sim = holds[f"{key}_sim"].to_numpy()
    err = [sim - holds[f"{key}_lo"].to_numpy(), holds[f"{key}_hi"].to_numpy() - sim]
    ax.bar(x - 0.2, sim, 0.4, color="C0", label="simulation (steady state)")
    ax.errorbar(x - 0.2, sim, yerr=err, fmt="none", ecolor="black", capsize=3,
                label="its 95% CI")
    ax.bar(x + 0.2, holds[f"{key}_pred"], 0.4, color="white", edgecolor="C3", hatch="//",
           label="model")
    for i, e in enumerate(holds[f"{key}_err"]):
        ax.annotate(f"{e:+.0%}", (x[i] + 0.2, holds[f"{key}_pred"].iloc[i]),
                    ha="center", va="bottom", fontsize=8, color="C3")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(f"p99 {what} (s, log scale)")
    marks = [" *" if o else (" †" if c else "")
             for o, c in zip(holds["outside_model"], holds["caveats"], strict=True)]
    ax.set_xticks(x, [c + m for c, m in zip(holds.index, marks, strict=True)],
                  rotation=15, ha="right", fontsize=8)
    ax.set_title(f"p99 {what}: model vs simulation")
    ax.set_xlabel("case")
    ax.legend(fontsize=7, loc="best")
fig.suptitle("Where the closed form holds and where it errs (* predict: outside the model, "
             "† predict: a known error; labels: model error)", fontsize=10)
fig.tight_layout()
plt.show()

# %%
for name, row in holds.iterrows():
    print(f"{name}: " + (f"outside the model: {row['outside_model']}" if row["outside_model"]
                         else f"caveat: {row['caveats']}" if row["caveats"]
                         else "inside the model"))

# %% [markdown]
# * With Poisson arrivals and no memory limit the model's p99s are within 10% of the
#   simulation's steady-state estimates (the labels on the bars), in the small runs as in the
#   full ones.
# * Long prompts of random length: the model prices every chunk of the step an arrival lands in
#   and of its own prefill step from the prompt-length law, so it sees that a step carrying
#   another request's 8k-token prompt is long and more likely to be the one arrived in (it
#   priced them at the mean length before, and was 43% low on this TTFT p99). It is still low
#   on the TTFT p99 (13% in long runs, 3 seeds x 100,000 requests; the short runs here put it
#   between 0 and 15%) and more on the TPOT p99 (20%, not shown): such steps are a
#   heavy-tailed delay its binned and normal laws follow only in part. `predict` says so
#   (a caveat, †), and so does `sdsim validate`.
# * Admission cap: once a few percent of arrivals wait for a slot, the TTFT p99 is an admission
#   wait, and the model's waiting law is rough there: its TTFT p99 is tens of percent off (in
#   long runs 54% too high at 85% load, 35% too low at 70%; more in the short runs here), its
#   e2e p99 up to 20% high. `predict` says so too.
# * Under KV pressure the model misses the preemptions: a preempted request goes back to the
#   queue and redoes its prefill, so the TTFT p99 is several times the prediction. `predict`
#   says it is outside the model: the requests need more blocks than the cache has more than
#   0.5% of the time.
# * Bursty arrivals: the model takes the clumps as Poisson clumps of geometric size (their
#   batch-mates ahead, behind, and in the same prefill step) and its law of the number in system
#   gets the clumps' noise. That closes part of the gap (the e2e p99 was 70% low before), not
#   all of it: `predict` marks it outside the model and names the assumption.

# %%
# Guards on the claims above, in both sizes.
assert holds.loc["Poisson, no limits", ["e2e_p99_err", "ttft_p99_err"]].abs().max() < 0.1
assert not holds.loc["Poisson, no limits", "outside_model"]
assert not holds.loc["Poisson, no limits", "caveats"]
assert -0.3 < holds.loc["long random prompts (70B)", "ttft_p99_err"] < 0.0
assert "prompts of random length" in holds.loc["long random prompts (70B)", "caveats"]
assert abs(holds.loc["admission cap (32 seqs)", "ttft_p99_err"]) > 0.15
assert "wait for a slot" in holds.loc["admission cap (32 seqs)", "caveats"]
assert holds.loc["KV pressure (3000 blocks)", "ttft_p99_err"] < -0.5
assert "KV pressure" in holds.loc["KV pressure (3000 blocks)", "outside_model"]
assert "clump" in holds.loc["bursty arrivals (CV 3)", "outside_model"]

# %% [markdown]
# ## The map: where the model holds
#
# `sdsim validate --all scenarios/` runs every shipped rate-driven scenario at 10% to 95% of its
# predicted saturation, each to steady state (up to 120,000 requests per rate here), and draws
# one figure of the model's error against load. The figures below are the committed results of
# that run (`notebooks/data/validation-all.csv`; re-run it with the command above, 25-40
# minutes on two cores). Bars are the range of errors the simulation's 95% CI allows; the
# shaded band is the tolerance; hollow points are where `predict` says it is outside the model.

# %%
reports = reports_from_csv(ROOT / "notebooks" / "data" / "validation-all.csv")
plot_error_map(reports)

# %%
table = pd.concat([r.table.assign(scenario=r.scenario) for r in reports])
p99 = table[(table["metric"] == "e2e") & (table["statistic"] == "p99")]
p99.pivot_table(index="scenario", columns=p99["fraction"].round(2), values="rel_error").round(3)

# %% [markdown]
# * On the Poisson scenarios inside the model (default, plain, qwen3-8b-eagle-a100, and
#   llama70b, moe and kv-pressure below their KV limits) the means are within 2% up to 80% of
#   saturation and the e2e p99 within about 5%; at 90-95% the CIs are ±5-10% even at 120,000
#   requests: that is how noisy a tail near saturation is.
# * capacity-70b-chat (long lognormal prompts up to the token budget, three round-robin
#   replicas) keeps its e2e p99 within 2%, its mean within 3% and its TPOT p99 within 2.2% up
#   to 80%, but its TTFT is high: the p99 by 6-19% (the most at 25-55% load), the mean by up
#   to 18%: `predict` carries a caveat for prompts of random length. ngram-summarization's e2e
#   and TTFT p99 are within 7% up to 80%, its TPOT p99 up to 10% low.
# * The KV-limited scenarios (kv-pressure, and llama70b and moe near their KV limits) leave the
#   model where preemption starts; `predict` says so from the KV demand alone.
# * mmpp-bursts holds while its bursts (2.5 times the mean rate) stay below saturation, i.e. up
#   to ~25% mean load; beyond, a queue builds in each burst and the model errs by 10-70%.
# * bursty-gamma is outside the model at every load (e2e p99 14-20% low up to 40% load, TTFT
#   p99 20-40% low).
#
# ## Exercises
#
# 1. Set `--half-width` to 0.01 for one rate of `sdsim validate scenarios/default.yaml`. How many
#    requests does the p99 need at 90% load, and why so many more than at 50%?
# 2. Lower `workload.cv` in the bursty scenario to 1.5. Does `predict` still say it is outside
#    the model? How large is the error?
# 3. Give the KV-pressure scenario `server.num_gpu_blocks: 6000`. Does the model hold again?
