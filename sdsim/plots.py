"""Figures from DataFrames: a metric against a swept field, heatmaps, speedup curves, step times.

Everything here takes tables (a sweep's summary or speedup table, a step-time table) and returns
matplotlib ``Figure`` objects built without pyplot, so no global backend or figure state is touched;
saving uses the Agg canvas. :func:`plot_sweep` draws the standard figures of a sweep output
directory.

Axes are labelled with their unit from :mod:`sdsim.labels` (``workload.rate`` -> "arrival rate
(req/s)", latencies in s, ms or µs chosen for the values drawn); integer fields get integer ticks;
every line drawn has a legend entry; ``--target METRIC=VALUE`` lines (:func:`parse_targets`) mark a
service-level target.
"""

from __future__ import annotations

__all__ = [
    "choose_x",
    "draw_target",
    "explain_figure",
    "fig_title",
    "heatmap_figure",
    "line_figure",
    "parse_targets",
    "plot_sweep",
    "step_time_figure",
]

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from sdsim.errors import ScenarioError
from sdsim.labels import (
    FIELDS,
    METRICS,
    field_label,
    integer_field,
    metric_label,
    short_field,
    time_unit,
)
from sdsim.provenance import png_metadata, provenance, sidecar
from sdsim.sweep_store import load_sweep_dir
from sdsim.sweep_summary import speedup_table, summarize_runs

_TIME_SUFFIXES = (("ms", 1e-3), ("us", 1e-6), ("µs", 1e-6), ("s", 1.0))


def parse_targets(items: Sequence[str] | None, option: str = "--target") -> dict[str, float]:
    """Targets from ``--target e2e_p99=10 --target ttft_p99=500ms``.

    A latency target is in seconds unless it carries a unit (``s``, ``ms``, ``us``/``µs``);
    other metrics take their own unit (``throughput_rps=20``).

    Returns
    -------
    dict
        Summary key -> target value in the key's stored unit (seconds for latencies).

    Raises
    ------
    ScenarioError
        An item that is not ``METRIC=NUMBER[unit]`` or names an unknown metric.
    """
    got: dict[str, float] = {}
    for item in items or []:
        if "=" not in item:
            raise ScenarioError(option, f"expected METRIC=VALUE, got {item!r}")
        key, raw = (x.strip() for x in item.split("=", 1))
        lab = METRICS.get(key)
        if lab is None:
            known = ", ".join(sorted(k for k in METRICS if k.endswith(("_mean", "_p99"))))
            raise ScenarioError(option, f"unknown metric {key!r} (allowed: {known}, ...)")
        factor = 1.0
        if lab.unit == "s":
            for suffix, f in _TIME_SUFFIXES:
                if raw.endswith(suffix):
                    raw, factor = raw[: -len(suffix)].strip(), f
                    break
        try:
            value = float(raw) * factor
        except ValueError:
            raise ScenarioError(option, f"{key}: not a number: {raw!r}") from None
        if not math.isfinite(value):
            raise ScenarioError(option, f"{key}: must be finite (got {raw})")
        got[key] = value
    return got


def draw_target(ax: Axes, metric: str, value: float, scale: float = 1.0) -> None:
    """A horizontal target line with its legend entry (``value`` in the metric's stored unit,
    ``scale`` the axis factor, e.g. 1e3 for an axis in ms)."""
    lab = METRICS.get(metric)
    shown = value * scale
    unit = ""
    if lab is not None and lab.unit == "s":
        unit = {1.0: " s", 1e3: " ms", 1e6: " µs"}.get(scale, "")
    elif lab is not None and lab.unit:
        unit = f" {lab.unit}"
    ax.axhline(shown, color="crimson", linestyle="-.", linewidth=1.2,
               label=f"target {metric} = {shown:.4g}{unit}")


def _is_numeric(values: pd.Series) -> bool:
    return bool(pd.to_numeric(values, errors="coerce").notna().all())


def _varying(df: pd.DataFrame, fields: list[str]) -> list[str]:
    return [f for f in fields if f in df.columns and df[f].astype(str).nunique() > 1]


