"""Profile bundles: measured kernel times on disk, their interpolation, and Vidur imports.

Bundle format (a directory, ``format: sdsim-profile/1``):

``meta.yaml``
    ``format``, ``device`` (what was measured on), ``backend`` (numpy | torch | vidur),
    ``dtype``, ``versions`` (library versions), ``date`` (ISO 8601), ``repeats``, ``warmup``,
    ``grids`` (the token, attention and collective grids measured) and ``models``: for each
    model measured, its architecture numbers (hidden, heads, kv_heads, head_dim, ffn, vocab,
    experts, experts_per_token, input_fc) and ``layer_ops`` (operator -> calls per layer).
``dense.csv``
    Token-keyed operators: ``model, tp, op, tokens, median_us, min_us, max_us, std_us, n``.
    Layer operators (qkv, o, gate_up, down, norm, rope, act, router, experts, ...) are one
    layer's call; once-per-pass ones (embedding, lm_head, sampling, eagle_fc) one call.
``attention.csv``
    One layer's attention: ``model, tp, phase, batch, query, kv, median_us, ...``. ``decode``
    rows form a regular grid over (batch, query, kv); ``prefill`` rows (batch 1, causal) form a
    regular grid over (query, kv - query), i.e. chunk length and cached prefix.
``collectives.csv`` (optional)
    ``op, world, bytes, median_us, ...`` (``op`` = all_reduce).

Interpolation rule (what :class:`MonotoneCurve` and :class:`GridInterpolator` do):

* Inside the measured range: piecewise linear between measured points, so the curve is exact at
  every grid point. Medians that go *down* as work grows (timing noise) are first replaced by an
  isotonic (pool-adjacent-violators) fit along tokens, and by the running maximum along each
  attention axis, so the interpolant is monotone; points already in order are kept exactly.
* Below the smallest measured value: the smallest point's time (a kernel never gets cheaper
  than its launch floor).
* Above the largest: linear extrapolation along the last measured segment (GEMMs and attention
  grow linearly once the device is saturated), with a :class:`ProfileExtrapolationWarning` the
  first time each operator is extrapolated.

Operators and families a bundle lacks (Vidur's mlp.csv has no attention, LM head or sampling)
are taken from the roofline of the scenario's GPU; :attr:`ProfileOps.fallback_ops` lists them.
"""

from __future__ import annotations

__all__ = [
    "FORMAT",
    "GridInterpolator",
    "MonotoneCurve",
    "ProfileBundle",
    "ProfileExtrapolationWarning",
    "ProfileOps",
    "read_bundle",
    "read_vidur_all_reduce",
    "read_vidur_mlp",
    "write_bundle",
]

import bisect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import yaml

from sdsim.errors import ScenarioError
from sdsim.models import ModelSpec
from sdsim.provenance import yaml_header

FORMAT = "sdsim-profile/1"
DENSE_COLS = ["model", "tp", "op", "tokens", "median_us", "min_us", "max_us", "std_us", "n"]
ATTN_COLS = ["model", "tp", "phase", "batch", "query", "kv", "median_us", "min_us", "max_us",
             "std_us", "n"]
COLL_COLS = ["op", "world", "bytes", "median_us", "min_us", "max_us", "std_us", "n"]
SHAPE_KEYS = ("hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab", "experts")


class ProfileExtrapolationWarning(UserWarning):
    """A measured profile was asked for a point outside its grid."""


# --------------------------------------------------------------------------- bundle I/O


@dataclass
class ProfileBundle:
    """A profile bundle in memory (see the module docstring for the format)."""

    meta: dict[str, Any]
    dense: pd.DataFrame
    attention: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ATTN_COLS))
    collectives: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COLL_COLS))
    path: Path | None = None

    @property
    def models(self) -> dict[str, dict[str, Any]]:
        """Model name -> architecture numbers and ``layer_ops``."""
        return dict(self.meta.get("models") or {})


