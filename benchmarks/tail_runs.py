"""Long steady-state runs against the tail model: the figures of notes/analytic.md.

For each load (a fraction of the saturation rate the model predicts for the scenario as
overridden), each seed simulates ``--requests`` requests; every run's warm-up is cut by MSER-5
(the later cut of its e2e and TTFT series), the runs are pooled and the statistics read with
the batched intervals of :mod:`sdsim.steadystate`. Besides the latencies it compares the law of
the number of requests an arrival finds in the system (from the records: arrivals before it
not yet finished) with the model's birth-death law (time average; an arrival's view for
Poisson arrivals), so a batch law narrower or wider than the simulation's shows directly.

Not part of ``make test`` (minutes per point). Run, e.g.::

    nice -n 10 .venv/bin/python benchmarks/tail_runs.py scenarios/default.yaml \\
        --set workload.prompt_tokens='{dist: lognormal, mean: 512, cv: 1.0, max: 8192}' \\
        --loads 0.5,0.8,0.9 --seeds 11,12,13 --requests 40000 --csv out/tails-lnprompt.csv

``--rescore CSV`` recomputes only the model's columns of such a file (after a model change:
the same seeds give the same simulations).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from sdsim.analytic.operating import operating_point
from sdsim.analytic.prediction import predict
from sdsim.scenario import Scenario, load_scenario
from sdsim.simulation import simulate

STATS = ("e2e_mean", "e2e_p99", "ttft_mean", "ttft_p99", "tpot_p99")


def _found(arrival: np.ndarray, finish: np.ndarray) -> np.ndarray:
    """How many requests each arrival finds in the system (arrived before it, not finished)."""
    order = np.argsort(arrival, kind="stable")
    a, f = arrival[order], finish[order]
    done = np.searchsorted(np.sort(f), a, side="left")
    n = np.arange(a.shape[0]) - done
    out = np.empty_like(n)
    out[order] = n
    return out


def _law_stats(pmf: np.ndarray) -> tuple[float, float, float]:
    n = np.arange(pmf.shape[0])
    m = float(n @ pmf)
    sd = math.sqrt(float(((n - m) ** 2) @ pmf))
    p99 = float(np.searchsorted(np.cumsum(pmf), 0.99))
    return m, sd, p99


def one_point(scn: Scenario, seeds: list[int], n: int) -> dict[str, Any]:
    """Simulate ``scn`` once per seed (``n`` requests), cut, pool; model beside it."""
    from sdsim.steadystate import METRICS, mser_truncation, run_estimates

    t0 = time.process_time()
    series: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    found: list[np.ndarray] = []
    cuts: list[int] = []
    stable = True
    one = scn.with_overrides({"workload.num_requests": n, "warmup_requests": n // 10})
    for s in seeds:
        res = simulate(one, seed=s)
        r = res.requests.sort_values("arrival", kind="stable")
        stable &= res.summary.get("stable") is not False
        cut = max(
            mser_truncation(r["e2e"].to_numpy(np.float64)).deleted,
            mser_truncation(r["ttft"].to_numpy(np.float64)).deleted,
        )
        cuts.append(cut)
        for m in METRICS:
            series[m].append(r[m].to_numpy(np.float64)[cut:])
        arr = r["arrival"].to_numpy(np.float64)
        found.append(_found(arr, arr + r["e2e"].to_numpy(np.float64))[cut:])
    est = run_estimates(series)
    nf = np.concatenate(found)
    row: dict[str, Any] = {
        "rate": scn.workload.rate,
        "requests_kept": int(sum(x.shape[0] for x in series["e2e"])),
        "cuts": " ".join(map(str, cuts)),
        "sim_stable": stable,
        "cpu_s": round(time.process_time() - t0, 1),
        "n_found_mean_sim": float(nf.mean()),
        "n_found_sd_sim": float(nf.std()),
        "n_found_p99_sim": float(np.quantile(nf, 0.99)),
    }
    for key in STATS:
        e = est[key]
        row[f"{key}_sim"], row[f"{key}_sim_lo"], row[f"{key}_sim_hi"] = e.value, e.low, e.high
    return score(scn, row)


def score(scn: Scenario, row: dict[str, Any]) -> dict[str, Any]:
    """The model's values beside a row's simulated ones: ``{stat}_model``, ``{stat}_err`` and
    the range of errors the simulation's 95% CI allows (``_err_lo``, ``_err_hi``), and the
    law of the number in system (one replica)."""
    pred = predict(scn, rates=[], k_values=[scn.spec.k])
    row["outside_model"] = pred.outside_model or ""
    for key in STATS:
        a = float(pred.summary[key])
        row[f"{key}_model"] = a
        row[f"{key}_err"] = a / row[f"{key}_sim"] - 1.0
        row[f"{key}_err_lo"] = a / row[f"{key}_sim_hi"] - 1.0
        row[f"{key}_err_hi"] = a / row[f"{key}_sim_lo"] - 1.0
    if scn.server.replicas == 1:
        k = int(pred.summary.get("k_effective", scn.spec.k))
        law = operating_point(scn, k, scn.workload.rate).law
        m, sd, p99 = _law_stats(law.pmf)
        row.update(n_law_mean_model=m, n_law_sd_model=sd, n_law_p99_model=p99)
    return row


def _show(row: dict[str, Any]) -> None:
    shown = {k: row[k] for k in ("load", "rate", "requests_kept")}
    errs = " ".join(
        f"{k} {row[f'{k}_err']:+.1%} [{row[f'{k}_err_lo']:+.0%},{row[f'{k}_err_hi']:+.0%}]"
        for k in STATS
    )
    law = (
        f" | N found sim {row['n_found_mean_sim']:.1f} sd {row['n_found_sd_sim']:.1f} p99 "
        f"{row['n_found_p99_sim']:.0f}; model {row['n_law_mean_model']:.1f} sd "
        f"{row['n_law_sd_model']:.1f} p99 {row['n_law_p99_model']:.0f}"
        if not pd.isna(row.get("n_law_mean_model", math.nan))
        else ""
    )
    print(f"{shown} {errs}{law} {row['outside_model']}", flush=True)


def rescore(path: Path) -> None:
    """Recompute the model's columns of a results CSV (the simulations are not rerun: the same
    seeds give the same runs), e.g. after a change to the model; rewrites the file."""
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    rows = []
    for rec in df.to_dict("records"):
        raw = rec.get("set")
        sets = [] if raw is None or pd.isna(raw) else [x for x in str(raw).split("; ") if x]
        over = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in sets)}
        scn = load_scenario(rec["scenario_file"], {**over, "workload.rate": rec["rate"]})
        row = score(scn, dict(rec))
        _show(row)
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario", type=Path, nargs="?")
    ap.add_argument("--set", action="append", default=[], help="KEY=YAML override")
    ap.add_argument("--loads", default="0.5,0.8,0.9", help="fractions of predicted saturation")
    ap.add_argument("--rates", default="", help="absolute rates (req/s) instead of --loads")
    ap.add_argument("--seeds", default="11,12,13")
    ap.add_argument("--requests", type=int, default=40_000, help="per seed")
    ap.add_argument("--csv", type=Path, default=None)
    ap.add_argument("--rescore", type=Path, default=None, help="results CSV: model columns only")
    a = ap.parse_args(argv)
    if a.rescore is not None:
        rescore(a.rescore)
        return
    over = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
    base = load_scenario(a.scenario, over)
    sat = predict(base, rates=[], k_values=[base.spec.k], quantiles=False).saturation_rate
    if a.rates:
        rates = [float(x) for x in a.rates.split(",")]
    else:
        rates = [round(float(f) * sat, 4) for f in a.loads.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    for r in rates:
        row = one_point(base.with_overrides({"workload.rate": r}), seeds, a.requests)
        row = {"scenario": base.name, "scenario_file": str(a.scenario), "set": "; ".join(a.set),
               "seeds": a.seeds, "requests_per_seed": a.requests, "load": r / sat, **row}
        rows.append(row)
        _show(row)
        if a.csv is not None:
            a.csv.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(a.csv, index=False)


if __name__ == "__main__":
    main()
