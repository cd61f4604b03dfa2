"""The Pareto figure of a plan: output tokens per second per GPU against a p99 latency.

Every configuration the model priced is a point (colour: GPU type; filled: meets the SLOs in
the model, hollow: misses); the non-dominated ones (no other point has both more throughput per
GPU and a lower latency) are joined; the SLO bound is a dashed line; simulated frontiers are
drawn with their replication CI, and the chosen configuration is a star. Built without pyplot
(no global figure state), saved with the Agg canvas.
"""

from __future__ import annotations

__all__ = ["pareto_front", "pareto_metric", "plot_pareto"]

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from sdsim.planning.planner import PlanResult


def pareto_metric(bounds: dict[str, float]) -> str:
    """The latency on the x axis: ``e2e_p99`` if it has an SLO, else the first p99 SLO, else
    the first SLO."""
    if "e2e_p99" in bounds:
        return "e2e_p99"
    p99 = [k for k in bounds if k.endswith("_p99")]
    return p99[0] if p99 else next(iter(bounds))


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point dominates (lower ``x`` and higher ``y``), by ``x``."""
    order = np.lexsort((-y, x))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if y[i] > best:
            front.append(int(i))
            best = float(y[i])
    return np.asarray(front, dtype=np.int64)


def plot_pareto(result: PlanResult, path: str | Path) -> Path:
    """Draw the plan's Pareto figure to ``path`` (PNG)."""
    metric = pareto_metric(result.bounds)
    df = result.screen
    pts = df[df["evaluated"] & df[metric].notna()] if len(df) and metric in df else pd.DataFrame()
    fig = Figure(figsize=(7.5, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    scale = 1.0 if not len(pts) or float(pts[metric].max()) >= 2 else 1e3
    unit = "s" if scale == 1.0 else "ms"
    colours = (
        {g: f"C{i}" for i, g in enumerate(sorted(df["gpu"].dropna().unique()))} if len(df) else {}
    )
    if len(pts):
        x = pts[metric].to_numpy(dtype=float) * scale
        y = pts["output_tps"].to_numpy(dtype=float) / pts["gpus"].to_numpy(dtype=float)
        for g, c in colours.items():
            for meets, face in ((True, c), (False, "none")):
                sel = ((pts["gpu"] == g) & ((pts["status"] == "meets") == meets)).to_numpy()
                if sel.any():
                    ax.scatter(
                        x[sel],
                        y[sel],
                        s=22,
                        edgecolors=c,
                        facecolors=face,
                        label=f"{g} ({'meets' if meets else 'misses'}, model)",
                    )
        front = pareto_front(x, y)
        ax.plot(x[front], y[front], color="0.3", lw=1, ls="-", zorder=0, label="Pareto front")
    bound = result.bounds[metric] * scale
    ax.axvline(bound, color="crimson", ls="--", lw=1, label=f"SLO {metric} = {bound:g} {unit}")
    sim = [cand for cand in result.candidates if cand.replicas is not None]
    for cand in sim:
        tpg = cand.output_tps / cand.gpus
        mean, lo, hi = (v * scale for v in cand.sim[metric])
        ax.errorbar(
            [mean],
            [tpg],
            xerr=[[max(mean - lo, 0.0)], [max(hi - mean, 0.0)]],
            fmt="s",
            ms=5,
            color=colours.get(cand.gpu, "k"),
            mec="k",
            capsize=3,
        )
    if sim:
        ax.errorbar([], [], xerr=[], fmt="s", color="0.5", mec="k", label="simulated (95% CI)")
    b = result.best
    if b is not None:
        xb = b.sim[metric][0] if b.replicas is not None else b.model[metric]
        ax.scatter(
            [xb * scale],
            [b.output_tps / b.gpus],
            marker="*",
            s=260,
            color="gold",
            edgecolors="k",
            zorder=5,
            label="chosen",
        )
    if len(pts):
        # a few far-overloaded points would squeeze the region around the SLO into a sliver
        ax.set_xlim(0, min(float(np.nanmax(x)) * 1.05, 3 * bound))
    ax.set_xlabel(f"{metric} ({unit})")
    ax.set_ylabel("output tokens/s per GPU")
    ax.set_title(f"{result.rate:g} req/s: throughput per GPU vs {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    return out