def write_bundle(bundle: ProfileBundle, directory: str | Path) -> Path:
    """Write a bundle (``meta.yaml`` and one CSV per operator family) and return its path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, **{k: v for k, v in bundle.meta.items() if k != "format"}}
    head = yaml_header(None, "kernel profile bundle; its tables are the CSV files beside it")
    (d / "meta.yaml").write_text(head + yaml.safe_dump(meta, sort_keys=False))
    bundle.dense.reindex(columns=DENSE_COLS).to_csv(d / "dense.csv", index=False)
    if len(bundle.attention):
        bundle.attention.reindex(columns=ATTN_COLS).to_csv(d / "attention.csv", index=False)
    if len(bundle.collectives):
        bundle.collectives.reindex(columns=COLL_COLS).to_csv(d / "collectives.csv", index=False)
    return d


def _read_csv(p: Path, cols: list[str], field_name: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(p)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ScenarioError(field_name, f"cannot read {p.name}: {exc.__class__.__name__}") from None
    missing = [c for c in cols if c not in df.columns and c not in ("min_us", "max_us",
                                                                    "std_us", "n")]
    if missing:
        raise ScenarioError(field_name, f"{p.name} lacks columns {missing}")
    if (pd.to_numeric(df["median_us"], errors="coerce").fillna(-1) < 0).any():
        raise ScenarioError(field_name, f"{p.name}: median_us must be non-negative numbers")
    return df


def read_bundle(directory: str | Path, field_name: str = "costs.profile") -> ProfileBundle:
    """Read a profile bundle directory (or a Vidur ``mlp.csv`` file).

    Raises
    ------
    ScenarioError
        Missing directory or files, wrong format tag, malformed CSVs.
    """
    d = Path(directory)
    if d.is_file() and d.suffix == ".csv":
        return read_vidur_mlp(d)
    if not d.is_dir():
        raise ScenarioError(field_name, f"profile bundle {str(directory)!r} not found")
    mp = d / "meta.yaml"
    if not mp.is_file():
        raise ScenarioError(field_name, f"{d} has no meta.yaml (not a profile bundle)")
    try:
        meta = yaml.safe_load(mp.read_text()) or {}
    except yaml.YAMLError:
        raise ScenarioError(field_name, f"{mp} is not valid YAML") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ScenarioError(field_name, f"{mp}: format must be {FORMAT!r}")
    if not (d / "dense.csv").is_file():
        raise ScenarioError(field_name, f"{d} has no dense.csv")
    dense = _read_csv(d / "dense.csv", DENSE_COLS, field_name)
    attn = (
        _read_csv(d / "attention.csv", ATTN_COLS, field_name)
        if (d / "attention.csv").is_file()
        else pd.DataFrame(columns=ATTN_COLS)
    )
    coll = (
        _read_csv(d / "collectives.csv", COLL_COLS, field_name)
        if (d / "collectives.csv").is_file()
        else pd.DataFrame(columns=COLL_COLS)
    )
    _check_sizes(dense, ["tp", "tokens"], "dense.csv", field_name)
    _check_trend(dense, ["model", "tp", "op"], ["tokens"], "dense.csv", field_name)
    if len(attn):
        _check_sizes(attn, ["tp", "batch", "query", "kv"], "attention.csv", field_name)
    return ProfileBundle(meta=meta, dense=dense, attention=attn, collectives=coll, path=d)


# A table in which most operators get an order of magnitude *faster* with more tokens is not
# noise for the isotonic fit to smooth (it would flatten every curve to a constant) but a broken
# table: columns swapped, units mixed, sizes mislabelled. Noise never does that to most curves at
# once: launch-bound operators of a small model timed on a busy machine can measure 2-3x slower at
# 1 token than at 64 (a cold first call, a context switch), so single curves, and small falls, pass.
FALLING_SHARE = 0.5
FALLING_FACTOR = 10.0


def _check_sizes(df: pd.DataFrame, cols: list[str], name: str, field_name: str) -> None:
    """Size columns must be finite numbers, ``tp``/``tokens``/``batch``/``query`` >= 1."""
    for c in cols:
        v = pd.to_numeric(df[c], errors="coerce")
        low = 0 if c == "kv" else 1
        if v.isna().any() or not np.isfinite(v.to_numpy(dtype=float)).all() or (v < low).any():
            raise ScenarioError(field_name, f"{name}: column {c!r} must hold numbers >= {low}")


def _check_trend(
    df: pd.DataFrame, keys: list[str], sizes: list[str], name: str, field_name: str
) -> None:
    """Refuse a table whose curves mostly fall end to end (see :data:`FALLING_SHARE`)."""
    med = pd.to_numeric(df["median_us"], errors="coerce")
    falling: list[str] = []
    curves = 0
    for key, g in df.assign(_t=med).groupby(keys, sort=False):
        if (g[sizes].nunique() < 2).all():
            continue
        lo = g[(g[sizes] == g[sizes].min()).all(axis=1)]["_t"]
        hi = g[(g[sizes] == g[sizes].max()).all(axis=1)]["_t"]
        if not len(lo) or not len(hi):
            continue
        curves += 1
        t_lo, t_hi = float(lo.median()), float(hi.median())
        if t_hi * FALLING_FACTOR < t_lo:
            falling.append(f"{'/'.join(str(k) for k in key)} {t_lo:g} -> {t_hi:g} us")
    if curves and len(falling) > FALLING_SHARE * curves:
        raise ScenarioError(
            field_name,
            f"{name} is not monotone: {len(falling)} of {curves} curves get over "
            f"{FALLING_FACTOR:g}x faster with more {'/'.join(sizes)} (e.g. "
            f"{'; '.join(falling[:2])}); times must grow with size (allowed: noise in a few "
            "points, which an isotonic fit repairs)",
        )


# --------------------------------------------------------------------------- Vidur import

# Vidur's operator names -> ours, and calls per layer.
_VIDUR_OPS = {
    "attn_pre_proj": "qkv",
    "attn_post_proj": "o",
    "mlp_up_proj": "gate_up",
    "mlp_down_proj": "down",
    "mlp_act": "act",
    "attn_rope": "rope",
    "input_layernorm": "norm",
    "post_attention_layernorm": "norm",
    "add": "add",
    "emb": "embedding",
}
_VIDUR_LAYER_OPS = {"norm": 2, "qkv": 1, "rope": 1, "o": 1, "gate_up": 1, "act": 1, "down": 1,
                    "add": 2}


def read_vidur_mlp(path: str | Path, model: str | None = None) -> ProfileBundle:
    """Import one of Vidur's ``profiling/compute/<gpu>/<org>/<model>/mlp.csv`` files.

    Times are milliseconds there (min, max, mean, median, std per operator, one row per
    token count and tensor-parallel degree; one layer). Duplicate rows are combined by the median
    of their medians; input and post-attention norms become our ``norm`` (two per layer).

    Parameters
    ----------
    path
        The CSV file.
    model
        Name to file the model under; defaults to the folder name (e.g. ``Llama-2-7b-hf``).

    Raises
    ------
    ScenarioError
        Not a Vidur mlp.csv.
    """
    p = Path(path)
    fname = "costs.profile"
    if not p.is_file():
        raise ScenarioError(fname, f"Vidur file {str(path)!r} not found")
    try:
        raw = pd.read_csv(p)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ScenarioError(fname, f"cannot read {p.name}: {exc.__class__.__name__}") from None
    need = {"num_tokens", "num_tensor_parallel_workers", "n_embd", "n_head"}
    if not need <= set(raw.columns):
        raise ScenarioError(fname, f"{p.name} is not a Vidur mlp.csv (needs {sorted(need)})")
    name = model or p.parent.name or "vidur-model"
    first = raw.iloc[0]
    heads = int(first["n_head"])
    hidden = int(first["n_embd"])
    spec = {
        "hidden": hidden,
        "heads": heads,
        "kv_heads": int(first.get("n_kv_head", heads)),
        "head_dim": hidden // heads,
        "ffn": int(first.get("n_expanded_embd", 4 * hidden)),
        "vocab": int(first.get("vocab_size", 0)),
        "experts": 0,
        "experts_per_token": 0,
        "input_fc": 0,
        "gated_mlp": bool(first.get("use_gated_mlp", True)),
        "layer_ops": dict(_VIDUR_LAYER_OPS),
    }
    rows: list[pd.DataFrame] = []
    for vop, ours in _VIDUR_OPS.items():
        col = f"time_stats.{vop}.median"
        if col not in raw.columns:
            continue
        sub = raw[["num_tokens", "num_tensor_parallel_workers"]].copy()
        for stat in ("median", "min", "max", "std"):
            sub[stat] = pd.to_numeric(raw[f"time_stats.{vop}.{stat}"], errors="coerce") * 1e3
        sub["op"] = ours
        rows.append(sub)
    df = pd.concat(rows, ignore_index=True).dropna(subset=["median"])
    # two norm columns and duplicate rows: one row per (op, tp, tokens), median of medians
    g = df.groupby(["op", "num_tensor_parallel_workers", "num_tokens"], as_index=False).agg(
        median_us=("median", "median"),
        min_us=("min", "min"),
        max_us=("max", "max"),
        std_us=("std", "median"),
        n=("median", "size"),
    )
    dense = g.rename(columns={"num_tensor_parallel_workers": "tp", "num_tokens": "tokens"})
    dense.insert(0, "model", name)
    meta = {
        "format": FORMAT,
        "device": f"vidur:{p.parent.parent.parent.name}" if p.parent.parent.parent.name else "?",
        "backend": "vidur",
        "dtype": "float16",
        "date": None,
        "source": str(p),
        "grids": {"tokens": sorted(int(t) for t in dense["tokens"].unique())},
        "models": {name: spec},
    }
    return ProfileBundle(meta=meta, dense=dense.reindex(columns=DENSE_COLS), path=p)


def read_vidur_all_reduce(path: str | Path) -> pd.DataFrame:
    """Import Vidur's ``profiling/network/<topology>/all_reduce.csv`` as collectives rows."""
    raw = pd.read_csv(path)
    need = {"size", "num_workers", "time_stats.all_reduce.median"}
    if not need <= set(raw.columns):
        raise ScenarioError("costs.profile", f"{Path(path).name} is not a Vidur all_reduce.csv")
    out = pd.DataFrame(
        {
            "op": "all_reduce",
            "world": raw["num_workers"].astype(int),
            "bytes": raw["size"].astype(float),
            "median_us": raw["time_stats.all_reduce.median"] * 1e3,
            "min_us": raw.get("time_stats.all_reduce.min", np.nan) * 1e3,
            "max_us": raw.get("time_stats.all_reduce.max", np.nan) * 1e3,
            "std_us": raw.get("time_stats.all_reduce.std", np.nan) * 1e3,
            "n": 1,
        }
    )
    return (
        out.groupby(["op", "world", "bytes"], as_index=False)
        .agg(median_us=("median_us", "median"), min_us=("min_us", "min"),
             max_us=("max_us", "max"), std_us=("std_us", "median"), n=("n", "sum"))
    )