def choose_x(df: pd.DataFrame, fields: list[str], exclude: tuple[str, ...] = ()) -> str:
    """The default x axis: the first varying numeric swept field (else the first varying one)."""
    cand = [f for f in _varying(df, fields) if f not in exclude]
    if not cand:
        cand = [f for f in fields if f not in exclude] or list(fields)
    if not cand:
        raise ScenarioError("--x", "the sweep has no swept field to plot against")
    numeric = [f for f in cand if _is_numeric(df[f])]
    return numeric[0] if numeric else cand[0]


def _label(field: str, value: Any) -> str:
    lab = FIELDS.get(field)
    unit = f" {lab.unit}" if lab is not None and lab.unit else ""
    return f"{short_field(field)} = {value}{unit}"


def _scale(metric: str, values: pd.Series | None = None) -> tuple[float, str]:
    """Factor and axis label with the unit: latencies in the unit (s, ms, µs) that suits the
    values drawn."""
    lab = METRICS.get(metric)
    if lab is not None and lab.unit == "s":
        v = pd.to_numeric(values, errors="coerce") if values is not None else pd.Series([1e-3])
        unit, factor = time_unit(v.to_numpy(dtype=np.float64))
        return factor, metric_label(metric, unit)
    return 1.0, metric_label(metric)


def _x_positions(values: pd.Series) -> tuple[np.ndarray, list[str] | None]:
    if _is_numeric(values):
        return pd.to_numeric(values).to_numpy(dtype=np.float64), None
    cats = list(dict.fromkeys(values.astype(str)))
    return np.array([cats.index(v) for v in values.astype(str)], dtype=np.float64), cats


