"""Recompute the model's side of a ``validation-all.csv`` (from ``sdsim validate --all``) with
the current model, keeping its simulations (the same seeds give the same runs): the analytic
values, errors, error ranges and verdicts of every latency row. Used after a model change to
refresh ``notebooks/data/validation-all.csv`` without re-running the simulations.

Run: ``.venv/bin/python benchmarks/rescore_map.py out/map/validation-all.csv [OUT.csv]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from sdsim.analytic.prediction import predict
from sdsim.analytic.validation import TOLERANCES, _verdict
from sdsim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def rescore(df: pd.DataFrame) -> pd.DataFrame:
    """The table with its latency rows' model columns recomputed."""
    out = df.copy()
    for (name, rate), g in df.groupby(["scenario", "rate"]):
        scn = load_scenario(ROOT / "scenarios" / f"{name}.yaml", {"workload.rate": float(rate)})
        pred = predict(scn, rates=[], k_values=[scn.spec.k])
        for i, row in g.iterrows():
            key = (row["metric"], row["statistic"])
            if key not in TOLERANCES:
                continue  # goodput / attainment rows: reported, not judged
            ana = float(pred.summary[f"{row['metric']}_{row['statistic']}"])
            verdict, lo, hi = _verdict(ana, row["ci_low"], row["ci_high"], TOLERANCES[key])
            out.loc[i, ["analytic", "rel_error", "err_low", "err_high", "verdict"]] = [
                ana, ana / row["sim"] - 1.0, lo, hi, verdict
            ]
            out.loc[i, "holds"] = verdict in ("holds", "n/a")
            out.loc[i, "outside_model"] = bool(pred.outside_model)
    return out


if __name__ == "__main__":
    src = Path(sys.argv[1])
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else src
    rescore(pd.read_csv(src)).to_csv(dst, index=False)
