"""Write simulation results as a GuideLLM-format report (schema ``metadata.version: 2``).

Useful to check calibration end to end (simulate a known scenario at several rates, fit the report,
compare the fitted coefficients with the known ones) and to feed simulated runs to tools that read
GuideLLM reports. Only the fields :mod:`sdsim.report_formats` reads are written, with GuideLLM's
units and definitions (``time_per_output_token_ms`` includes the TTFT, ``inter_token_latency_ms``
does not).
"""

from __future__ import annotations

__all__ = ["simulated_report"]

from collections.abc import Sequence
from typing import Any

import numpy as np

from sdsim.simulation import SimResult

# Timestamps are written as epoch seconds like GuideLLM's; any origin works since the reader
# subtracts each benchmark's first time.
_EPOCH = 1_700_000_000.0


def _agg(x: np.ndarray) -> dict[str, Any]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"mean": None, "median": None, "count": 0, "percentiles": {}}
    p = np.percentile(x, [50, 90, 99])
    return {
        "mean": float(x.mean()),
        "median": float(p[0]),
        "count": int(x.size),
        "percentiles": {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])},
    }


def simulated_report(results: Sequence[SimResult], strategy: str = "poisson") -> dict[str, Any]:
    """A GuideLLM-format report with one benchmark per simulation result.

    Parameters
    ----------
    results
        Simulation results (e.g. one per arrival rate). Only finished requests are written.
    strategy
        Strategy type recorded for every benchmark (``config.strategy.type_``).

    Returns
    -------
    dict
        JSON-serialisable report data.
    """
    benches = []
    origin = _EPOCH
    for i, res in enumerate(results):
        df = res.requests
        df = df[np.isfinite(df["finish"])]
        arr = df["arrival"].to_numpy() + origin
        first = df["first_token"].to_numpy() + origin
        fin = df["finish"].to_numpy() + origin
        out = df["output_tokens"].to_numpy()
        prompt = df["prompt_tokens"].to_numpy()
        reqs = []
        for j in range(len(df)):
            ttft_ms = (first[j] - arr[j]) * 1e3
            e2e = fin[j] - arr[j]
            itl_ms = (fin[j] - first[j]) * 1e3 / (out[j] - 1) if out[j] > 1 else None
            reqs.append(
                {
                    "info": {
                        "timings": {
                            "targeted_start": float(arr[j]),
                            "request_start": float(arr[j]),
                            "first_token_iteration": float(first[j]),
                            "last_token_iteration": float(fin[j]),
                            "request_end": float(fin[j]),
                        }
                    },
                    "prompt_tokens": int(prompt[j]),
                    "output_tokens": int(out[j]),
                    "request_latency": float(e2e),
                    "time_to_first_token_ms": float(ttft_ms),
                    "inter_token_latency_ms": itl_ms,
                    "time_per_output_token_ms": float(e2e * 1e3 / out[j]),
                }
            )
        span = float(fin.max() - arr.min()) if len(df) else 0.0
        lam = res.scenario.workload.rate
        conc = float(df["e2e"].sum() / span) if span > 0 else None
        ttft = df["ttft"].to_numpy(dtype=np.float64) * 1e3
        itl = df["tpot"].to_numpy(dtype=np.float64) * 1e3
        e2e_all = df["e2e"].to_numpy(dtype=np.float64)
        benches.append(
            {
                "config": {
                    "id_": f"sim-{i}",
                    "run_index": i,
                    "strategy": {"type_": strategy, "rate": lam},
                },
                "duration": span,
                "requests": {"successful": reqs, "errored": [], "incomplete": []},
                "metrics": {
                    "requests_per_second": {"successful": {"mean": float(len(df) / span)}},
                    "request_concurrency": {"successful": {"mean": conc}},
                    "prompt_token_count": {"successful": {"mean": float(prompt.mean())}},
                    "output_token_count": {"successful": {"mean": float(out.mean())}},
                    "time_to_first_token_ms": {"successful": _agg(ttft)},
                    "inter_token_latency_ms": {"successful": _agg(itl)},
                    "request_latency": {"successful": _agg(e2e_all)},
                },
            }
        )
        origin = float(fin.max()) + 10.0 if len(df) else origin
    return {"metadata": {"version": 2, "generator": "sdsim"}, "benchmarks": benches}