def line_figure(
    df: pd.DataFrame,
    x: str,
    y: str,
    *,
    hue: list[str] | None = None,
    facet: str | None = None,
    low: str | None = None,
    high: str | None = None,
    analytic: str | None = None,
    reference: float | None = None,
    reference_label: str = "reference",
    target: float | None = None,
    target_metric: str = "",
    title: str = "",
    ylabel: str | None = None,
    scale: float = 1.0,
) -> Figure:
    """A metric against one field, one line per combination of ``hue`` fields, CI bands.

    Parameters
    ----------
    df
        One row per point (a sweep summary or speedup table).
    x, y
        Columns for the axes.
    hue
        Fields whose value combinations get one line each.
    facet
        Field with one panel per value.
    low, high
        Columns bounding the confidence band (drawn shaded).
    analytic
        Column with a model prediction, drawn dashed in the line's colour.
    reference, reference_label
        A horizontal reference line (e.g. speedup 1) and its legend entry.
    target, target_metric
        A target line (in the metric's stored unit) for summary key ``target_metric``.
    title, ylabel
        Labels (the x axis is labelled from :mod:`sdsim.labels`).
    scale
        Factor applied to y values (1e3 for seconds shown as ms).
    """
    hue = [h for h in (hue or []) if h != x and h != facet]
    panels = list(dict.fromkeys(df[facet].astype(str))) if facet else [""]
    fig = Figure(figsize=(5.2 * len(panels), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, panel in zip(axes, panels, strict=True):
        sub = df if not facet else df[df[facet].astype(str) == panel]
        groups: list[tuple[Any, pd.DataFrame]] = (
            list(sub.groupby(hue, sort=False, dropna=False)) if hue else [((), sub)]
        )
        cats: list[str] | None = None
        marked = False
        banded = False
        dashed = False
        for i, (key, grp) in enumerate(groups):
            grp = grp.copy()
            xs_all, cats = _x_positions(grp[x])
            order = np.argsort(xs_all, kind="stable")
            xs = xs_all[order]
            ys = pd.to_numeric(grp[y]).to_numpy(dtype=np.float64)[order] * scale
            keys = key if isinstance(key, tuple) else (key,)
            label = ", ".join(_label(h, v) for h, v in zip(hue, keys, strict=True)) or y
            color = f"C{i % 10}"
            ax.plot(xs, ys, marker="o", color=color, label=label)
            if low and high and low in grp and high in grp:
                lo = pd.to_numeric(grp[low]).to_numpy(dtype=np.float64)[order] * scale
                hi = pd.to_numeric(grp[high]).to_numpy(dtype=np.float64)[order] * scale
                ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0,
                                label=None if banded else "95% CI")
                banded = True
            if analytic and analytic in grp:
                ya = pd.to_numeric(grp[analytic]).to_numpy(dtype=np.float64)[order] * scale
                if np.isfinite(ya).any():
                    # one group: its own entry; several: one entry for all (same colours)
                    alabel = f"{label} (analytic)" if len(groups) == 1 else None
                    ax.plot(xs, ya, linestyle="--", color=color, alpha=0.8, label=alabel)
                    dashed = True
            if "stable" in grp and y != "stable":
                st = pd.to_numeric(grp["stable"]).to_numpy(dtype=np.float64)[order]
                bad = np.isfinite(st) & (st < 1)
                if bad.any():
                    ax.scatter(
                        xs[bad],
                        ys[bad],
                        marker="x",
                        s=70,
                        color="k",
                        zorder=3,
                        label=None if marked else "unstable (some replications)",
                    )
                    marked = True
        if cats is not None:
            ax.set_xticks(range(len(cats)), cats)
        elif integer_field(x):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if reference is not None:
            ax.axhline(reference, color="0.5", linewidth=1, linestyle=":", label=reference_label)
        if target is not None:
            draw_target(ax, target_metric, target, scale)
        ax.set_xlabel(field_label(x))
        if facet:
            ax.set_title(_label(facet, panel))
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if dashed and len(groups) > 1:
            handles.append(Line2D([], [], color="0.3", linestyle="--"))
            labels.append("analytic model (dashed, line's colour)")
        ax.legend(handles, labels, fontsize="small")
    axes[0].set_ylabel(ylabel or metric_label(y))
    if title:
        fig.suptitle(title)
    return fig


def heatmap_figure(
    df: pd.DataFrame,
    x: str,
    y: str,
    value: str,
    *,
    title: str = "",
    scale: float = 1.0,
    value_label: str = "",
) -> Figure:
    """A heatmap of ``value`` over two swept fields (mean over replications), cells annotated;
    points where a replication was unstable (``stable`` below 1) are marked x."""
    table = df.pivot_table(index=y, columns=x, values=value, aggfunc="mean", sort=True) * scale
    fig = Figure(
        figsize=(1.0 + 0.9 * table.shape[1] + 2, 1.0 + 0.6 * table.shape[0] + 1),
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    data = table.to_numpy(dtype=np.float64)
    im = ax.imshow(data, aspect="auto", origin="lower", cmap="viridis")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index])
    ax.set_xlabel(field_label(x))
    ax.set_ylabel(field_label(y))
    finite = data[np.isfinite(data)]
    mid = float(np.median(finite)) if finite.size else 0.0
    for (r, c), v in np.ndenumerate(data):
        if math.isfinite(v):
            ax.text(
                c,
                r,
                f"{v:.3g}",
                ha="center",
                va="center",
                fontsize="small",
                color="w" if v < mid else "k",
            )
    if "stable" in df.columns and value != "stable":
        st = df.pivot_table(index=y, columns=x, values="stable", aggfunc="min", sort=True)
        st = st.reindex(index=table.index, columns=table.columns)
        bad = np.argwhere(st.to_numpy(dtype=np.float64) < 1)
        if bad.size:
            ax.scatter(bad[:, 1], bad[:, 0], marker="x", s=160, color="crimson", linewidths=2,
                       label="unstable (some replications)")
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(0, -0.12))
    fig.colorbar(im, ax=ax, label=value_label or metric_label(value))
    ax.set_title(title or value)
    return fig


def fig_title(fig: Figure) -> str:
    """A figure's title (suptitle, else its first axes' title), for the PNG metadata."""
    sup = fig.get_suptitle() if hasattr(fig, "get_suptitle") else ""
    return sup or (fig.axes[0].get_title() if fig.axes else "")


