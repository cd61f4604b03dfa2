"""Write scenarios/traces/synthetic-chat.csv: a small synthetic production-like trace.

The project ships its own trace so trace replay works without outside data. It imitates what real
chat traces (e.g. Splitwise's conversation trace) look like: arrivals from a non-homogeneous Poisson
process whose rate swings between 4 and 16 req/s with a 60 s period (load peaks), heavy-tailed
prompt lengths (lognormal, mean 700, CV 1.0) and answers (lognormal, mean 200, CV 0.8).

Run ``python scenarios/traces/make_synthetic_trace.py`` to regenerate; the output is a pure
function of SEED.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sdsim.rng import stream

SEED = 20240601
N = 800
RATE_LOW, RATE_HIGH, PERIOD_S = 4.0, 16.0, 60.0


def _lognormal(
    rng: np.random.Generator, mean: float, cv: float, n: int, lo: int, hi: int
) -> np.ndarray:
    s2 = np.log1p(cv**2)
    x = rng.lognormal(np.log(mean) - s2 / 2, np.sqrt(s2), size=n)
    return np.clip(np.rint(x), lo, hi).astype(np.int64)


def make_trace(seed: int = SEED, n: int = N) -> pd.DataFrame:
    """The trace as a DataFrame (arrival s, prompt_tokens, output_tokens)."""
    rng = stream(seed, "trace")
    # Lewis-Shedler thinning of a rate-RATE_HIGH Poisson process.
    times: list[float] = []
    t = 0.0
    while len(times) < n:
        t += rng.exponential(1.0 / RATE_HIGH)
        rate = RATE_LOW + (RATE_HIGH - RATE_LOW) * 0.5 * (1 - np.cos(2 * np.pi * t / PERIOD_S))
        if rng.random() < rate / RATE_HIGH:
            times.append(t)
    arrival = np.round(np.asarray(times) - times[0], 3)
    return pd.DataFrame(
        {
            "arrival": arrival,
            "prompt_tokens": _lognormal(rng, 700, 1.0, n, 16, 4096),
            "output_tokens": _lognormal(rng, 200, 0.8, n, 8, 1024),
        }
    )


if __name__ == "__main__":
    out = Path(__file__).with_name("synthetic-chat.csv")
    make_trace().to_csv(out, index=False)
    print(f"wrote {out}")