# --------------------------------------------------------------------------- interpolation


class _Warn:
    """Warn once per (label, side)."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, label: str, side: str, x: float, lo: float, hi: float) -> None:
        key = (label, side)
        if key in self.seen:
            return
        self.seen.add(key)
        rule = "held at the smallest point" if side == "below" else "extended linearly"
        warnings.warn(
            f"profile: {label} asked at {x:g}, outside the measured [{lo:g}, {hi:g}]; {rule}",
            ProfileExtrapolationWarning,
            stacklevel=4,
        )


class MonotoneCurve:
    """Piecewise-linear, non-decreasing interpolation of measured times over one axis.

    Parameters
    ----------
    xs, ys
        Measured points (any order; duplicate x averaged). ``ys`` out of order are replaced by an
        isotonic fit (``adjusted`` counts how many moved).
    label
        Name for warnings.
    """

    def __init__(
        self, xs: npt.ArrayLike, ys: npt.ArrayLike, label: str = "", warn: _Warn | None = None
    ) -> None:
        # imported here: scipy.optimize adds a few tenths of a second to `import sdsim`, and only
        # measured bundles need it
        from scipy.optimize import isotonic_regression

        x = np.asarray(xs, dtype=float)
        y = np.asarray(ys, dtype=float)
        if x.size == 0:
            raise ValueError(f"{label}: no measured points")
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        ux, inv = np.unique(x, return_inverse=True)
        uy = np.bincount(inv, weights=y) / np.bincount(inv)
        fit = isotonic_regression(uy, increasing=True).x if ux.size > 1 else uy
        self.adjusted = int(np.sum(~np.isclose(fit, uy, rtol=1e-12, atol=0.0)))
        self.xs: list[float] = ux.tolist()
        self.ys: list[float] = np.asarray(fit, dtype=float).tolist()
        self.label = label
        self.warn = warn or _Warn()
        self._np = (np.asarray(self.xs, dtype=np.float64), np.asarray(self.ys, dtype=np.float64))
        n = len(self.xs)
        self._slope_hi = (self.ys[-1] - self.ys[-2]) / (self.xs[-1] - self.xs[-2]) if n > 1 else 0.0
        if n == 1:
            # one point: scale proportionally above it (work grows with size)
            self._slope_hi = self.ys[0] / self.xs[0] if self.xs[0] > 0 else 0.0

    def vec(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The curve over an array (same rule, no warnings: tables are built ahead of use)."""
        xa = np.asarray(x, dtype=float)
        y = np.interp(xa, self.xs, self.ys)
        above = xa > self.xs[-1]
        return np.where(above, self.ys[-1] + self._slope_hi * (xa - self.xs[-1]), y)

    def at(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """:meth:`__call__` elementwise (the same floats, the same warnings); unlike :meth:`vec`,
        which uses ``np.interp``, this repeats the scalar path's arithmetic exactly."""
        xa = np.asarray(x, dtype=np.float64)
        xs, ys = self._np
        lo_x, hi_x = self.xs[0], self.xs[-1]
        if xa.size:
            if float(xa.min()) < lo_x:
                self.warn(self.label, "below", float(xa.min()), lo_x, hi_x)
            if float(xa.max()) > hi_x:
                self.warn(self.label, "above", float(xa.max()), lo_x, hi_x)
        n = xs.shape[0]
        above = self.ys[-1] + self._slope_hi * (xa - hi_x)
        if n == 1:
            return np.where(xa <= lo_x, self.ys[0], above)
        i = np.clip(np.searchsorted(xs, xa, side="right"), 1, n - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        mid = y0 + (y1 - y0) * (xa - x0) / (x1 - x0)
        return np.where(xa <= lo_x, self.ys[0], np.where(xa >= hi_x, above, mid))

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if x <= xs[0]:
            if x < xs[0]:
                self.warn(self.label, "below", x, xs[0], xs[-1])
            return ys[0]
        if x >= xs[-1]:
            if x > xs[-1]:
                self.warn(self.label, "above", x, xs[0], xs[-1])
            return ys[-1] + self._slope_hi * (x - xs[-1])
        i = bisect.bisect_right(xs, x)
        x0, x1 = xs[i - 1], xs[i]
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)


class GridInterpolator:
    """Multilinear interpolation on a regular grid with the same edge rules as MonotoneCurve.

    Values are first made non-decreasing along every axis (running maximum), so the result is
    monotone in each coordinate and exact at grid points that were already in order.
    """

    def __init__(
        self,
        axes: Sequence[Sequence[float]],
        values: np.ndarray,
        label: str = "",
        warn: _Warn | None = None,
    ) -> None:
        self.axes = [list(map(float, a)) for a in axes]
        v = np.asarray(values, dtype=float)
        for ax in range(v.ndim):
            v = np.maximum.accumulate(v, axis=ax)
        self.values = v
        self.label = label
        self.warn = warn or _Warn()

    def _locate(self, d: int, x: float) -> tuple[int, float]:
        a = self.axes[d]
        if len(a) == 1:
            return 0, 0.0
        if x <= a[0]:
            if x < a[0]:
                self.warn(f"{self.label} axis {d}", "below", x, a[0], a[-1])
            return 0, 0.0
        if x >= a[-1]:
            if x > a[-1]:
                self.warn(f"{self.label} axis {d}", "above", x, a[0], a[-1])
            n = len(a) - 1
            return n - 1, (x - a[n - 1]) / (a[n] - a[n - 1])
        i = bisect.bisect_right(a, x) - 1
        return i, (x - a[i]) / (a[i + 1] - a[i])

    def _locate_arr(
        self, d: int, x: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        # _locate elementwise: below the first point (0, 0), at or above the last the last cell
        # extended, else the cell holding x (the same divisions as the scalar path)
        a = self.axes[d]
        if len(a) == 1:
            return np.zeros(x.shape, dtype=np.int64), np.zeros(x.shape)
        if x.size:
            if float(x.min()) < a[0]:
                self.warn(f"{self.label} axis {d}", "below", float(x.min()), a[0], a[-1])
            if float(x.max()) > a[-1]:
                self.warn(f"{self.label} axis {d}", "above", float(x.max()), a[0], a[-1])
        aa = np.asarray(a, dtype=np.float64)
        i = np.clip(np.searchsorted(aa, x, side="right") - 1, 0, len(a) - 2)
        f = (x - aa[i]) / (aa[i + 1] - aa[i])
        return i, np.where(x <= a[0], 0.0, f)

    def at(self, *point: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """:meth:`__call__` elementwise over arrays of coordinates (the same floats)."""
        coords = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in point))
        loc = [self._locate_arr(d, x) for d, x in enumerate(coords)]
        shape = coords[0].shape if coords else ()
        total = np.zeros(shape)
        for corner in range(1 << len(loc)):
            if any(len(self.axes[d]) == 1 and corner >> d & 1 for d in range(len(loc))):
                continue  # weight 0: the scalar path skips it
            w = np.ones(shape)
            idx: list[npt.NDArray[np.int64]] = []
            for d, (i, f) in enumerate(loc):
                if len(self.axes[d]) == 1:
                    idx.append(i)
                elif corner >> d & 1:
                    idx.append(i + 1)
                    w = w * f
                else:
                    idx.append(i)
                    w = w * (1.0 - f)
            v = self.values[tuple(idx)]
            total = np.where(w != 0.0, total + w * v, total)
        return np.maximum(total, 0.0)

    def curve_last(self, *prefix: float) -> MonotoneCurve:
        """The 1-D curve along the last axis at fixed leading coordinates."""
        last = self.axes[-1]
        vals = [self(*prefix, x) for x in last]
        return MonotoneCurve(last, vals, label=self.label, warn=self.warn)

    def __call__(self, *point: float) -> float:
        loc = [self._locate(d, x) for d, x in enumerate(point)]
        total = 0.0
        for corner in range(1 << len(loc)):
            w = 1.0
            idx: list[int] = []
            for d, (i, f) in enumerate(loc):
                if len(self.axes[d]) == 1:
                    idx.append(0)
                    if corner >> d & 1:
                        w = 0.0
                    continue
                if corner >> d & 1:
                    idx.append(i + 1)
                    w *= f
                else:
                    idx.append(i)
                    w *= 1.0 - f
            if w != 0.0:
                total += w * float(self.values[tuple(idx)])
        return max(total, 0.0)


def _grid(df: pd.DataFrame, axes: list[str], label: str) -> tuple[list[list[float]], np.ndarray]:
    vals = df.groupby(axes)["median_us"].median()
    levels = [sorted(float(v) for v in df[a].unique()) for a in axes]
    full = pd.MultiIndex.from_product(levels, names=axes)
    vals.index = pd.MultiIndex.from_arrays(
        [vals.index.get_level_values(i).astype(float) for i in range(len(axes))], names=axes
    )
    arr = vals.reindex(full)
    if arr.isna().any():
        raise ScenarioError(
            "costs.profile", f"{label}: attention rows must form a regular grid over {axes}"
        )
    return levels, arr.to_numpy().reshape([len(lv) for lv in levels]) * 1e-6


# --------------------------------------------------------------------------- operator costs


def _matches(spec: dict[str, Any], model: ModelSpec) -> bool:
    return all(
        spec.get(k) is None or int(spec[k]) == int(getattr(model, k))
        for k in SHAPE_KEYS
        if not (k == "vocab" and not spec.get(k))
    )


class ProfileOps:
    """Operator times of one model read from a profile bundle (seconds).

    Parameters
    ----------
    bundle
        The bundle.
    model
        The model to time: found in the bundle by name, else by identical layer shapes (hidden,
        heads, kv_heads, head_dim, ffn, vocab, experts), so Vidur's Meta-Llama-3-8B profile
        serves llama-3.1-8b.
    tp
        Tensor-parallel degree; the bundle must hold rows at this degree.
    fallback
        Operator costs for whatever the bundle lacks (the roofline).
    field_name
        Scenario field named in errors.
    """

    def __init__(
        self,
        bundle: ProfileBundle,
        model: ModelSpec,
        tp: int,
        fallback: Any,
        field_name: str = "costs.profile",
    ) -> None:
        self.bundle = bundle
        self.model = model
        self.tp = int(tp)
        self.fallback = fallback
        self.layers = model.layers
        self.warn = _Warn()
        models = bundle.models
        name = model.name if model.name in models else None
        if name is None:
            name = next((n for n, s in models.items() if _matches(s, model)), None)
        if name is None:
            raise ScenarioError(
                field_name,
                f"bundle has no profile for {model.name!r} or its layer shapes; it holds "
                f"{sorted(models) or 'none'}",
            )
        self.bundle_model = name
        spec = models[name]
        dense = bundle.dense[bundle.dense["model"].astype(str) == name]
        tps = sorted(int(t) for t in dense["tp"].unique())
        if self.tp not in tps:
            raise ScenarioError(
                "server.tp", f"bundle measured {name!r} at tp {tps}, not at tp {self.tp}"
            )
        dense = dense[dense["tp"].astype(int) == self.tp]
        self.curves: dict[str, MonotoneCurve] = {}
        for op, sub in dense.groupby("op"):
            self.curves[str(op)] = MonotoneCurve(
                sub["tokens"].astype(float), sub["median_us"].astype(float) * 1e-6,
                label=f"{name}/{op}", warn=self.warn,
            )
        lo = spec.get("layer_ops") or dict(fallback.layer_ops)
        ops = [(str(k), int(v)) for k, v in lo.items()]
        if self.tp > 1 and not any(n == "allreduce" for n, _ in ops):
            ops.append(("allreduce", 2))
        self.layer_ops: tuple[tuple[str, int], ...] = tuple(ops)
        self.once_ops: tuple[str, ...] = tuple(fallback.once_ops)
        self.fallback_ops: set[str] = {
            n for n, _ in self.layer_ops if n not in self.curves and n != "allreduce"
        } | {n for n in (*self.once_ops, "lm_head", "sampling") if n not in self.curves}
        self._ar: MonotoneCurve | None = None
        coll = bundle.collectives
        if self.tp > 1 and len(coll):
            sub = coll[(coll["op"] == "all_reduce") & (coll["world"].astype(int) == self.tp)]
            if len(sub):
                self._ar = MonotoneCurve(sub["bytes"].astype(float),
                                         sub["median_us"].astype(float) * 1e-6,
                                         label=f"all_reduce/{self.tp}", warn=self.warn)
        if self.tp > 1 and self._ar is None:
            self.fallback_ops.add("allreduce")
        attn = bundle.attention
        attn = attn[(attn["model"].astype(str) == name) & (attn["tp"].astype(int) == self.tp)]
        self._decode: GridInterpolator | None = None
        self._prefill: GridInterpolator | None = None
        dec = attn[attn["phase"] == "decode"]
        if len(dec):
            axes, vals = _grid(dec, ["batch", "query", "kv"], f"{name}/decode")
            self._decode = GridInterpolator(axes, vals, f"{name}/decode attention", self.warn)
        pre = attn[attn["phase"] == "prefill"].copy()
        if len(pre):
            pre["cached"] = pre["kv"].astype(float) - pre["query"].astype(float)
            axes, vals = _grid(pre, ["query", "cached"], f"{name}/prefill")
            self._prefill = GridInterpolator(axes, vals, f"{name}/prefill attention", self.warn)
        self._dcache: dict[tuple[float, float], MonotoneCurve] = {}
        used = [self.curves[n] for n, _ in self.layer_ops if n in self.curves]
        self.max_tokens = min((c.xs[-1] for c in used), default=float("inf"))
        if self._decode is None:
            self.fallback_ops.add("decode_attention")
        if self._prefill is None:
            self.fallback_ops.add("prefill_attention")

    def op_vec(self, name: str, tokens: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """:meth:`op` over an array of token counts (no extrapolation warnings)."""
        t = np.asarray(tokens, dtype=float)
        c = self.curves.get(name)
        if c is not None:
            out = c.vec(t)
        elif name == "allreduce" and self._ar is not None:
            out = self._ar.vec(t * self.model.hidden * 2.0)
        else:
            out = np.asarray(self.fallback.op_vec(name, t), dtype=float)
        return np.where(t > 0, out, 0.0)

    def op(self, name: str, tokens: float) -> float:
        """One call of an operator (measured, else the fallback's)."""
        if tokens <= 0:
            return 0.0
        c = self.curves.get(name)
        if c is not None:
            return c(tokens)
        if name == "allreduce" and self._ar is not None:
            return self._ar(tokens * self.model.hidden * 2.0)
        return float(self.fallback.op(name, tokens))

    def decode_attention(self, batch: float, query: float, kv: float) -> float:
        """All layers' decode/verify attention (measured one layer x layers)."""
        if batch <= 0 or query <= 0:
            return 0.0
        if self._decode is None:
            return float(self.fallback.decode_attention(batch, query, kv))
        key = (batch, query)
        c = self._dcache.get(key)
        if c is None:
            c = self._decode.curve_last(batch, query)
            self._dcache[key] = c
        return self.layers * c(kv)

    def decode_attention_arr(
        self, batch: npt.ArrayLike, query: npt.ArrayLike, kv: npt.ArrayLike
    ) -> npt.NDArray[np.float64]:
        """:meth:`decode_attention` elementwise over arrays (the same floats)."""
        b, q, v = np.broadcast_arrays(
            *(np.asarray(x, dtype=np.float64) for x in (batch, query, kv))
        )
        if self._decode is None:
            return _attn_arr(self.fallback, "decode_attention", b, q, v)
        out = np.zeros(b.shape)
        live = (b > 0) & (q > 0)
        if not live.any():
            return out
        pairs = np.stack((b[live], q[live]), axis=1)
        uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        vals = v[live]
        res = np.empty(vals.shape)
        for j, (bb, qq) in enumerate(uniq.tolist()):
            key = (bb, qq)
            c = self._dcache.get(key)
            if c is None:
                c = self._decode.curve_last(bb, qq)
                self._dcache[key] = c
            sel = inv == j
            res[sel] = self.layers * c.at(vals[sel])
        out[live] = res
        return out

    def prefill_attention_arr(
        self, seqs: npt.ArrayLike, query: npt.ArrayLike, cached: npt.ArrayLike
    ) -> npt.NDArray[np.float64]:
        """:meth:`prefill_attention` elementwise over arrays (the same floats)."""
        s, q, c = np.broadcast_arrays(
            *(np.asarray(x, dtype=np.float64) for x in (seqs, query, cached))
        )
        if self._prefill is None:
            return _attn_arr(self.fallback, "prefill_attention", s, q, c)
        live = (s > 0) & (q > 0)
        out = np.zeros(s.shape)
        if live.any():
            out[live] = self.layers * s[live] * self._prefill.at(q[live], c[live])
        return out

    def prefill_attention(self, seqs: float, query: float, cached: float) -> float:
        """All layers' prefill attention: ``seqs`` chunks, each measured alone (batch 1)."""
        if seqs <= 0 or query <= 0:
            return 0.0
        if self._prefill is None:
            return float(self.fallback.prefill_attention(seqs, query, cached))
        return self.layers * seqs * self._prefill(query, cached)

    def has(self, name: str) -> bool:
        """Whether the bundle measured this operator."""
        return name in self.curves


def _attn_arr(
    ops: Any,
    name: str,
    a: npt.NDArray[np.float64],
    b: npt.NDArray[np.float64],
    c: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """``ops.<name>`` elementwise: its ``<name>_arr`` when it has one, else one call per entry."""
    f = getattr(ops, f"{name}_arr", None)
    if f is not None:
        return np.asarray(f(a, b, c), dtype=np.float64)
    g = getattr(ops, name)
    flat = [float(g(x, y, z)) for x, y, z in zip(a.ravel().tolist(), b.ravel().tolist(),
                                                  c.ravel().tolist(), strict=True)]
    return np.asarray(flat, dtype=np.float64).reshape(a.shape)