def explain_figure(df: pd.DataFrame, *, title: str = "", per_token: bool = False) -> Figure:
    """Stacked bars of a step's time by term (the table of :func:`sdsim.costs.explain.
    explain_steps`), one bar per (batch, k); ``per_token`` divides by the decoding requests (the
    time each request's step costs)."""
    from matplotlib import colormaps

    d = df.copy()
    if per_token:
        d["ms"] = d["ms"] / d["batch"]
    keys = list(dict.fromkeys(zip(d["k"], d["batch"], strict=True)))
    labels = list(dict.fromkeys(d["label"]))
    fig = Figure(figsize=(max(6.0, 0.7 * len(keys) + 4.5), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    cmap = colormaps["tab20"]
    bottom = np.zeros(len(keys))
    for i, lab in enumerate(labels):
        sub = d[d["label"] == lab].set_index(["k", "batch"])["ms"]
        vals = np.array([float(sub.get(key, 0.0)) for key in keys])
        if not np.any(vals > 0):
            continue
        ax.bar(range(len(keys)), vals, bottom=bottom, color=cmap(i % 20), label=lab)
        bottom += vals
    ax.set_xticks(range(len(keys)), [f"B={b}\nk={k}" for k, b in keys])
    ax.set_ylabel("ms per decoding request" if per_token else "step time (ms)")
    ax.set_title(title or "where a step's time goes")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def _parse_baseline(text: str) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for part in text.split(","):
        if "=" not in part:
            raise ScenarioError("--speedup-vs", f"expected FIELD=VALUE, got {text!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def plot_sweep(
    out_dir: str | Path,
    *,
    metrics: list[str] | None = None,
    x: str | None = None,
    facet: str | None = None,
    speedup_vs: str | None = None,
    plot_dir: str | Path | None = None,
    targets: Mapping[str, float] | None = None,
) -> list[Path]:
    """Draw the standard figures of a sweep output directory as PNG files.

    For each metric: the metric against ``x`` (one line per combination of the other swept
    fields, the last of them as panels when there are two or more; shaded t-based 95% CI bands,
    analytic predictions dashed when the sweep has them, unstable points marked x), and a heatmap
    when exactly two fields vary. With ``speedup_vs="spec.k=0"``: the speedup
    ``metric(k=0) / metric(k)`` per point, paired by replication, with CI bands
    (``speedup_<metric>.png`` and ``speedup.csv``).

    Parameters
    ----------
    out_dir
        A directory written by ``sdsim sweep``.
    metrics
        Metrics to draw (default: the sweep's ``metrics``); with ``speedup_vs`` the first one is
        the speedup's metric (default ``e2e_mean``).
    x
        Swept field on the x axis (default: the first varying numeric one).
    facet
        Swept field with one panel per value (default: chosen as above).
    speedup_vs
        Baseline as ``FIELD=VALUE[,FIELD=VALUE]``.
    plot_dir
        Where PNGs go (default ``out_dir/plots``).
    targets
        Summary key -> target value (stored unit, seconds for latencies; see
        :func:`parse_targets`), drawn as a line on that metric's figure.

    Returns
    -------
    list of Path
        Files written (each PNG records the sdsim version; speedup.csv has a sidecar).
    """
    meta, runs = load_sweep_dir(out_dir)
    goals = dict(targets or {})
    if len(runs) == 0:
        raise ScenarioError(str(out_dir), "the sweep has no finished runs yet")
    analytic = None
    apath = Path(out_dir) / "analytic.parquet"
    if apath.is_file():
        analytic = pd.read_parquet(apath)
    summary = summarize_runs(runs, meta, analytic)
    fields: list[str] = list(meta["fields"])
    for f in (x, facet):
        if f is not None and f not in fields:
            raise ScenarioError(
                "--x" if f == x else "--facet", f"{f!r} is not a swept field (swept: {fields})"
            )
    if metrics:
        allowed = set(meta["metrics"]) | set(runs.columns)
        bad = [m for m in metrics if m not in allowed]
        if bad:
            raise ScenarioError(
                "--metric", f"unknown metric(s) {bad}; the sweep has {meta['metrics']}"
            )
    dest = Path(plot_dir) if plot_dir is not None else Path(out_dir) / "plots"
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    name = meta.get("name", "sweep")

    # Zip groups vary together: they are one axis (one set of lines), never split into panels.
    axes: list[list[str]] = meta.get("axes") or [[f] for f in fields]

    def layout(
        df: pd.DataFrame, exclude: tuple[str, ...] = ()
    ) -> tuple[str, list[list[str]], str | None]:
        xx = x or choose_x(df, fields, exclude)
        vary = set(_varying(df, fields))
        rest = [
            [f for f in ax if f in vary]
            for ax in axes
            if xx not in ax and not set(ax) & set(exclude) and set(ax) & vary
        ]
        ff = facet
        if ff is not None:
            rest = [ax for ax in rest if ff not in ax]
        elif len(rest) >= 2:
            ff, rest = rest[-1][0], rest[:-1]
        return xx, rest, ff

    if speedup_vs:
        if goals:
            raise ScenarioError("--target", "targets are drawn on metric figures, not on speedup")
        baseline = _parse_baseline(speedup_vs)
        metric = (metrics or ["e2e_mean"])[0]
        table = speedup_table(runs, meta, baseline, metric)
        csv = dest / "speedup.csv"
        table.to_csv(csv, index=False)
        sidecar(csv, meta.get("seed"), sweep=name, baseline=speedup_vs, metric=metric,
                seeds="paired replications; run seeds in results/*.parquet")
        written.append(csv)
        xx, hue_axes, ff = layout(table, tuple(baseline))
        if ff is None and hue_axes:
            # one panel per value of the other field, one line per draft length
            ff, hue_axes = hue_axes[-1][0], hue_axes[:-1]
        hue = [f for ax in hue_axes for f in ax]
        bl = ", ".join(f"{k}={v}" for k, v in baseline.items())
        fig = line_figure(
            table,
            xx,
            "speedup",
            hue=[*[f for f in fields if f in baseline and f != xx], *hue],
            facet=ff,
            low="speedup_ci_low",
            high="speedup_ci_high",
            reference=1.0,
            reference_label="speedup 1 (no gain)",
            title=f"{name}: speedup = {metric}({bl}) / {metric}",
            ylabel=f"speedup of {metric_label(metric).split(' (')[0]} (×)",
        )
        path = dest / f"speedup_{metric}.png"
        fig.savefig(path, dpi=110, metadata=png_metadata(meta.get("seed"), fig_title(fig)))
        written.append(path)
        return written

    drawn = [m for m in (metrics or meta["metrics"]) if m in summary.columns]
    missing = sorted(set(goals) - set(drawn))
    if missing:
        raise ScenarioError(
            "--target", f"no figure of {missing} to draw the target on (drawn: {drawn})"
        )
    xx, hue_axes, ff = layout(summary)
    hue = [f for ax in hue_axes for f in ax]
    varying = _varying(summary, fields)
    for m in metrics or meta["metrics"]:
        if m not in summary.columns:
            continue
        scale, ylabel = _scale(m, summary[m])
        ana = f"{m}_analytic" if f"{m}_analytic" in summary.columns else None
        fig = line_figure(
            summary,
            xx,
            m,
            hue=hue,
            facet=ff,
            low=f"{m}_ci_low",
            high=f"{m}_ci_high",
            analytic=ana,
            target=goals.get(m),
            target_metric=m,
            title=f"{name}: {m} (mean, 95% CI over {meta['replications']} reps)",
            ylabel=ylabel,
            scale=scale,
        )
        path = dest / f"{m}.png"
        fig.savefig(path, dpi=110, metadata=png_metadata(meta.get("seed"), fig_title(fig)))
        written.append(path)
        if len(varying) == 2:
            other = varying[1] if varying[0] == xx else varying[0]
            hf = heatmap_figure(summary, xx, other, m, title=f"{name}: {ylabel}", scale=scale,
                                value_label=ylabel)
            hpath = dest / f"{m}_heatmap.png"
            hf.savefig(hpath, dpi=110, metadata=png_metadata(meta.get("seed"), fig_title(hf)))
            written.append(hpath)
    index = provenance(meta.get("seed"), sweep=name, files=[p.name for p in written])
    (dest / "plots.json").write_text(json.dumps(index, indent=1) + "\n")
    return written


def step_time_figure(
    rows: Sequence[Mapping[str, Any]],
    k: int,
    prefill_ms: float,
    prefill_tokens: int,
    title: str = "",
) -> Figure:
    """Step time against the decode batch, without and with speculation (what `sdsim costs` draws).

    Parameters
    ----------
    rows
        One mapping per batch size with ``batch``, ``plain_ms`` (k = 0) and ``spec_ms`` (k = ``k``).
    k
        Draft length of ``spec_ms``.
    prefill_ms, prefill_tokens
        One prefill chunk's step time and size, drawn as a horizontal reference.
    title
        Figure title.

    Returns
    -------
    Figure
    """
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    bs = [r["batch"] for r in rows]
    ax.plot(bs, [r["plain_ms"] for r in rows], "o-", label="k=0")
    ax.plot(bs, [r["spec_ms"] for r in rows], "s-", label=f"k={k}")
    ax.axhline(prefill_ms, ls="--", color="grey", label=f"prefill {prefill_tokens} tok")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("decoding requests in the step")
    ax.set_ylabel("step time (ms)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig
